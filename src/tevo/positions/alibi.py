"""ALiBi: attention with linear biases.

Paper: Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation
(Press et al., 2022), §3:  softmax(q_i K^T + m_h · [-(i-1), …, -1, 0])  i.e.
    bias_h(i, j) = -m_h · |i - j|,
slopes m_h = 2^{-8h/H} for h = 1..H when H is a power of two; otherwise the H' = 2^⌊log2 H⌋
slopes of H' heads followed by every other slope of 2H' heads (the paper's ``get_slopes``, also
BLOOM's and MPT's). ``max_bias`` generalises the 8 (MPT's ``alibi_bias_max``).
The paper's bias is causal (j ≤ i); |i - j| extends it symmetrically to bidirectional attention.
Complexity: time O(n²) per head for the bias, memory O(n²); no parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding


def alibi_slopes(heads: int, max_bias: float = 8.0) -> Tensor:
    """The paper's slopes for any head count: (heads,) float32."""
    def pow2(n: int) -> list[float]:
        return [2.0 ** (-max_bias * i / n) for i in range(1, n + 1)]
    if heads < 1:
        raise ConfigError("position.heads", heads, why="ALiBi needs at least one head")
    p = 2 ** int(math.floor(math.log2(heads)))
    slopes = pow2(p)
    if p != heads:
        slopes += pow2(2 * p)[0::2][: heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


@POSITIONS.register(
    "alibi", paper="Train Short, Test Long: Attention with Linear Biases (Press et al., 2022); "
                   "BLOOM (2022)",
    equation="§3: score_h(i, j) += -m_h |i - j|, m_h = 2^{-8h/H} (non-powers of two: "
             "interleaved from 2H')",
    complexity=("O(n²)", "O(n²)"),
    test="tests/papers/test_positions_alibi.py::test_alibi_slopes_match_paper_bloom_and_mpt",
    tiny={})
class ALiBiPosition(PositionEncoding):
    """Linear distance penalty -m_h·|i-j| per head, slopes from the paper's geometric formula."""

    hooks = frozenset({"bias"})
    translation_invariant = True

    def __init__(self, heads: int = 4, max_bias: float = 8.0):
        super().__init__()
        if float(max_bias) <= 0:
            raise ConfigError("position.max_bias", max_bias, why="must be > 0")
        self.heads = heads
        self.register_buffer("slopes", alibi_slopes(heads, float(max_bias)), persistent=False)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads:
            raise ConfigError("position.heads", self.heads,
                              why=f"alibi has {self.heads} slopes, the mixer {q.shape[1]} heads")
        dist = (q_pos[:, :, None] - k_pos[:, None, :]).abs().float()      # (B, n_q, n_k)
        return -self.slopes.to(q.device)[None, :, None, None] * dist[:, None]  # (B, h, n_q, n_k)
