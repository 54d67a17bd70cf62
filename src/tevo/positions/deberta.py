"""DeBERTa disentangled attention: content-to-position and position-to-content terms.

Paper: DeBERTa: Decoding-enhanced BERT with Disentangled Attention (He et al., 2021), eq. 4;
log-bucketed relative positions from DeBERTa-v2 (``make_log_bucket_position``):
    Ã_ij = Q^c_i K^c_j  +  Q^c_i K^r_{δ(i,j)}  +  K^c_j Q^r_{δ(i,j)},   scaled by 1/√(3d),
    K^r = P W_{k,r},  Q^r = P W_{q,r},  P: 2·span learned relative embeddings,
    δ(i,j) = clamp(bucket(i - j) + span, 0, 2·span - 1)  (HF DebertaV2 convention),
where bucket keeps |i-j| < buckets/2 exact and log-spaces larger distances up to
``max_relative``. The mixer computes the content term; this encoding returns the c2p + p2c
terms through the ``bias`` hook, each one (n × 2·span) product plus a gather.
Scaling: DeBERTa scales every term by 1/√(3d); the terms here use that scale; for the exact
model set the mixer's ``scale`` to 1/√(3·d_head) as well (the paper test does).
Shared across layers (one instance per model): P as in the paper, and also W_{k,r}, W_{q,r}
(DeBERTa has one pair per layer).
Complexity: time O(n·span·e + n²), memory O(n·span + n²); parameters 2·span·d + 2·d·h·e.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding
from .shaw import gather_by_key, gather_by_query, repeat_kv


def log_bucket_position(rel: Tensor, bucket_size: int, max_position: int) -> Tensor:
    """DeBERTa-v2 ``make_log_bucket_position``: exact for |rel| < bucket_size/2, log-spaced up to
    max_position beyond; odd in rel. rel: int tensor -> long tensor."""
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), torch.full_like(rel, mid - 1), rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos.double() / mid)
                         / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.double(), log_pos * sign).long()


@POSITIONS.register(
    "deberta", paper="DeBERTa: Decoding-enhanced BERT with Disentangled Attention (He et al., "
                     "2021); DeBERTa-v2 log buckets",
    equation="eq. 4: A_ij = Q^c_i·K^c_j + Q^c_i·K^r_δ(i,j) + K^c_j·Q^r_δ(i,j), /√(3d); "
             "δ = clamp(logbucket(i-j) + span)",
    complexity=("O(n·span·e + n²)", "O(n·span + n²)"),
    test="tests/papers/test_positions_deberta.py::test_deberta_matches_hf_debertav2_attention",
    tiny={"buckets": 8, "max_relative": 16})
class DebertaRelative(PositionEncoding):
    """Disentangled attention terms c2p and p2c over log-bucketed relative embeddings."""

    hooks = frozenset({"bias"})
    translation_invariant = True

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 buckets: int = 256, max_relative: int = 512, norm: bool = True,
                 scale: float | None = None):
        super().__init__()
        head_dim = d_model // heads if head_dim is None else head_dim
        if buckets < 0 or buckets == 1 or max_relative < 2:
            raise ConfigError("position.buckets", buckets,
                              why="buckets must be 0 (no bucketing) or >= 2, max_relative >= 2")
        if buckets and max_relative <= buckets // 2 + 1:
            raise ConfigError("position.max_relative", max_relative,
                              why=f"must exceed buckets/2 + 1 = {buckets // 2 + 1}")
        self.heads, self.head_dim = heads, head_dim
        self.buckets, self.max_relative = buckets, max_relative
        self.span = buckets if buckets > 0 else max_relative
        self.scale = 1.0 / math.sqrt(3 * head_dim) if scale is None else float(scale)
        self.rel_embeddings = nn.Embedding(2 * self.span, d_model)                  # P
        self.norm = nn.LayerNorm(d_model) if norm else None                # v2 norm_rel_ebd
        self.pos_key_proj = nn.Linear(d_model, heads * head_dim)                    # W_{k,r}
        self.pos_query_proj = nn.Linear(d_model, heads * head_dim)                  # W_{q,r}

    def relative_index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(B, n_q, n_k) index δ(i, j) into the 2·span table."""
        rel = q_pos[:, :, None] - k_pos[:, None, :]                                 # i - j
        if self.buckets > 0:
            rel = log_bucket_position(rel, self.buckets, self.max_relative)
        return (rel + self.span).clamp(0, 2 * self.span - 1)

    def projected(self) -> tuple[Tensor, Tensor]:
        """K^r, Q^r: (h, 2·span, e) each."""
        p = self.rel_embeddings.weight
        if self.norm is not None:
            p = self.norm(p)
        kr = self.pos_key_proj(p).view(-1, self.heads, self.head_dim).transpose(0, 1)
        qr = self.pos_query_proj(p).view(-1, self.heads, self.head_dim).transpose(0, 1)
        return kr, qr

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads or q.shape[-1] != self.head_dim:
            raise ConfigError("position.heads", self.heads,
                              why=f"deberta was built for {self.heads}×{self.head_dim} heads, "
                                  f"the mixer has {q.shape[1]}×{q.shape[-1]}")
        idx = self.relative_index(q_pos, k_pos)
        kr, qr = self.projected()
        c2p = torch.matmul(q.float(), kr.float().transpose(-1, -2))                 # (B,h,n_q,2s)
        p2c = torch.matmul(repeat_kv(k, q.shape[1]).float(), qr.float().transpose(-1, -2))
        return (gather_by_query(c2p, idx) + gather_by_key(p2c, idx)) * self.scale
