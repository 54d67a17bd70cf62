"""RoPE with biases in the Q/K projections.

Source: "Bias项的神奇作用:RoPE + Bias = 更好的长度外推性" (Su, kexue.fm/archives/9577, 2023): with
RoPE, keeping the bias terms of the query and key projections (added *before* the rotation)
    q_m = R_m (W_q x_m + b_q),   k_n = R_n (W_k x_n + b_k)
adds to the score terms such as b_q^T R_{n-m} b_k that depend on position only through n - m;
the post reports that this improves length extrapolation.
Why the encoding owns the biases: projections belong to the mixer and several mixers have no
bias option, so ``rope_bias`` carries its own per-head vectors b_q, b_k (h, e) and adds them
before rotating. With a mixer whose projections are bias-free this is exactly the post's model;
with biased projections it is the same function class (the two biases simply add), which the
paper test checks by equivalence with ``softmax(bias=True)`` + ``rope``.
Grouped K/V heads (GQA/MQA: k has h_kv < h heads): each K/V head adds the mean of its group's
b_k vectors, the same set of functions as one bias per K/V head, without needing h_kv at
construction (the model passes only heads and head_dim). Mixers that stack several key sets per
head (k with r·h heads, set-major, e.g. ``mgk``) reuse b_k for each set.
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

    def __init__(self, head_dim: int, heads: int = 4, base: float = 10000.0,
                 rotary_dim: int | float | None = None, layout: str = "half",
                 scaling: str | None = None, factor: float = 1.0):
        super().__init__(head_dim, base=base, rotary_dim=rotary_dim, layout=layout,
                         scaling=scaling, factor=factor)
        self.heads = heads
        self.b_q = nn.Parameter(torch.zeros(heads, head_dim))
        self.b_k = nn.Parameter(torch.zeros(heads, head_dim))

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        if q.shape[-1] != self.b_q.shape[-1]:
            raise ConfigError("position.head_dim", self.b_q.shape[-1],
                              why=f"rope_bias was built for head_dim={self.b_q.shape[-1]}, the "
                                  f"mixer's q/k have {q.shape[-1]}; set position.head_dim")
        h, h_kv = q.shape[1], k.shape[1]
        if h != self.heads or (h % h_kv and h_kv % h):
            raise ConfigError("position.heads", self.heads,
                              why=f"rope_bias holds {self.heads} bias vectors but the mixer has "
                                  f"{h} query / {h_kv} key heads")
        if h_kv <= h:                                   # GQA/MQA: mean over each group
            b_k = self.b_k.view(h_kv, h // h_kv, -1).mean(1)          # (h_kv, e)
        else:                                           # several key sets per head (e.g. mgk)
            b_k = self.b_k.repeat(h_kv // h, 1)                       # (h_kv, e)
        q = q + per_head_vector(self.b_q, q)
        k = k + per_head_vector(b_k, k)
        return self.apply(q, q_pos), self.apply(k, k_pos)


def per_head_vector(b: Tensor, like: Tensor) -> Tensor:
    """(h, e) -> (1, h, 1, e) in like's dtype."""
    return b.to(like.dtype)[None, :, None, :]
