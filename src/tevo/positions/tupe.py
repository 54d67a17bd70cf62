"""TUPE: untied positional encoding, with the [CLS] position reset and optional relative bias.

Paper: Rethinking Positional Encoding in Language Pre-training (Ke, He & Liu, 2021);
reference guolinke/TUPE ``TransformerSentenceEncoder``:
    α_ij = (x_i W^Q)(x_j W^K)^T/√(2d)  +  (p_i U^Q)(p_j U^K)^T/√(2d)  [+ b_{j-i}  (TUPE-R)]
Positions never enter the token stream (untied): the second term is a per-head score computed
from LayerNorm'ed absolute position embeddings p with their own projections, once per forward
and shared by every layer (as in the reference). [CLS] reset: the position term of
pairs involving the first token is replaced by learned per-head scalars θ_1 ([CLS] → others,
row 0) and θ_2 (others → [CLS], column 0); as in the reference, θ_1 and θ_2 are the
self-correlations of two extra rows of the position table. ``relative=True`` adds TUPE-R's
T5-bucket bias with two extra buckets for the [CLS] pairs.
Scaling: the position term carries 1/√(2·d_head); for the paper's content scale set the mixer's
``scale`` to 1/√(2·d_head).
Complexity: time O(n² e) for the position term, memory O(n²); parameters (L+1)·d + 2d² + 2d.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..registry import POSITIONS
from .base import PositionEncoding
from .t5_bias import t5_bucket


@POSITIONS.register(
    "tupe", paper="Rethinking Positional Encoding in Language Pre-training (TUPE; Ke et al., 2021)",
    equation="α_ij = content/√2d + (p_i U^Q)(p_j U^K)^T/√2d, [CLS] row/column reset "
             "to θ_1/θ_2; TUPE-R adds b_{bucket(j-i)}",
    complexity=("O(n² e)", "O(n²)"),
    test="tests/papers/test_positions_tupe.py::test_tupe_matches_reference_abs_pos_bias",
    tiny={"relative": True, "num_buckets": 8, "max_distance": 16})
class TUPEPosition(PositionEncoding):
    """Untied absolute-position attention term shared by all layers, with [CLS] reset."""

    hooks = frozenset({"bias"})

    def __init__(self, d_model: int, max_len: int = 1024, heads: int = 4,
                 cls_reset: bool = True, relative: bool = False, num_buckets: int = 32,
                 max_distance: int = 128):
        super().__init__()
        if d_model % heads:
            raise ConfigError("position.heads", heads,
                              why=f"d_model={d_model} is not divisible by heads={heads}")
        self.d_model, self.heads, self.max_len = d_model, heads, max_len
        self.cls_reset, self.relative = bool(cls_reset), bool(relative)
        self.pos = nn.Embedding(max_len + 1, d_model)      # row 0 carries θ_1, row t+1 is p_t
        self.pos_ln = nn.LayerNorm(d_model)
        self.pos_proj = nn.Linear(d_model, 2 * d_model)    # U^Q, U^K in one projection
        self.pos_scaling = (d_model / heads * 2) ** -0.5
        if self.relative:
            if num_buckets < 4 or num_buckets % 2:
                raise ConfigError("position.num_buckets", num_buckets,
                                  why="needs an even number of buckets >= 4")
            self.num_buckets, self.max_distance = num_buckets, max_distance
            # + 1 bucket for others -> [CLS]; [CLS] -> others uses the unused bucket num_buckets/2
            self.rel_bias = nn.Embedding(num_buckets + 1, heads)

    def _table(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """U^Q p, U^K p for table rows idx (…) -> (…, h, e) each; query side pre-scaled."""
        w = self.pos_ln(self.pos(idx))
        pq, pk = self.pos_proj(w).unflatten(-1, (2, self.heads, -1)).unbind(-3)
        return pq * self.pos_scaling, pk

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads:
            raise ConfigError("position.heads", self.heads,
                              why=f"tupe has {self.heads} heads, the mixer {q.shape[1]}")
        top = int(torch.maximum(q_pos.max(), k_pos.max())) if q_pos.numel() else 0
        if top >= self.max_len:
            raise InputError(f"position {top} is past tupe's position table (max_len="
                             f"{self.max_len}); use a shorter input or a relative encoding")
        pq, _ = self._table(q_pos + 1)                                  # (B, n_q, h, e)
        _, pk = self._table(k_pos + 1)                                  # (B, n_k, h, e)
        out = torch.einsum("bihe,bjhe->bhij", pq.float(), pk.float())   # (B, h, n_q, n_k)
        if self.cls_reset:
            # θ_1 = p̃_0·p̃_0 (row 0 of the table), θ_2 = p̃_1·p̃_1 (the [CLS] row's own slot)
            sq, sk = self._table(torch.arange(2, device=q.device))      # (2, h, e)
            theta = (sq.float() * sk.float()).sum(-1)                   # (2, h)
            q0 = (q_pos == 0)[:, None, :, None]                         # (B, 1, n_q, 1)
            k0 = (k_pos == 0)[:, None, None, :]                         # (B, 1, 1, n_k)
            out = torch.where(k0, theta[1][None, :, None, None], out)   # others -> [CLS]
            out = torch.where(q0, theta[0][None, :, None, None], out)   # [CLS] -> others
        if self.relative:
            rel = k_pos[:, None, :] - q_pos[:, :, None]
            bucket = t5_bucket(rel, True, self.num_buckets, self.max_distance)
            if self.cls_reset:
                bucket = torch.where(k_pos[:, None, :] == 0, self.num_buckets, bucket)
                bucket = torch.where(q_pos[:, :, None] == 0, self.num_buckets // 2, bucket)
            out = out + self.rel_bias(bucket).permute(0, 3, 1, 2).float()
        return out
