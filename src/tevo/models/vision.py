"""Image classifiers over a 2-D token grid: ViT and the MetaFormer family.

Paper: An Image is Worth 16x16 Words (Dosovitskiy et al., 2021), eq. 1–4:
    z_0 = [x_class; x_p^1 E; …; x_p^N E] + E_pos,   z_l = blocks(z_{l-1}),   y = LN(z_L^0) W
(the patch embedding E is a p×p convolution with stride p). MetaFormer (Yu et al., 2022,
"MetaFormer Is Actually What You Need for Vision"): the same block, norm → token mixer → norm →
MLP, with any token mixer, in hierarchical stages whose token grid is halved between stages
(PoolFormer, Swin, CrossFormer and NesT are all of this shape) and mean pooling for the head.

The grid is information, not a second code path: every stage runs the one ``BlockStack`` and
hands its mixers ``ctx.grid = (height, width)`` (tokens in row-major order), so a mixer that
reads 2-D (gfnet, pool, shift, ...) and an order-free one (softmax, xca) run in the same model.
Between stages the grid is downsampled by patch merging: a 2×2-stride-2 convolution from d_i to
d_{i+1} channels (Swin's concatenate-2×2-then-linear is exactly this map), then a LayerNorm.
Positions: an ``input`` encoding (ViT's learned table) is added once after the patch
embedding; a ``bias``/``qk`` encoding (Swin V2's ``swin_cpb``) is built per stage with that
stage's grid width.

Options (``ModelConfig``): image_size, patch_size (must divide the image size), channels,
pool (cls | mean; default: ViT cls, MetaFormer mean), stages ([{n_layers, d_model, mixer?,
ffn?}], default one stage of n_layers × d_model), vocab_size = the number of classes.
Complexity: Σ_stages L_i · (mixer(n_i) + O(n_i d_i²)) with n_i = (H/p/2^i)·(W/p/2^i).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MIXERS, MODELS, POSITIONS, accepted_kwargs, split_spec
from .block import BlockStack
from .common import ModelOutput, build_norm, init_weights, mixer_dims

POOLS = ("cls", "mean")
STAGE_KEYS = ("n_layers", "d_model", "mixer", "ffn")


def image_hw(cfg: ModelConfig) -> tuple[int, int]:
    s = cfg.image_size
    if isinstance(s, int) and not isinstance(s, bool):
        s = [s, s]
    if not (isinstance(s, (list, tuple)) and len(s) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)):
        raise ConfigError("model.image_size", cfg.image_size,
                          why="expected a positive int or [height, width] (set by the data when "
                              "training)")
    return int(s[0]), int(s[1])


def stage_configs(cfg: ModelConfig) -> list[ModelConfig]:
    """One ModelConfig per stage (its depth, width, mixer and ffn), the rest shared."""
    specs = cfg.stages if cfg.stages is not None else [{}]
    if not isinstance(specs, list) or not specs:
        raise ConfigError("model.stages", cfg.stages, why="expected a non-empty list of "
                                                          "{n_layers, d_model, mixer, ffn}")
    out = []
    for i, st in enumerate(specs):
        if not isinstance(st, dict):
            raise ConfigError(f"model.stages[{i}]", st, why="expected a mapping")
        bad = [k for k in st if k not in STAGE_KEYS]
        if bad:
            raise ConfigError(f"model.stages[{i}].{bad[0]}", bad[0], STAGE_KEYS,
                              why=f"unknown stage field {bad[0]!r}")
        out.append(dataclasses.replace(cfg, stages=None, layers={} if cfg.stages else cfg.layers,
                                       **st))
    return out


def stage_grids(cfg: ModelConfig) -> list[tuple[int, int]]:
    H, W = image_hw(cfg)
    p = cfg.patch_size
    h, w = H // p, W // p
    grids = []
    for i in range(len(cfg.stages) if cfg.stages else 1):
        if i:
            if h % 2 or w % 2:
                raise ConfigError("model.stages", len(cfg.stages),
                                  why=f"stage {i} halves a {h}×{w} grid; every stage before the "
                                      f"last needs an even grid (image_size / patch_size / 2^i)")
            h, w = h // 2, w // 2
        grids.append((h, w))
    return grids


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → d channels (ViT's E, a stride-p convolution)."""

    def __init__(self, channels: int, d_model: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, d_model, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)                                    # (B, d, H/p, W/p)


