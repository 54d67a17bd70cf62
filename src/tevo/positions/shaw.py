"""Shaw et al. relative position representations (the key term), and gather helpers shared by
the encodings that look up a table by relative distance (huang_rpe, deberta).

Paper: Self-Attention with Relative Position Representations (Shaw, Uszkoreit & Vaswani, 2018),
eq. 4:  e_ij = x_i W^Q (x_j W^K + a^K_ij)^T / √d_z,  a^K_ij = w^K_{clip(j - i, k)},
with 2k + 1 learned vectors of size d_z shared by all heads (§3.2).
The score term q_i·a^K_ij / √d_z is returned through the ``bias`` hook, computed as one
(n_q × (2k+1)) product and a gather: O(n (2k+1) e + n²) instead of materialising a_ij.
The value term z_i = Σ_j α_ij (v_j + a^V_ij) (eq. 3) goes through the ``value`` hook: the
weights are bucketed by clipped distance (scatter-add) and multiplied by the (2k+1)-row table,
O(n² + n k e). Only mixers that materialise the weights accept it (softmax, mqa, gqa).
Complexity: time O(n k e + n²), memory O(n k + n²); parameters (2k+1)·e.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding


def clipped_index(q_pos: Tensor, k_pos: Tensor, max_distance: int) -> Tensor:
    """(B, n_q, n_k) long: clip(j - i, -k, k) + k, an index into a (2k+1)-row table."""
    rel = k_pos[:, None, :] - q_pos[:, :, None]
    return rel.clamp(-max_distance, max_distance) + max_distance


def gather_by_query(scores: Tensor, idx: Tensor) -> Tensor:
    """scores (B, h, n_q, R) indexed per query; idx (B, n_q, n_k) -> out[b,h,i,j] =
    scores[b,h,i,idx[b,i,j]] of shape (B, h, n_q, n_k)."""
    B, h = scores.shape[:2]
    return torch.gather(scores, 3, idx[:, None].expand(B, h, -1, -1))


def gather_by_key(scores: Tensor, idx: Tensor) -> Tensor:
    """scores (B, h, n_k, R) indexed per key; idx (B, n_q, n_k) -> out[b,h,i,j] =
    scores[b,h,j,idx[b,i,j]] of shape (B, h, n_q, n_k)."""
    B, h = scores.shape[:2]
    return torch.gather(scores.transpose(2, 3), 2, idx[:, None].expand(B, h, -1, -1))


def repeat_kv(k: Tensor, heads: int) -> Tensor:
    """(B, h_kv, n, e) -> (B, h, n, e) for grouped-query attention."""
    r = heads // k.shape[1]
    return k if r == 1 else k.repeat_interleave(r, dim=1)


@POSITIONS.register(
    "shaw", paper="Self-Attention with Relative Position Representations (Shaw et al., 2018)",
    equation="eq. 3–4: e_ij = q_i (k_j + a^K_{clip(j-i,k)})^T / √d_z; "
             "z_i = Σ_j α_ij (v_j + a^V_{clip(j-i,k)})",
    complexity=("O(n k e + n²)", "O(n k + n²)"),
    test="tests/papers/test_positions_shaw.py::test_shaw_equals_naive_relative_key_formula",
    tiny={"max_distance": 4})
class ShawRelativePosition(PositionEncoding):
    """Learned relative key and value embeddings a^K, a^V_{clip(j-i)} (shared by heads)."""

    hooks = frozenset({"bias", "value"})
    translation_invariant = True

    def __init__(self, head_dim: int, max_distance: int = 16, scale: float | None = None):
        super().__init__()
        if max_distance < 1:
            raise ConfigError("position.max_distance", max_distance, why="must be >= 1")
        self.head_dim, self.max_distance = head_dim, max_distance
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.rel_k = nn.Embedding(2 * max_distance + 1, head_dim)
        self.rel_v = nn.Embedding(2 * max_distance + 1, head_dim)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        idx = clipped_index(q_pos, k_pos, self.max_distance)
        s = torch.matmul(q.float(), self.rel_k.weight.float().t())      # (B, h, n_q, 2k+1)
        return gather_by_query(s, idx) * self.scale

    def values(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        idx = clipped_index(q_pos, k_pos, self.max_distance)              # (B, n_q, n_k)
        B, h, n_q, _ = weights.shape
        buckets = weights.new_zeros(B, h, n_q, 2 * self.max_distance + 1)
        buckets.scatter_add_(3, idx[:, None].expand(B, h, -1, -1), weights)
        return torch.matmul(buckets, self.rel_v.weight.to(weights.dtype))   # (B, h, n_q, e)
