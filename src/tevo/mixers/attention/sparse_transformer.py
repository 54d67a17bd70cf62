"""Sparse Transformer factorized attention: strided and fixed patterns.

Paper: Generating Long Sequences with Sparse Transformers (Child et al., 2019), §4.2–4.3.
Attention is split into two index sets A⁽¹⁾, A⁽²⁾ (stride/block l, positions i, j):
  strided: A⁽¹⁾_i = {j : i − l ≤ j ≤ i},          A⁽²⁾_i = {j : (i − j) mod l = 0}
  fixed:   A⁽¹⁾_i = {j : ⌊j/l⌋ = ⌊i/l⌋},          A⁽²⁾_i = {j : j mod l ∈ {l−c, …, l−1}}
(causal forms also require j ≤ i; bidirectional forms read |i − j| in the strided A⁽¹⁾).
§4.3 combines them in one of three ways, ``mode``:
  "interleaved": one set per residual block, alternating with the layer index (eq. 2);
  "merged":      one head attends to A⁽¹⁾ ∪ A⁽²⁾ (eq. 3);
  "heads":       half of the heads use A⁽¹⁾, the other half A⁽²⁾ (eq. 4).
For ``fixed``, ``vary_heads`` lets head groups use distinct summary sub-blocks of length c
(§4.2: "different heads attend to distinct sub-blocks of length c").
Positions are the context's (padding skipped). Sets are computed separately by tiles
(``tevo.nn.blocksparse``) and merged exactly as one softmax over their (deduplicated) union.
Complexity: strided time O(n(l + n/l)d), memory O(n(l + n/l)) — O(n√n) at l = √n; fixed
time O(n(l + c·n/l)d), memory O(n(l + c·n/l)). Decode: a full KV cache (A⁽²⁾ reaches back to
the start), O(l + m/l) keys per step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.blocksparse import (Partial, all_queries_table, band_tables, cat_partials,
                               index_offset, merge_partials, strided_tables, tile_attention)
from ...nn.context import MixerContext
from ...registry import MIXERS
from .pattern import PatternAttention

MODES = ("merged", "heads", "interleaved")


class FactorizedSparseAttention(PatternAttention):
    """Shared machinery: two index sets combined per ``mode``."""

    def __init__(self, d_model: int, heads: int = 4, block: int = 128, mode: str = "merged",
                 layer: int = 0, kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, scale: float | None = None,
                 causal: bool = True):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, scale, causal)
        if mode not in MODES:
            raise ConfigError("mixer.mode", mode, MODES)
        if int(block) < 1:
            raise ConfigError("mixer.block", block, why="block (stride l) must be >= 1")
        if mode == "heads" and heads < 2:
            raise ConfigError("mixer.heads", heads, why="mode 'heads' needs at least 2 heads")
        self.block, self.mode, self.layer = int(block), mode, int(layer)

    # sets, per head slice: each returns a Partial over the heads of ``sl``
    def set1(self, a, sl: slice, dedupe: bool) -> Partial:
        raise NotImplementedError

    def set2(self, a, sl: slice, dedupe: bool) -> Partial:
        raise NotImplementedError

    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        a = _Args(q, k, v, q_pos, k_pos, k_valid, key_offset, ctx)
        h = q.shape[1]
        every = slice(0, h)
        if self.mode == "merged":        # A1 ∪ A2 in each head; A2 drops what A1 already has
            parts = [self.set1(a, every, False), self.set2(a, every, True)]
        elif self.mode == "heads":
            half = h // 2
            parts = [cat_partials([self.set1(a, slice(0, half), False),
                                   self.set2(a, slice(half, h), False)])]
        else:
            parts = [self.set1(a, every, False) if self.layer % 2 == 0
                     else self.set2(a, every, False)]
        return merge_partials(parts, q.dtype)

    def _run(self, a, sl, q_idx, k_idx, allow) -> Partial:
        full = sl.start == 0 and sl.stop == a.q.shape[1]
        return tile_attention(a.q[:, sl], a.k[:, sl], a.v[:, sl], q_idx, k_idx, a.q_pos,
                              a.k_pos, a.k_valid, allow=allow,
                              bias=self.bias_fn(a.ctx, heads=None if full else sl,
                                                full=(a.q, a.k, q_idx, k_idx)),
                              scale=self.scale, dropout=self.attn_dropout)


class _Args:
    def __init__(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx):
        self.q, self.k, self.v = q, k, v
        self.q_pos, self.k_pos, self.k_valid = q_pos, k_pos, k_valid
        self.key_offset, self.ctx, self.causal = key_offset, ctx, ctx.causal
        self.n, self.m = q.shape[2], k.shape[2]


@MIXERS.register(
    "sparse_strided",
    paper="Generating Long Sequences with Sparse Transformers (Child et al., 2019)",
    equation="§4.2 strided: A1_i = {j : i−l ≤ j ≤ i}, A2_i = {j : (i−j) mod l = 0}; §4.3 eq. 2–4 "
             "interleaved / merged / per-head",
    complexity=("O(n (l + n/l) d)", "O(n (l + n/l))"),
    test="tests/papers/test_attention_sparse_transformer.py::"
         "test_strided_matches_dense_attention_with_equivalent_mask",
    tiny={"heads": 2, "block": 3})
class SparseStridedAttention(FactorizedSparseAttention):
    """Sparse Transformer strided pattern: the previous l tokens plus every l-th token."""

    def allowed(self, qp, kp, causal: bool, which: int, dedupe: bool = False) -> Tensor:
        d, l = qp - kp, self.block
        ok = (d >= 0) if causal else torch.ones_like(d, dtype=torch.bool)
        if which == 1:
            return ok & (d.abs() <= l)
        ok = ok & (d % l == 0)
        return ok & (d.abs() > l) if dedupe else ok

    def set1(self, a, sl, dedupe):
        l = self.block
        q_idx, k_idx = band_tables(a.n, a.m, a.key_offset, min(l, a.n), l, 0 if a.causal else l,
                                   device=a.q.device)
        return self._run(a, sl, q_idx, k_idx, lambda qp, kp: self.allowed(qp, kp, a.causal, 1))

    def set2(self, a, sl, dedupe):
        q_idx, k_idx = strided_tables(a.n, a.m, a.key_offset, self.block, device=a.q.device)
        return self._run(a, sl, q_idx, k_idx,
                         lambda qp, kp: self.allowed(qp, kp, a.causal, 2, dedupe))


@MIXERS.register(
    "sparse_fixed",
    paper="Generating Long Sequences with Sparse Transformers (Child et al., 2019)",
    equation="§4.2 fixed: A1_i = {j : ⌊j/l⌋ = ⌊i/l⌋}, A2_i = {j : j mod l ∈ {l−c..l−1}}; §4.3 "
             "eq. 2–4 interleaved / merged / per-head",
    complexity=("O(n (l + c n/l) d)", "O(n (l + c n/l))"),
    test="tests/papers/test_attention_sparse_transformer.py::"
         "test_fixed_matches_dense_attention_with_equivalent_mask",
    tiny={"heads": 2, "block": 4, "summary": 1})
class SparseFixedAttention(FactorizedSparseAttention):
    """Sparse Transformer fixed pattern: own block plus the last c "summary" cells of blocks."""

    def __init__(self, d_model: int, heads: int = 4, block: int = 128, summary: int = 8,
                 mode: str = "merged", vary_heads: bool = False, layer: int = 0,
                 kv_heads: int | None = None, head_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, scale: float | None = None, causal: bool = True):
        super().__init__(d_model, heads, block, mode, layer, kv_heads, head_dim, bias, dropout,
                         scale, causal)
        if not 1 <= int(summary) <= self.block:
            raise ConfigError("mixer.summary", summary,
                              why=f"summary (c) must be between 1 and block={self.block}")
        self.summary, self.vary_heads = int(summary), bool(vary_heads)

    def summary_range(self, g: int) -> tuple[int, int]:
        """Summary cells [lo, hi) within a block used by head group g (g = 0: the last c)."""
        l, c = self.block, self.summary
        return l - c * (g + 1), l - c * g

    def allowed(self, qp, kp, causal: bool, which: int, dedupe: bool = False, g: int = 0):
        l = self.block
        ok = (kp <= qp) if causal else torch.ones_like(qp - kp, dtype=torch.bool)
        qb, kb = qp.div(l, rounding_mode="floor"), kp.div(l, rounding_mode="floor")
        if which == 1:
            return ok & (qb == kb)
        lo, hi = self.summary_range(g)
        r = kp % l
        ok = ok & (r >= lo) & (r < hi)
        return ok & (qb != kb) if dedupe else ok

    def set1(self, a, sl, dedupe):
        l = self.block
        shift = index_offset(a.q_pos, a.ctx.query_mask(a.n), 0) % l   # blocks at positions ≡ 0
        q_idx, k_idx = band_tables(a.n, a.m, a.key_offset, l, 0, 0, shift=shift,
                                   device=a.q.device)
        return self._run(a, sl, q_idx, k_idx, lambda qp, kp: self.allowed(qp, kp, a.causal, 1))

    def set2(self, a, sl, dedupe):
        h = sl.stop - sl.start
        groups = min(h, self.block // self.summary) if self.vary_heads else 1
        sizes = [h // groups + (i < h % groups) for i in range(groups)]
        parts, h0 = [], sl.start
        for g, hs in enumerate(sizes):
            k_idx = self._summary_keys(a, g)
            q_idx = all_queries_table(a.n, a.q.device)
            parts.append(self._run(a, slice(h0, h0 + hs), q_idx, k_idx,
                                   lambda qp, kp, g=g: self.allowed(qp, kp, a.causal, 2, dedupe, g)))
            h0 += hs
        return cat_partials(parts)

    def _summary_keys(self, a, g: int) -> Tensor:
        """Indices of the keys whose position mod l lies in group g's summary cells:
        (B, 1, G) with G = c·(⌈m/l⌉ + 1)."""
        l = self.block
        lo, hi = self.summary_range(g)
        c = index_offset(a.q_pos, a.ctx.query_mask(a.n), a.key_offset)      # pos = key idx + c
        B = c.shape[0]
        U = -(-a.m // l) + 1
        u0 = c.div(l, rounding_mode="floor")
        blocks = u0.view(B, 1, 1) + torch.arange(U, device=c.device).view(1, U, 1)
        p = blocks * l + torch.arange(lo, hi, device=c.device)             # (B, U, c)
        j = (p - c.view(B, 1, 1)).reshape(B, 1, -1)
        return torch.where((j >= 0) & (j < a.m), j, -1)
