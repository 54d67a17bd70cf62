"""RoPE with biases in the Q/K projections.

Source: "Bias项的神奇作用:RoPE + Bias = 更好的长度外推性" (Su, kexue.fm 9577, 2023): with RoPE,
keeping the bias terms of the query and key projections (added *before* the rotation)
    q_m = R_m (W_q x_m + b_q),   k_n = R_n (W_k x_n + b_k)
gives the score a learnable purely relative term b_q^T R_{n-m} b_k (plus cross terms), which the
post finds improves length extrapolation.
Why the encoding owns the biases: projections belong to the mixer and several mixers have no
bias option, so ``rope_bias`` carries its own per-head vectors b_q (h, e) and b_k (h_kv, e) and
adds them before rotating. With a mixer whose projections are bias-free this is exactly the post's
model; with biased projections it is the same function class (the two biases simply add), which
the paper test checks by equivalence with ``softmax(bias=True)`` + ``rope``.
Complexity: time O(n d), memory O(n d); parameters 2·h·e.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .rope import RotaryPosition


@POSITIONS.register(
    "rope_bias", paper="RoPE + Bias = better length extrapolation (Su, kexue.fm/archives/9577, "
                       "2023); RoFormer (Su et al., 2021)",
    equation="q_m = R_m (W_q x_m + b_q), k_n = R_n (W_k x_n + b_k)",
    complexity=("O(n d)", "O(n d)"),
    test="tests/papers/test_positions_rope_bias.py::"
         "test_rope_bias_equals_rope_with_biased_projections",
    tiny={})
class RotaryBiasPosition(RotaryPosition):
    """RoPE applied to q + b_q and k + b_k with learned per-head biases (before rotation)."""

    hooks = frozenset({"qk"})
    translation_invariant = True

    def __init__(self, head_dim: int, heads: int = 4, kv_heads: int | None = None,
                 base: float = 10000.0, rotary_dim: int | float | None = None,
                 layout: str = "half", scaling: str | None = None, factor: float = 1.0):
        super().__init__(head_dim, base=base, rotary_dim=rotary_dim, layout=layout,
                         scaling=scaling, factor=factor)
        kv_heads = heads if kv_heads is None else kv_heads
        self.b_q = nn.Parameter(torch.zeros(heads, head_dim))
        self.b_k = nn.Parameter(torch.zeros(kv_heads, head_dim))

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        self._check(q)
        for name, t, b in (("heads", q, self.b_q), ("kv_heads", k, self.b_k)):
            if t.shape[1] != b.shape[0]:
                raise ConfigError(f"position.{name}", b.shape[0],
                                  why=f"rope_bias holds {b.shape[0]} bias vectors but the mixer "
                                      f"has {t.shape[1]} heads; set position.{name}")
        q = q + per_head_vector(self.b_q, q)
        k = k + per_head_vector(self.b_k, k)
        return self.apply(q, q_pos), self.apply(k, k_pos)


def per_head_vector(b: Tensor, like: Tensor) -> Tensor:
    """(h, e) -> (1, h, 1, e) in like's dtype."""
    return b.to(like.dtype)[None, :, None, :]
