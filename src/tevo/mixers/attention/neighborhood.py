"""Neighborhood attention (1D and 2D).

Paper: Neighborhood Attention Transformer (Hassani et al., 2023), §3.1, eq. 2–3: each query
attends to its k nearest neighbours (k×k in 2D); at the borders the window is shifted inwards so
that every query keeps exactly k (k×k) keys (unlike a zero-padded sliding window):
    ρ(i) = clamp(i − ⌊k/2⌋, 0, L − k),   NA(i) = softmax(q_i K_{ρ(i):ρ(i)+k}^T / √e + B_i) V_{ρ(i):ρ(i)+k}
with B the relative position bias (a learned (2k−1) or (2k−1)² table per head, eq. 3).
1D: tokens are a sequence. 2D: the sequence is an image in raster order with rows of ``width``
tokens; rows and columns are clamped independently.
Positions are the context's (padding skipped); L is each sample's real length.
Complexity: 1D time O(n k d), memory O(n k) (blocks of k queries, 3k keys); 2D time O(n k² d),
memory O(n k² e) (each query gathers its k² keys). Bidirectional only (vision encoders).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from ...nn.blocksparse import band_tables, index_offset, merge_partials, tile_attention
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Supports
from .pattern import PatternAttention


def window_start(p: Tensor, length: Tensor, k: int) -> Tensor:
    """ρ = clamp(p − ⌊k/2⌋, 0, L − k) (0 when L < k: the window is the whole axis)."""
    hi = (length - k).clamp(min=0)
    return torch.minimum((p - k // 2).clamp(min=0), hi)


@MIXERS.register(
    "neighborhood",
    paper="Neighborhood Attention Transformer (Hassani et al., 2023)",
    equation="eq. 2–3: NA(i) = softmax(q_i K_{ρ(i)}^T/√e + B(i, ρ(i))) V_{ρ(i)}, "
             "ρ(i) = clamp(i − ⌊k/2⌋, 0, L − k) per axis",
    complexity=("O(n k d) 1D, O(n k² d) 2D", "O(n k) 1D, O(n k² e) 2D"),
    test="tests/papers/test_attention_neighborhood.py::test_matches_brute_force_masked_reference",
    tiny={"heads": 2, "kernel_size": 3})
class NeighborhoodAttention(PatternAttention):
    """Each token attends to its k (or k×k) nearest neighbours, windows clamped at borders."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, kernel_size: int = 7,
                 width: int | None = None, rpb: bool = True, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 scale: float | None = None, causal: bool = False):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, scale, causal)
        if int(kernel_size) < 1:
            raise ConfigError("mixer.kernel_size", kernel_size,
                              why="kernel_size must be a positive integer")
        if width is not None and int(width) < 1:
            raise ConfigError("mixer.width", width, why="width (tokens per image row) must be >= 1")
        self.k, self.width = int(kernel_size), (None if width is None else int(width))
        span = 2 * self.k - 1
        self.rpb = None
        if rpb:   # NAT eq. 3: one learned bias per head and relative offset (per axis in 2D)
            shape = (heads, span) if self.width is None else (heads, span, span)
            self.rpb = nn.Parameter(torch.zeros(shape))
            nn.init.trunc_normal_(self.rpb, std=0.02)

    def init_weights(self):
        if self.rpb is not None:
            nn.init.trunc_normal_(self.rpb, std=0.02)

    # -- the pattern on positions ---------------------------------------------------------
    def allowed(self, qp: Tensor, kp: Tensor, p0: Tensor, length: Tensor) -> Tensor:
        k = self.k
        if self.width is None:
            s = window_start(qp - p0, length, k)
            return (kp - p0 >= s) & (kp - p0 < s + k)
        W = self.width
        rows = length.div(W, rounding_mode="floor")
        qr, qc = (qp - p0).div(W, rounding_mode="floor"), (qp - p0) % W
        kr, kc = (kp - p0).div(W, rounding_mode="floor"), (kp - p0) % W
        sr = window_start(qr, rows, k)
        sc = window_start(qc, torch.full_like(rows, W), k)
        return (kr >= sr) & (kr < sr + k) & (kc >= sc) & (kc < sc + k)

    def rel_bias(self, qp: Tensor, kp: Tensor, p0: Tensor) -> Tensor:
        """B[h, Δ + k − 1] (Δ per axis in 2D); offsets outside the table are off-pattern."""
        k = self.k
        if self.width is None:
            i = (kp - qp + k - 1).clamp(0, 2 * k - 2)
            return self.rpb[:, i.squeeze(1)].movedim(0, 1)        # (B, h, T, Q, K)
        W = self.width
        dr = ((kp - p0).div(W, rounding_mode="floor") - (qp - p0).div(W, rounding_mode="floor"))
        dc = (kp - p0) % W - (qp - p0) % W
        ir, ic = (dr + k - 1).clamp(0, 2 * k - 2), (dc + k - 1).clamp(0, 2 * k - 2)
        return self.rpb[:, ir.squeeze(1), ic.squeeze(1)].movedim(0, 1)

    # -- computation ------------------------------------------------------------------------
    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        n, m, K = q.shape[2], k.shape[2], self.k
        B = q.shape[0]
        length = k_valid.sum(-1)                                          # (B,) real tokens
        c = index_offset(q_pos, ctx.query_mask(n), key_offset)            # pos = key index + c
        first = k_valid.long().argmax(-1)
        p0 = first + c                                                    # first real position
        bshape = (B, 1, 1, 1, 1)
        p0b, lb = p0.view(bshape), length.view(bshape)
        if self.width is not None:
            bad = (length % self.width != 0) & (length > 0)
            if bool(bad.any()):
                raise InputError(f"neighborhood: 2D attention needs a whole number of image rows "
                                 f"(real length a multiple of width={self.width})")
            q_idx, k_idx = self._tables_2d(n, m, key_offset, c, p0, length, q.device)
        else:   # a window shifted at a border reaches k − 1 past the query on one side
            q_idx, k_idx = band_tables(n, m, key_offset, K, K - 1, K - 1, device=q.device)
        extra = None
        if self.rpb is not None:
            extra = lambda qp, kp: self.rel_bias(qp, kp, p0b)             # noqa: E731
        part = tile_attention(q, k, v, q_idx, k_idx, q_pos, k_pos, k_valid,
                              allow=lambda qp, kp: self.allowed(qp, kp, p0b, lb),
                              bias=self.bias_fn(ctx, extra), scale=self.scale,
                              dropout=self.attn_dropout)
        return merge_partials([part], q.dtype)

    def _tables_2d(self, n, m, key_offset, c, p0, length, device):
        """One tile per query holding the k×k key indices of its clamped window: (B, n, 1),
        (B, n, k²)."""
        K, W = self.k, self.width
        B = c.shape[0]
        qi = torch.arange(n, device=device)
        rel = (key_offset + qi).view(1, n) + c.view(B, 1) - p0.view(B, 1)       # (B, n)
        rows = length.div(W, rounding_mode="floor").view(B, 1)
        sr = window_start(rel.div(W, rounding_mode="floor"), rows, K)           # (B, n)
        sc = window_start(rel % W, torch.full_like(rows, W), K)
        a = torch.arange(K, device=device)
        kr = sr.unsqueeze(-1) + a                                               # (B, n, K)
        kc = sc.unsqueeze(-1) + a
        krel = (kr.unsqueeze(-1) * W + kc.unsqueeze(-2)).flatten(2)             # (B, n, K²)
        k_idx = krel + (p0 - c).view(B, 1, 1)
        k_idx = torch.where((k_idx >= 0) & (k_idx < m), k_idx, -1)
        return qi.view(1, n, 1), k_idx
