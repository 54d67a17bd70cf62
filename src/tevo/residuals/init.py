"""Initialisation schemes (registry ``init``): ``fn(model, cfg, **options)`` applied once after the
model is built and given its default init (``model.init: {name: ..., ...}``,
tevo.models.common.init_weights).

- ``dsinit``  (Zhang, Titov & Sennrich, 2019, §3, eq. 10): every weight matrix of layer l (1-based,
  counted per stack) ~ U(−γ·α/√l, γ·α/√l), γ = √(6/(d_in + d_out)) (Xavier), α ∈ (0, 1]; with
  ``merged_attention: true`` the decoder's self- and cross-attention become one MAtt sublayer.
- ``admin``   (Liu et al., 2020, Algorithm 1): one profiling pass of each block stack on
  unit-variance random inputs sets every ``admin`` residual's ω from the output variances of
  the sublayers below it, or the closed forms of the authors' admin-torch package
  (``output_change_scale``: O(n) → ω = 1, O(logn) → ω² = (N+1)/ln(N+1) − 1, O(1) → ω² = N,
  with N residual sublayers in the stack).
- ``deepnorm`` (Wang et al., 2022, Fig. 2): α of every ``deepnorm`` residual and the β-scaled
  Xavier-normal init (gain β for FFN, value and output projections, 1 for query and key).
Complexity: one pass over the parameters (admin profiling: one forward pass).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import INITS, split_spec
from .admin import AdminResidual
from .deepnorm import DeepNormResidual, deepnorm_constants


def stacks(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The model's block stacks with their role: "encoder"/"decoder" (encoder–decoder models)
    or "single" (decoder-only and encoder-only models)."""
    from ..models.block import BlockStack
    if getattr(type(model), "has_decoder", False):
        return [(model.encoder, "encoder"), (model.decoder, "decoder")]
    return [(m, "single") for m in model.modules() if isinstance(m, BlockStack)]


def _sublayer_linears(block):
    """(name, Linear, kind) for the Linear layers inside a block's sublayers (not its norms or
    residual gates); kind is the layout letter of the sublayer."""
    for t, sub in zip(block.layout, block.sublayers):
        for name, m in sub.named_modules():
            if isinstance(m, nn.Linear):
                yield name, m, t


# -- DS-Init ---------------------------------------------------------------------------------
@INITS.register("dsinit", paper="Improving Deep Transformer with Depth-Scaled Initialization "
                                "and Merged Attention (Zhang, Titov & Sennrich, 2019)",
                equation="eq. 10: W ~ U(−γα/√l, γα/√l), γ = √(6/(d_in+d_out)); MAtt eqs. 12–14",
                complexity=("O(params)", "O(1)"),
                test="tests/papers/test_residuals_init.py::test_dsinit_bounds_scale_with_depth")
def dsinit(model: nn.Module, cfg: ModelConfig, alpha: float = 1.0,
           merged_attention: bool = False) -> None:
    """Depth-scaled uniform init of every sublayer matrix; optional merged attention (MAtt)."""
    if not 0.0 < float(alpha) <= 1.0:
        raise ConfigError("model.init.alpha", alpha, why="DS-Init needs 0 < alpha <= 1")
    if merged_attention:
        _install_merged_attention(model, cfg)
    for stack, _ in stacks(model):
        for l, block in enumerate(stack.blocks, start=1):
            for _, lin, _ in _sublayer_linears(block):
                d_out, d_in = lin.weight.shape
                bound = math.sqrt(6.0 / (d_in + d_out)) * alpha / math.sqrt(l)
                with torch.no_grad():
                    lin.weight.uniform_(-bound, bound)
                    if lin.bias is not None:
                        lin.bias.zero_()


def _install_merged_attention(model: nn.Module, cfg: ModelConfig) -> None:
    """Replace each decoder block's [self-attn, cross-attn] by one MAtt sublayer (kept in the
    cross slot "c", which receives the encoder output and the decoder's causal context)."""
    from .matt import MergedAttention
    if not getattr(type(model), "has_decoder", False):
        raise ConfigError("model.init.merged_attention", True,
                          why="merged attention (MAtt) needs an encoder–decoder model")
    _, mkw = split_spec(cfg.mixer, "model.mixer")
    for block in model.decoder.blocks:
        if block.layout[:2] != ["a", "c"]:
            raise ConfigError("model.layout", " ".join(block.layout),
                              why="MAtt merges a decoder's leading 'a c' sublayers")
        matt = MergedAttention(cfg.d_model, heads=int(mkw.get("heads", 4)),
                               bias=bool(mkw.get("bias", True)), dropout=cfg.dropout)
        block.layout = ["c"] + block.layout[2:]
        block.sublayers = nn.ModuleList([matt, *block.sublayers[2:]])
        block.residuals = nn.ModuleList([block.residuals[0], *block.residuals[2:]])


