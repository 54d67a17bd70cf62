"""DIET: decoupled positional attention, added per head to the token attention scores.

Paper: A Simple and Effective Positional Encoding for Transformers (Chen, Tsai, Bhojanapalli,
Chung, Chang & Ferng, 2021):
    DIET-ABS:  A^h_ij = (x_i W^Q_h)(x_j W^K_h)^T/√d + (P^Q_h)_i · (P^K_h)_j,
               P^Q_h, P^K_h ∈ R^{L×d_p}: low-rank learned absolute position embeddings per head;
    DIET-REL:  A^h_ij = (x_i W^Q_h)(x_j W^K_h)^T/√d + r^h_{clip(j - i)},
               a learned scalar per head and relative distance, without T5's log-binning.
Positions never touch the token embeddings (decoupled); one instance serves every layer (the
paper shares the position attention across layers). The segment terms of the paper (for
sentence-pair inputs) have no counterpart in tevo's position hooks and are omitted.
Complexity: time O(n² d_p) (abs) / O(n²) (rel), memory O(n²); parameters 2·L·h·d_p (abs) or
(2k+1)·h (rel).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..registry import POSITIONS
from .base import PositionEncoding
from .shaw import clipped_index

VARIANTS = ("abs", "rel")


@POSITIONS.register(
    "diet", paper="A Simple and Effective Positional Encoding for Transformers (DIET; Chen et "
                  "al., 2021)",
    equation="DIET-ABS A_ij += (P^Q_h)_i·(P^K_h)_j (rank d_p per head); DIET-REL "
             "A_ij += r^h_{clip(j-i)}",
    complexity=("O(n² d_p)", "O(n²)"),
    test="tests/papers/test_positions_diet.py::test_diet_abs_and_rel_equal_their_definitions",
    tiny={"rank": 4})
class DIETPosition(PositionEncoding):
    """Per-head position attention added to the scores: low-rank absolute or scalar relative."""

    hooks = frozenset({"bias"})

    def __init__(self, max_len: int = 1024, heads: int = 4, variant: str = "abs", rank: int = 32,
                 max_distance: int = 128):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError("position.variant", variant, VARIANTS)
        self.variant, self.heads = variant, heads
        self.translation_invariant = variant == "rel"
        if variant == "abs":
            if rank < 1:
                raise ConfigError("position.rank", rank, why="must be >= 1")
            self.max_len, self.rank = max_len, rank
            self.p_q = nn.Embedding(max_len, heads * rank)
            self.p_k = nn.Embedding(max_len, heads * rank)
        else:
            if max_distance < 1:
                raise ConfigError("position.max_distance", max_distance, why="must be >= 1")
            self.max_distance = max_distance
            self.rel = nn.Embedding(2 * max_distance + 1, heads)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads:
            raise ConfigError("position.heads", self.heads,
                              why=f"diet has {self.heads} heads, the mixer {q.shape[1]}")
        if self.variant == "rel":
            idx = clipped_index(q_pos, k_pos, self.max_distance)        # (B, n_q, n_k)
            return self.rel(idx).permute(0, 3, 1, 2)                    # (B, h, n_q, n_k)
        top = int(torch.maximum(q_pos.max(), k_pos.max())) if q_pos.numel() else 0
        if top >= self.max_len:
            raise InputError(f"position {top} is past diet's position table (max_len="
                             f"{self.max_len}); use a shorter input or variant: rel")
        pq = self.p_q(q_pos).unflatten(-1, (self.heads, self.rank))      # (B, n_q, h, r)
        pk = self.p_k(k_pos).unflatten(-1, (self.heads, self.rank))      # (B, n_k, h, r)
        return torch.einsum("bihr,bjhr->bhij", pq.float(), pk.float())
