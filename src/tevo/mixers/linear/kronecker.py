"""Kronecker attention: attend to row and column averages of a 2D token grid.

Paper: Kronecker Attention Networks (Gao, Wang & Ji, KDD 2020), §3.2–3.3: for a h × w grid the
key/value matrix X (hw tokens) is assumed Kronecker-structured and replaced by its horizontal and
vertical averages,
    H̄ = row means (h × d),  W̄ = column means (w × d),  C = [H̄; W̄]   ((h + w) × d)
    KAO_KV:  Y = Attn(X W_q, C W_k, C W_v)                      — every token attends to h + w
    KAO_QKV: O = Attn(C W_q, C W_k, C W_v) ((h + w) outputs),  Y_(r,c) = O_r + O_{h+c}
             (queries averaged too; the grid output is the Kronecker sum of the row and column
             outputs — our reading of the paper's reconstruction of the h × w output)

A 1D sequence is laid out row-major on a grid of ``width`` columns (token of rank r among the
real tokens sits at (r // width, r % width), padding skipped, so padding changes nothing).
Bidirectional only. Complexity: time O(n (h + w) d) with h = n/w rows: O(n (n/w + w) d), which
is quadratic at a fixed width ``width`` (as the FLOP study counts it) and O(n^{1.5} d) only when
the grid is square (w = √n); memory O(n (n/w + w)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.attention import eager_attention
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, merge_heads, qkvo, split_heads

MODES = ("kv", "qkv")


def grid_summaries(x: Tensor, mask: Tensor | None, width: int):
    """Row and column means of the real tokens laid out row-major on ``width`` columns.
    Returns C (B, R + width, d), its validity (B, R + width), and the one-hot row/column
    assignment matrices (B, n, R), (B, n, width)."""
    B, n, d = x.shape
    real = torch.ones(B, n, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    rank = real.long().cumsum(-1) - 1
    R = -(-n // width)
    row = torch.where(real, torch.div(rank, width, rounding_mode="floor"), torch.full_like(rank, R))
    col = torch.where(real, rank % width, torch.full_like(rank, width))
    oh_r = F.one_hot(row, R + 1)[..., :R].to(x.dtype)                     # (B, n, R)
    oh_c = F.one_hot(col, width + 1)[..., :width].to(x.dtype)             # (B, n, w)
    oh = torch.cat([oh_r, oh_c], -1)                                      # (B, n, R + w)
    cnt = oh.sum(1)                                                       # (B, R + w)
    C = (oh.transpose(1, 2) @ x) / cnt.clamp_min(1).unsqueeze(-1)
    return C, cnt > 0, oh_r, oh_c


@MIXERS.register(
    "kronecker", paper="Kronecker Attention Networks (Gao, Wang & Ji, KDD 2020)",
    equation="§3.2 KAO_KV: Y = Attn(XW_q, [H̄; W̄]W_k, [H̄; W̄]W_v), H̄/W̄ row/column means",
    complexity=("O(n (n/w + w) d)", "O(n (n/w + w))"),
    test="tests/papers/test_linear_kronecker.py::test_kronecker_equals_grid_average_attention",
    tiny={"heads": 2, "width": 4})
class KroneckerAttention(Mixer):
    """Attention over the h + w row/column averages of a token grid (KAO_KV or KAO_QKV)."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 width: int = 16, mode: str = "kv", bias: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ConfigError("mixer.mode", mode, MODES)
        if int(width) < 1:
            raise ConfigError("mixer.width", width, why="must be >= 1")
        self.heads, self.width, self.mode = int(heads), int(width), mode
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        h = self.heads
        C, ok, oh_r, oh_c = grid_summaries(x, ctx.query_mask(n), self.width)
        kpm = ok[:, None, None, :]                                         # (B, 1, 1, R + w)
        k, v = split_heads(self.k_proj(C), h), split_heads(self.v_proj(C), h)
        if self.mode == "kv":
            y = eager_attention(split_heads(self.q_proj(x), h), k, v, kpm)  # (B, h, n, e)
            return self.o_proj(merge_heads(y)), None
        o = merge_heads(eager_attention(split_heads(self.q_proj(C), h), k, v, kpm))  # (B,R+w,·)
        R = oh_r.shape[-1]
        y = oh_r @ o[:, :R] + oh_c @ o[:, R:]                             # O_row(t) + O_col(t)
        return self.o_proj(y), None