# -- Admin -----------------------------------------------------------------------------------
ADMIN_SCALES = ("profile", "O(n)", "O(logn)", "O(1)")


@INITS.register("admin", paper="Understanding the Difficulty of Training Transformers "
                               "(Admin, Liu et al., 2020)",
                equation="Algorithm 1: ω_i = √(Σ_{j<i} Var[f_j(x_{j−1})]) from one profiling pass",
                complexity=("one forward pass", "O(1)"),
                test="tests/papers/test_residuals_admin.py::"
                     "test_admin_profiling_bounds_output_change")
def admin_init(model: nn.Module, cfg: ModelConfig, output_change_scale: str = "profile",
               batch: int = 4, seq_len: int = 32, seed: int = 0) -> None:
    """Set the ω of every ``admin`` residual: profiled (the paper) or in closed form."""
    if output_change_scale not in ADMIN_SCALES:
        raise ConfigError("model.init.output_change_scale", output_change_scale, ADMIN_SCALES)
    found = False
    for stack, _ in stacks(model):
        res = [r for b in stack.blocks for r in b.residuals if isinstance(r, AdminResidual)]
        found = found or bool(res)
        if output_change_scale != "profile":
            n = len(res)
            omega2 = {"O(n)": 1.0, "O(logn)": (n + 1) / math.log(n + 1) - 1 if n else 1.0,
                      "O(1)": float(n)}[output_change_scale]
            for r in res:
                with torch.no_grad():
                    r.omega.fill_(math.sqrt(omega2))
        else:
            shared = {"ratio": 1.0}                    # ratio_1 = 1, one running ratio per stack
            for r in res:
                r.profile = shared
    if not found:
        raise ConfigError("model.init", "admin", why="the admin init needs `residual: admin`")
    if output_change_scale == "profile":
        try:
            _profiling_pass(model, cfg, batch, seq_len, seed)
        finally:
            for m in model.modules():
                if isinstance(m, AdminResidual):
                    m.profile = None


@torch.no_grad()
def _profiling_pass(model: nn.Module, cfg: ModelConfig, batch: int, seq_len: int,
                    seed: int) -> None:
    """One pass of every stack on unit-variance random inputs (the paper's √d-scaled embeddings;
    the model itself may not be callable yet inside its constructor). A fixed generator makes
    every process of a distributed run compute the same ω; eval mode keeps dropout out."""
    from ..nn.context import MixerContext
    g = torch.Generator().manual_seed(seed)
    n = min(seq_len, cfg.max_len)
    p = next(model.parameters())
    pos = torch.arange(n, device=p.device).unsqueeze(0).expand(batch, n)
    was_training = model.training
    model.eval()
    try:
        memory = None
        for stack, role in stacks(model):
            x = torch.randn(batch, n, cfg.d_model, generator=g).to(p.device, p.dtype)
            causal = role == "decoder" or (role == "single" and getattr(model, "causal", True))
            ctx = MixerContext(causal=causal, positions=pos, pos=getattr(model, "pos", None),
                               context=memory if role == "decoder" else None)
            h, _ = stack(x, ctx)
            if role == "encoder":
                memory = h
    finally:
        model.train(was_training)


# -- DeepNorm --------------------------------------------------------------------------------
@INITS.register("deepnorm",
                paper="DeepNet: Scaling Transformers to 1,000 Layers (Wang et al., 2022)",
                equation="Fig. 2: xavier_normal_(W, gain=β) for FFN, W_v, W_o; gain 1 for W_q, "
                         "W_k; "
                         "α, β per stack from the encoder/decoder depths",
                complexity=("O(params)", "O(1)"),
                test="tests/papers/test_residuals_deepnorm.py::test_deepnorm_alpha_beta_formulas")
def deepnorm_init(model: nn.Module, cfg: ModelConfig) -> None:
    """β-scaled Xavier-normal init of every stack's sublayers and α of its deepnorm residuals."""
    roles = stacks(model)
    depth = {role: len(stack) for stack, role in roles}
    for stack, role in roles:
        if role == "single":
            causal = getattr(model, "causal", True)
            const = deepnorm_constants(**({"n_dec": len(stack)} if causal else
                                          {"n_enc": len(stack)}))
            alpha, beta = next(iter(const.values()))
        else:
            alpha, beta = deepnorm_constants(depth["encoder"], depth["decoder"])[role]
        for block in stack.blocks:
            for r in block.residuals:
                if isinstance(r, DeepNormResidual):
                    r.alpha.fill_(alpha)
            for name, lin, t in _sublayer_linears(block):
                gain = 1.0 if name.endswith(("q_proj", "k_proj")) else beta
                with torch.no_grad():
                    nn.init.xavier_normal_(lin.weight, gain=gain)
                    if lin.bias is not None:
                        lin.bias.zero_()
