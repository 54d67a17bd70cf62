"""DDPM with a Transformer denoiser: the forward noising process, its closed form, and
ancestral sampling (Ho et al., 2020, "Denoising Diffusion Probabilistic Models").

Forward process (eq. 2) with a linear schedule β_1..β_T (§4: 1e-4 → 0.02, T = 1000):
    q(x_t | x_{t-1}) = N(√(1−β_t) x_{t-1}, β_t I)
and its closed form (eq. 4), α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s:
    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)
Reverse step (Algorithm 2), σ_t² = β_t (the paper's first choice), z = 0 at t = 1:
    x_{t-1} = 1/√α_t · (x_t − β_t/√(1−ᾱ_t) · ε_θ(x_t, t)) + σ_t z
``sample(..., clip=c)`` is the authors' code's ``clip_denoised``: the same mean written as the
posterior mean of eq. 7, μ̃_t(x_t, x̂_0), with x̂_0 = (x_t − √(1−ᾱ_t) ε_θ) / √ᾱ_t clipped to
[−c, c] (the data's range, c = 1). Unclipped it equals Algorithm 2's mean exactly; clipped it
keeps a denoiser's early errors (amplified by 1/√ᾱ_t near t = T) out of the chain.
The ε-prediction loss (eq. 14, L_simple) is the ``ddpm`` objective (tevo.objectives.ddpm).

Denoiser ε_θ(x_t, t): the image is cut into p×p patches (ViT's patch embedding, reused from
``tevo.models.vision``), the timestep's sinusoidal embedding (the Transformer's, as in the
paper's §4) through a 2-layer SiLU MLP is added to every patch token, one ``BlockStack`` runs
over the 2-D token grid (so any grid mixer works), and a linear layer maps each token back to
its p×p×C pixels. Simplification: the paper's denoiser is a U-Net; here it is a Transformer
over patches (as in U-ViT / DiT), the brief's "Transformer denoiser".

Options (``model.extra``): timesteps T (int ≥ 1), beta_start, beta_end (0 < β_1 ≤ β_T < 1);
image_size / patch_size / channels as for ViT (patch_size must divide the image size).
Complexity: one denoiser call is L·(mixer(n) + O(n d²)), n = HW/p²; training costs one call per
image, sampling T calls.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MODELS, split_spec
from .block import BlockStack
from .common import ModelOutput, build_norm, extra_options, init_weights
from .vision import ImageClassifier, PatchEmbed, image_hw

OPTIONS = {"timesteps": (1000, int, 1, None), "beta_start": (1e-4, float, None, None),
           "beta_end": (0.02, float, None, None)}


def diffusion_options(cfg: ModelConfig) -> dict:
    o = extra_options(cfg, "diffusion", OPTIONS)
    for k in ("beta_start", "beta_end"):
        if not 0.0 < o[k] < 1.0:
            raise ConfigError(f"model.extra.{k}", o[k], why="expected a variance in (0, 1)")
    if o["beta_start"] > o["beta_end"]:
        raise ConfigError("model.extra.beta_start", o["beta_start"],
                          why=f"must be <= model.extra.beta_end = {o['beta_end']} (a linear "
                              f"schedule increasing from β_1 to β_T)")
    return o


class DiffusionSchedule(nn.Module):
    """β_t, α_t, ᾱ_t for t = 0..T (index 0 is t = 0: β_0 = 0, ᾱ_0 = 1), float64 buffers."""

    def __init__(self, timesteps: int, beta_start: float, beta_end: float):
        super().__init__()
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
            raise ConfigError("model.extra.timesteps", timesteps, why="expected an integer >= 1")
        for k, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not 0.0 < v < 1.0:
                raise ConfigError(f"model.extra.{k}", v, why="expected a variance in (0, 1)")
        self.T = timesteps
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        betas = torch.cat([betas.new_zeros(1), betas])                 # (T+1,)
        alphas = 1.0 - betas
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alpha_bar", torch.cumprod(alphas, 0), persistent=False)

    def _at(self, buf: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """buf[t] shaped (B, 1, 1, …) to broadcast over ``like``, in like's dtype."""
        return buf[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step (eq. 2): x_t = √(1−β_t) x_{t-1} + √β_t ε."""
        return (self._at(self.alphas, t, x_prev).sqrt() * x_prev
                + self._at(self.betas, t, x_prev).sqrt() * noise)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The closed form (eq. 4): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, t ∈ {1..T} per row."""
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def p_mean(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Algorithm 2's mean: 1/√α_t · (x_t − β_t/√(1−ᾱ_t) · ε̂)."""
        a, b = self._at(self.alphas, t, x_t), self._at(self.betas, t, x_t)
        ab = self._at(self.alpha_bar, t, x_t)
        return (x_t - b / (1.0 - ab).sqrt() * eps) / a.sqrt()

    def p_mean_clipped(self, x_t: Tensor, t: Tensor, eps: Tensor, clip: float) -> Tensor:
        """Eq. 7's posterior mean μ̃_t(x_t, x̂_0) with x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t clipped
        to [−clip, clip] (the authors' ``clip_denoised``):
            μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x̂_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t"""
        a, b = self._at(self.alphas, t, x_t), self._at(self.betas, t, x_t)
        ab, ab_prev = self._at(self.alpha_bar, t, x_t), self._at(self.alpha_bar, t - 1, x_t)
        x0 = ((x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()).clamp(-clip, clip)
        return (ab_prev.sqrt() * b / (1.0 - ab)) * x0 \
            + (a.sqrt() * (1.0 - ab_prev) / (1.0 - ab)) * x_t

    @torch.no_grad()
    def sample(self, eps_fn, shape, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32, clip: float | None = None) -> Tensor:
        """Algorithm 2: x_T ~ N(0, I); for t = T..1: x_{t-1} = p_mean + σ_t z, σ_t² = β_t,
        z = 0 at t = 1. ``eps_fn(x_t, t)`` with t a (B,) long tensor returns ε̂ like x_t.
        ``clip``: None (the paper's Algorithm 2) or c > 0: the mean from x̂_0 clipped to
        [−c, c] (``p_mean_clipped``)."""
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not clip > 0):
            raise ConfigError("clip", clip, why="expected None or a positive number (the "
                                                "data's range, 1 for images in [−1, 1])")
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        B = shape[0]
        for step in range(self.T, 0, -1):
            t = torch.full((B,), step, dtype=torch.long, device=x.device)
            eps = eps_fn(x, t).to(x.dtype)
            mean = self.p_mean(x, t, eps) if clip is None \
                else self.p_mean_clipped(x, t, eps, float(clip))
            if step > 1:
                z = torch.randn(shape, generator=generator, device=x.device, dtype=dtype)
                x = mean + self._at(self.betas, t, x).sqrt() * z
            else:
                x = mean
        return x


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """The Transformer's sinusoidal embedding of the (integer) timestep: (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device,
                                                        dtype=torch.float32) / max(half, 1))
    args = t.float()[:, None] * freqs[None]                        # (B, dim/2)
    emb = torch.cat([args.sin(), args.cos()], -1)
    return nn.functional.pad(emb, (0, dim - 2 * half))             # odd dim: one zero column


@MODELS.register(
    "diffusion", paper="Denoising Diffusion Probabilistic Models (Ho et al., 2020)",
    equation="eq. 4: q(x_t|x_0) = N(√ᾱ_t x_0, (1−ᾱ_t)I); eq. 14: ||ε − ε_θ(x_t, t)||²; Alg. 2",
    complexity=("L·(mixer(n) + O(n d²)) per denoiser call, n = HW/p²; T calls to sample",
                "L·O(n d)"),
    test="tests/papers/test_models_diffusion.py::test_closed_form_equals_t_forward_steps",
    tiny={"image_size": 8, "patch_size": 2, "channels": 1, "position": "learned",
          "extra": {"timesteps": 20}})
class DiffusionModel(nn.Module):
    """ε_θ(x_t, t): patches + timestep embedding → blocks over the grid → per-patch pixels."""

    input_kind = "image"
    default_causal = False
    has_decoder = False

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        diffusion_options(cfg)
        if cfg.stages is not None:
            raise ConfigError("model.stages", cfg.stages,
                              why="the diffusion denoiser keeps one full-resolution grid (no "
                                  "stages)")
        if cfg.image_size is None:
            return                                  # filled in from the data by the trainer
        H, W = image_hw(cfg)
        p = cfg.patch_size
        if not isinstance(p, int) or isinstance(p, bool) or p < 1:
            raise ConfigError("model.patch_size", p, why="expected a positive integer")
        if H % p or W % p:
            raise ConfigError("model.patch_size", p,
                              why=f"patch size {p} does not divide the image size {H}×{W}")
        if not isinstance(cfg.channels, int) or isinstance(cfg.channels, bool) \
                or cfg.channels < 1:
            raise ConfigError("model.channels", cfg.channels, why="expected a positive integer")
        n = (H // p) * (W // p)
        if cfg.max_len < n:
            raise ConfigError("model.max_len", cfg.max_len,
                              why=f"{n} patch tokens ({H // p}×{W // p}); set "
                                  f"model.max_len>={n}")
        split_spec(cfg.mixer, "model.mixer")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.image_size is None:
            raise ConfigError("model.image_size", None,
                              why="a diffusion model needs the image size (the trainer sets it "
                                  "from the data)")
        self.check_config(cfg)
        self.cfg = cfg
        self.causal = False
        o = diffusion_options(cfg)
        self.schedule = DiffusionSchedule(o["timesteps"], o["beta_start"], o["beta_end"])
        H, W = image_hw(cfg)
        p, C, d = cfg.patch_size, cfg.channels, cfg.d_model
        self.grid = (H // p, W // p)
        self.patch = PatchEmbed(C, d, p)
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        pos = ImageClassifier._position(cfg, self.grid[1])
        self.pos = pos
        self.pos_input = "input" in pos.hooks
        self.stack = BlockStack(cfg, False, mixer_dims={"grid": self.grid})
        for m in self.stack.modules():
            if hasattr(m, "check_grid") and m is not self.stack:
                m.check_grid(*self.grid)
        self.norm = build_norm(cfg)
        self.out = nn.Linear(d, p * p * C)
        init_weights(self, cfg, cfg.n_layers)

    @property
    def timesteps(self) -> int:
        return self.schedule.T

    def forward(self, images: Tensor, t: Tensor | None = None, **_) -> ModelOutput:
        """images: x_t (B, C, H, W); t: (B,) integer timesteps in 1..T (default T).
        Returns ModelOutput(logits=ε̂ (B, C, H, W))."""
        C, (H, W), p = self.cfg.channels, image_hw(self.cfg), self.cfg.patch_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (C, H, W):
            raise InputError(f"images must be (B, {C}, {H}, {W}), got {tuple(images.shape)}")
        B = images.shape[0]
        if t is None:
            t = torch.full((B,), self.timesteps, dtype=torch.long, device=images.device)
        t = torch.as_tensor(t, device=images.device).reshape(-1).expand(B)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.timesteps):
            raise InputError(f"timesteps must lie in 0..{self.timesteps}, got "
                             f"{int(t.min())}..{int(t.max())}")
        x = self.patch(images.to(self.patch.proj.weight.dtype))       # (B, d, h, w)
        x = x.flatten(2).transpose(1, 2)                              # (B, n, d) row-major
        n = x.shape[1]
        positions = torch.arange(n, device=x.device).unsqueeze(0).expand(B, n)
        if self.pos_input:
            x = self.pos.embed(x, positions)
        temb = self.time_mlp(timestep_embedding(t, x.shape[-1]).to(x.dtype))   # (B, d)
        x = x + temb[:, None]
        ctx = MixerContext(causal=False, positions=positions, pos=self.pos, grid=self.grid)
        x, _ = self.stack(x, ctx)
        h = self.norm(x)
        y = self.out(h)                                               # (B, n, p·p·C)
        gh, gw = self.grid
        eps = (y.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
               .reshape(B, C, H, W))                                  # unpatchify
        aux = sum((v for vs in ctx.aux.values() for v in vs), 0.0)
        return ModelOutput(eps, None, aux, h)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               clip: float | None = None) -> Tensor:
        """n images by ancestral sampling (Algorithm 2) with this denoiser: (n, C, H, W).
        ``clip=1.0``: x̂_0 clipped to the data's [−1, 1] at every step (the authors' code)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError("samples", n, why="expected a positive integer")
        C, (H, W) = self.cfg.channels, image_hw(self.cfg)
        w = self.patch.proj.weight
        return self.schedule.sample(lambda x, t: self(x, t).logits, (n, C, H, W), generator,
                                    w.device, w.dtype, clip)


def image_grid_png(images: Tensor, path, nrow: int | None = None, lo: float = -1.0,
                   hi: float = 1.0) -> Path:
    """Write (N, C, H, W) images in [lo, hi] as one PNG grid (1-pixel gaps); no dependencies
    beyond zlib. C = 1 → greyscale, C = 3 → RGB."""
    import struct
    import zlib
    x = images.detach().float().cpu()
    N, C, H, W = x.shape
    if C not in (1, 3):
        raise InputError(f"a PNG grid needs 1 or 3 channels, got {C}")
    nrow = nrow or max(1, math.ceil(math.sqrt(N)))
    ncol = math.ceil(N / nrow)
    x = ((x - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    canvas = torch.zeros(C, ncol * (H + 1) + 1, nrow * (W + 1) + 1, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, nrow)
        top, left = 1 + r * (H + 1), 1 + c * (W + 1)
        canvas[:, top:top + H, left:left + W] = x[i]
    rows = canvas.permute(1, 2, 0).reshape(canvas.shape[1], -1).numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", canvas.shape[2], canvas.shape[1], 8, 0 if C == 1 else 2,
                       0, 0, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return path
