"""Huang et al. relative position embeddings, method 4 (query and key both interact with a_ij).

Paper: Improve Transformer Models with Better Relative Position Embeddings (Huang, Liang, Xu &
Xiang, 2020), method 4 (HF BERT's former ``relative_key_query``):
    e_ij = (q_i·k_j + q_i·a_ij + k_j·a_ij) / √d,   a_ij = w_{clip(j - i, k)},
2k + 1 learned vectors of size d_head shared by the heads. The two extra terms go through the
``bias`` hook, each one (n × (2k+1)) product plus a gather.
Complexity: time O(n k e + n²), memory O(n k + n²); parameters (2k+1)·e.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding
from .shaw import clipped_index, gather_by_key, gather_by_query, repeat_kv


@POSITIONS.register(
    "huang_rpe", paper="Improve Transformer Models with Better Relative Position Embeddings "
                       "(Huang et al., 2020)",
    equation="method 4: e_ij = (q_i·k_j + q_i·a_ij + k_j·a_ij)/√d, a_ij = w_{clip(j-i,k)}",
    complexity=("O(n k e + n²)", "O(n k + n²)"),
    test="tests/papers/test_positions_huang_rpe.py::test_huang_method4_equals_naive_formula",
    tiny={"max_distance": 4})
class HuangRelativePosition(PositionEncoding):
    """Relative embeddings a_{clip(j-i)} scored against both the query and the key."""

    hooks = frozenset({"bias"})
    translation_invariant = True

    def __init__(self, head_dim: int, max_distance: int = 64, scale: float | None = None):
        super().__init__()
        if max_distance < 1:
            raise ConfigError("position.max_distance", max_distance, why="must be >= 1")
        self.head_dim, self.max_distance = head_dim, max_distance
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.rel = nn.Embedding(2 * max_distance + 1, head_dim)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        idx = clipped_index(q_pos, k_pos, self.max_distance)            # (B, n_q, n_k)
        w = self.rel.weight.float().t()                                 # (e, 2k+1)
        qa = torch.matmul(q.float(), w)                                 # (B, h, n_q, 2k+1)
        ka = torch.matmul(repeat_kv(k, q.shape[1]).float(), w)          # (B, h, n_k, 2k+1)
        return (gather_by_query(qa, idx) + gather_by_key(ka, idx)) * self.scale
