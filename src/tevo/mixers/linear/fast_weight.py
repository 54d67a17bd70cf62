"""Fast weight programmer: linear attention with the delta update rule.

Paper: Linear Transformers Are Secretly Fast Weight Programmers (Schlag, Irie & Schmidhuber,
ICML 2021), §4.2 eq. 23–25 (delta rule), §4.3 (sum normalisation), §5.3 eq. 33 (DPFP).

    v̄_t = W_{t-1}ᵀ φ(k_t)                      (what the fast weights currently store for k_t)
    W_t = W_{t-1} + β_t φ(k_t) (v_t − v̄_t)ᵀ,   β_t = sigmoid(w_βᵀ x_t)  (per head)
    y_t = W_tᵀ φ(q_t),   φ(x) ← φ(x)/Σ_i φ(x)_i  (sum normalisation keeps the update stable)

Forms (``tevo.nn.chunked.delta_rule``): recurrent (one token at a time), chunk (the WY/UT
transform: a C × C triangular solve per chunk, recurrent across chunks; Yang et al., 2024) and
parallel (one chunk of n). Padded tokens get β = 0: they write nothing.
Complexity: time O(n C m + n m d) chunked, O(n m d) recurrent; state W: m × d per head.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import DELTA_FORMS, check_form, delta_rule, fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import (KERNEL_POSITIONS, feature_hook_before, head_dims, merge_heads,
                     position_state_decay, project_qkv, rotate_qk)
from .feature_maps import build_feature_map


class DeltaRuleBase(Mixer):
    """Projections, feature map, sum normalisation and β shared by the fast weight programmers."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=KERNEL_POSITIONS)

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 feature_map=None, sum_normalize: bool = True, bias: bool = False,
                 max_len: int = 4096, eps: float = 1e-6):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        inner = self.heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.beta_proj = nn.Linear(d_model, self.heads, bias=True)
        self.o_proj = nn.Linear(inner, d_model, bias=bias)
        fmap = feature_map if feature_map is not None else {"name": "dpfp", "nu": 1}
        self.fmap = build_feature_map(fmap, self.head_dim, self.heads, max_len)
        self.sum_normalize, self.eps = bool(sum_normalize), eps

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def phi(self, q: Tensor, k: Tensor, ctx: MixerContext, pos: Tensor):
        position_state_decay(ctx, self.heads, type(self).__name__, supported=False)
        q, k, after = feature_hook_before(ctx.pos, q, k, pos)
        fq, fk = self.fmap(q, pos, is_query=True), self.fmap(k, pos)
        if after:
            fq, fk = ctx.pos.features(fq, fk, pos, pos)
        if self.sum_normalize:                  # §4.3: φ(x)/Σφ(x)
            fq = fq / fq.sum(-1, keepdim=True).clamp_min(self.eps)
            fk = fk / fk.sum(-1, keepdim=True).clamp_min(self.eps)
        return fq, fk


@MIXERS.register(
    "fast_weight", paper="Linear Transformers Are Secretly Fast Weight Programmers (Schlag et "
                         "al., ICML 2021)",
    equation="eq. 23–25: W_t = W_{t-1} + β_t φ(k_t)(v_t − W_{t-1}ᵀφ(k_t))ᵀ, y_t = W_tᵀφ(q_t); "
             "φ = sum-normalised DPFP",
    complexity=("O(n C m + n m d)", "O(n d + C² + h m d)"),
    test="tests/papers/test_linear_fast_weight.py::test_chunkwise_equals_recurrent",
    tiny={"heads": 2, "chunk": 4, "feature_map": "elu+1"})
class FastWeightProgrammer(DeltaRuleBase):
    """Delta-rule linear attention (DPFP features, sum normalisation, learned β)."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 feature_map=None, sum_normalize: bool = True, form: str = "chunk",
                 chunk: int = 64, bias: bool = False, max_len: int = 4096):
        super().__init__(d_model, heads, head_dim, feature_map, sum_normalize, bias, max_len)
        self.form = check_form(form, DELTA_FORMS)
        if int(chunk) < 1:
            raise ConfigError("mixer.chunk", chunk, why="must be >= 1")
        self.chunk = int(chunk)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v = project_qkv(self, x)
        q, k, pos = rotate_qk(q, k, x, ctx)
        dtype = v.dtype
        mask = ctx.query_mask(n)
        beta = torch.sigmoid(upcast(self.beta_proj(x))).transpose(1, 2)       # (B, h, n)
        with fp32_region(x.device.type):
            fq, fk = self.phi(upcast(q), upcast(k), ctx, pos)
            if mask is not None:                 # padding writes nothing
                beta = beta * mask[:, None, :].float()
            form = "recurrent" if (state is not None and n == 1) else self.form
            S0 = None if state is None else state.get("S")
            y, S = delta_rule(fq, fk, upcast(v), beta, form=form, chunk=self.chunk, state=S0)
        new_state = None if state is None else {"S": S}
        return self.o_proj(merge_heads(y.to(dtype))), new_state