class PatchMerging(nn.Module):
    """Halve the grid: 2×2 stride-2 convolution d_in → d_out, then LayerNorm (Swin §3.1)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Conv2d(d_in, d_out, 2, stride=2)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, n, d = x.shape
        h, w = grid
        y = self.proj(x.transpose(1, 2).reshape(B, d, h, w))   # (B, d', h/2, w/2)
        return self.norm(y.flatten(2).transpose(1, 2))


@MODELS.register(
    "vit", paper="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale "
                 "(Dosovitskiy et al., 2021)",
    equation="eq. 1-4: z_0 = [x_cls; x_p E] + E_pos; y = LN(z_L^0) W",
    complexity=("L·(mixer(n) + O(n d²)), n = HW/p²", "L·O(n d)"),
    test="tests/test_vision.py::test_vit_digits_learns_and_is_patch_permutation_aware",
    tiny={"image_size": 8, "patch_size": 2, "channels": 1})
class ImageClassifier(nn.Module):
    """Patch embedding → stages of blocks over a 2-D grid → pooled → class logits."""

    input_kind = "image"
    default_causal = False
    has_decoder = False
    default_pool = "cls"

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        from ..config import validate_model
        if cfg.image_size is None:
            return                                  # filled in from the data by the trainer
        H, W = image_hw(cfg)
        p = cfg.patch_size
        if not isinstance(p, int) or isinstance(p, bool) or p < 1:
            raise ConfigError("model.patch_size", p, why="expected a positive integer")
        if H % p or W % p:
            raise ConfigError("model.patch_size", p,
                              why=f"patch size {p} does not divide the image size {H}×{W}")
        if not isinstance(cfg.channels, int) or cfg.channels < 1:
            raise ConfigError("model.channels", cfg.channels, why="expected a positive integer")
        if cfg.pool is not None and cfg.pool not in POOLS:
            raise ConfigError("model.pool", cfg.pool, POOLS)
        pool = cfg.pool or cls.default_pool
        grids = stage_grids(cfg)
        n0 = grids[0][0] * grids[0][1] + (pool == "cls")
        if cfg.max_len < n0:
            raise ConfigError("model.max_len", cfg.max_len,
                              why=f"{n0} tokens ({grids[0][0]}×{grids[0][1]} patches"
                                  f"{' + [class]' if pool == 'cls' else ''}); set "
                                  f"model.max_len>={n0}")
        for i, sc in enumerate(stage_configs(cfg)):
            if cfg.stages:
                validate_model(sc)
            name, _ = split_spec(sc.mixer, "model.mixer")
            if pool == "cls" and MIXERS.get(name).supports.grid:
                raise ConfigError("model.pool", "cls", ["mean"],
                                  why=f"mixer {name!r} reads the 2-D grid, which a [class] "
                                      f"token is not part of; pool by averaging")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.image_size is None:
            raise ConfigError("model.image_size", None, why="an image model needs the image "
                                                            "size (the trainer sets it from the data)")
        self.check_config(cfg)
        self.cfg = cfg
        self.causal = False
        self.grids = stage_grids(cfg)
        scfgs = stage_configs(cfg)
        d0 = scfgs[0].d_model
        self.patch = PatchEmbed(cfg.channels, d0, cfg.patch_size)
        self.pool = cfg.pool or self.default_pool
        self.cls = nn.Parameter(torch.zeros(1, 1, d0)) if self.pool == "cls" else None
        self.pos_embed = None                                       # the input-hook encoding
        self.stage_pos = nn.ModuleDict()                            # str(stage) → encoding
        self.merges = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, (sc, (h, w)) in enumerate(zip(scfgs, self.grids)):
            pos = self._position(sc, w)
            if i == 0 and "input" in pos.hooks:
                self.pos_embed = pos
            if i == 0 or set(pos.hooks) - {"input"}:    # an input table is added once only
                self.stage_pos[str(i)] = pos
            if i:
                self.merges.append(PatchMerging(scfgs[i - 1].d_model, sc.d_model))
            stack = BlockStack(sc, False, mixer_dims={"grid": (h, w)})
            for m in stack.modules():
                if hasattr(m, "check_grid") and m is not stack:
                    m.check_grid(h, w)               # e.g. a window larger than the grid
            self.stages.append(stack)
        d = scfgs[-1].d_model
        self.norm = build_norm(scfgs[-1])
        self.head = nn.Linear(d, cfg.vocab_size)
        init_weights(self, cfg, sum(sc.n_layers for sc in scfgs))
        nn.init.zeros_(self.head.weight)             # ViT: zero-initialised head (§3.1, fine-tuning)

    @staticmethod
    def _position(cfg: ModelConfig, width: int):
        name, kw = split_spec(cfg.position, "model.position")
        dims = dict(mixer_dims(cfg), n_layers=cfg.n_layers)
        acc = accepted_kwargs(POSITIONS.get(name).obj)
        if acc is not None and "width" in acc and "width" not in kw:
            dims["width"] = width                    # 2-D offsets on this stage's grid
        return POSITIONS.build(cfg.position, "model.position", **dims)

    def forward(self, images: Tensor, **_) -> ModelOutput:
        C, (H, W) = self.cfg.channels, image_hw(self.cfg)
        if images.dim() != 4 or tuple(images.shape[1:]) != (C, H, W):
            raise InputError(f"images must be (B, {C}, {H}, {W}), got {tuple(images.shape)}")
        x = self.patch(images.to(self.patch.proj.weight.dtype))   # (B, d, h, w)
        B = x.shape[0]
        x = x.flatten(2).transpose(1, 2)                            # (B, h·w, d) row-major
        if self.cls is not None:
            x = torch.cat([self.cls.expand(B, -1, -1), x], 1)       # (B, 1 + h·w, d)
        aux = {}
        for i, (stack, grid) in enumerate(zip(self.stages, self.grids)):
            pos = self.stage_pos[str(i)] if str(i) in self.stage_pos else None
            if i:
                x = self.merges[i - 1](x, self.grids[i - 1])
            n = x.shape[1]
            positions = torch.arange(n, device=x.device).unsqueeze(0).expand(B, n)
            if i == 0 and self.pos_embed is not None:
                x = self.pos_embed.embed(x, positions)
            ctx = MixerContext(causal=False, positions=positions, pos=pos, grid=grid)
            x, _ = stack(x, ctx)
            for k, v in ctx.aux.items():
                aux.setdefault(k, []).extend(v)
        h = self.norm(x)
        pooled = h[:, 0] if self.cls is not None else h.mean(1)     # (B, d)
        total = sum((v for vs in aux.values() for v in vs), 0.0)
        return ModelOutput(self.head(pooled), None, total, h, {"pooled": pooled})


@MODELS.register(
    "metaformer", paper="MetaFormer Is Actually What You Need for Vision (Yu et al., 2022)",
    equation="X' = X + TokenMixer(Norm(X)); Y = X' + MLP(Norm(X')); stages halve the grid",
    complexity=("Σ_i L_i·(mixer(n_i) + O(n_i d_i²))", "Σ_i L_i·O(n_i d_i)"),
    test="tests/test_vision.py::test_metaformer_is_norm_mixer_norm_mlp_over_any_mixer",
    tiny={"image_size": 8, "patch_size": 2, "channels": 1, "mixer": "softmax",
          "stages": [{"n_layers": 1, "d_model": 16}, {"n_layers": 1, "d_model": 32}]})
class MetaFormer(ImageClassifier):
    """The general block (norm → any token mixer → norm → MLP) in stages, mean-pooled."""

    default_pool = "mean"
