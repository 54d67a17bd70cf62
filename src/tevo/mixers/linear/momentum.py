"""Momentum (heavy-ball) linear attention.

Paper: Momentum Transformer: Closing the Performance Gap Between Self-attention and Its
Linearization (Nguyen, Baraniuk, Kirby, Osher & Wang, 2022), §2: the linear-attention state is
updated with heavy-ball momentum instead of plain accumulation:

    p_i = μ p_{i-1} + φ(k_i) v_iᵀ,   s_i = s_{i-1} + γ p_i     (and the same for the normaliser z)
    y_i = φ(q_i)ᵀ s_i / φ(q_i)ᵀ z_i

Unrolled, s_i = γ/(1−μ) · (A_i − μ B_i) with A_i = Σ_{j≤i} φ(k_j)v_jᵀ (plain linear attention)
and B_i = Σ_{j≤i} μ^{i−j} φ(k_j)v_jᵀ (decayed linear attention) = p_i — so the layer is two calls
of the shared chunked kernel, inheriting its parallel / chunk / scan / recurrent forms; token j
gets weight γ(1 − μ^{i−j+1})/(1 − μ). μ = 0 is ``linear``; γ cancels in the normalised output
(it matters with ``normalize="none"``). State: (A, B) with their normalisers, O(h m d).
Complexity: time O(n m d), memory O(n d + h m d).
"""
from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ...nn.chunked import linear_attention, safe_denominator
from ...registry import MIXERS
from ..base import Supports
from .common import KERNEL_POSITIONS, KernelAttention, key_mask


@MIXERS.register(
    "momentum", paper="Momentum Transformer (Nguyen et al., 2022)",
    equation="§2: p_i = μp_{i-1} + φ(k_i)v_iᵀ, s_i = s_{i-1} + γp_i, y_i = φ(q_i)ᵀs_i/φ(q_i)ᵀz_i",
    complexity=("O(n m d)", "O(n d + h m d)"),
    test="tests/papers/test_linear_momentum.py::test_momentum_zero_equals_linear",
    tiny={"heads": 2, "chunk": 4})
class MomentumAttention(KernelAttention):
    """Linear attention whose state moves with heavy-ball momentum μ and step γ (causal)."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=KERNEL_POSITIONS)

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 feature_map="elu+1", momentum: float = 0.6, step: float = 1.0,
                 form: str = "chunk", chunk: int = 64, normalize: str = "sum", eps: float = 1e-6,
                 bias: bool = False, max_len: int = 4096):
        if not 0.0 <= float(momentum) < 1.0:
            raise ConfigError("mixer.momentum", momentum, why="must be in [0, 1)")
        if normalize not in ("sum", "none"):
            raise ConfigError("mixer.normalize", normalize, ["sum", "none"])
        super().__init__(d_model, heads, head_dim, feature_map, form, chunk, normalize, eps,
                         bias, max_len)
        self.mu, self.gamma = float(momentum), float(step)

    takes_state_decay = False       # its two states follow their own (momentum) dynamics

    def attend(self, fq, fk, v, mask, causal, state, log_decay=None, k_weight=None):
        if not causal:
            raise ValueError("momentum attention is causal only (momentum follows token order)")
        B, h, n, _ = fq.shape
        km = key_mask(mask, fk)
        if km is not None:
            fk, v = fk * km, v * km
        dv = v.shape[-1]
        if self.normalize == "sum":
            v = torch.cat([v, torch.ones_like(v[..., :1]) if km is None else km.expand(B, h, n, 1)],
                          -1)
        st = state or {}
        form = self.pick_form(n, state)
        oA, A = linear_attention(fq, fk, v, form=form, chunk=self.chunk, state=st.get("A"))
        out, new = oA, {"A": A}
        if self.mu > 0:
            g = torch.full((B, h, n), math.log(self.mu), device=fq.device)
            if km is not None:                       # padding: no decay, no write
                g = g * km[..., 0]
            oB, Bst = linear_attention(fq, fk, v, form=form, chunk=self.chunk, log_decay=g,
                                       state=st.get("B"))
            out, new["B"] = oA - self.mu * oB, Bst
        out = out * (self.gamma / (1.0 - self.mu))
        if self.normalize == "sum":
            out = out[..., :dv] / safe_denominator(out[..., dv:], self.eps)
        return out, (new if state is not None else None)
