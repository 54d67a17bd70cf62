"""LongT5 transient-global (TGlobal) attention.

Paper: LongT5: Efficient Text-To-Text Transformer for Long Sequences (Guo et al., 2022), §3.1.2.
Local attention within radius r, plus "transient global" tokens made on the fly: the input is
cut into blocks of k tokens, each block summed into one token (x̄_g = Σ_{i ∈ g} x_i), normalised
(T5 RMS layer norm) and projected with the layer's own K and V:
    y_i = Σ_{j : |i−j| ≤ r} a_ij v_j + Σ_g a_ig v̄_g,   a = softmax over both sets jointly,
    s_ig = q_i · k̄_g + b_side(g − block(i)),
with b_side a T5-bucketed relative bias on block distance ("side" bias, one per head). Tokens
of a final partial block join the previous block; blocks made only of padding are masked
(as in the reference implementation, flaxformer / Hugging Face ``LongT5TransientGlobalAttention``).
T5 attention is unscaled (scale = 1); pass ``scale=1.0`` for that, the default is 1/√e.
The model's ``bias`` hook (e.g. a T5 relative bias) applies to the local part.
Complexity: time O(n (r + n/k) d), memory O(n (r + n/k)) (blocks of r+1 queries against 3
blocks, plus n/k global tokens). Bidirectional only (an encoder attention).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.blocksparse import (all_queries_table, band_tables, index_offset, merge_partials,
                               tile_attention)
from ...nn.context import MixerContext
from ...registry import MIXERS, Option
from ..base import Supports
from .pattern import PatternAttention


def t5_relative_bucket(rel: Tensor, bidirectional: bool = True, num_buckets: int = 32,
                       max_distance: int = 128) -> Tensor:
    """T5's bucketing of a relative position (memory − query): exact for small distances,
    logarithmic up to max_distance (Raffel et al., 2020, §2.1; mesh-tensorflow)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(rel.float().clamp(min=1) / max_exact)
                         / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


@MIXERS.register(
    "longt5_tglobal",
    paper="LongT5: Efficient Text-To-Text Transformer for Long Sequences (Guo et al., 2022)",
    equation="§3.1.2: softmax over {j : |i−j| ≤ r} ∪ {global g}, k̄_g = W_K·RMSNorm(Σ_{i∈g} x_i), "
             "s_ig = q_i·k̄_g + b_side(g − ⌊i/k⌋)",
    complexity=("O(n (r + n/k) d)", "O(n (r + n/k))"),
    test="tests/papers/test_attention_longt5.py::test_matches_brute_force_reference",
    tiny={"heads": 2, "radius": 2, "global_block": 3})
class LongT5TGlobalAttention(PatternAttention):
    """Local attention (radius r) plus transient global tokens summarising blocks of k tokens."""

    options = {"num_buckets": Option(ge=2), "max_distance": Option(ge=2), "norm_eps": Option(gt=0)}

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, radius: int = 127, global_block: int = 16,
                 side_bias: bool = True, num_buckets: int = 32, max_distance: int = 128,
                 norm_eps: float = 1e-6, head_dim: int | None = None, bias: bool = False,
                 dropout: float = 0.0, scale: float | None = None, causal: bool = False):
        super().__init__(d_model, heads, None, head_dim, bias, dropout, scale, causal)
        if int(radius) < 0:
            raise ConfigError("mixer.radius", radius, why="radius must be >= 0")
        if int(global_block) < 1:
            raise ConfigError("mixer.global_block", global_block, why="global_block must be >= 1")
        self.radius, self.global_block = int(radius), int(global_block)
        self.num_buckets, self.max_distance, self.norm_eps = num_buckets, max_distance, norm_eps
        self.global_norm = nn.Parameter(torch.ones(d_model))     # T5 RMS norm of block sums
        self.side_bias = nn.Embedding(num_buckets, heads) if side_bias else None

    def init_weights(self):
        nn.init.ones_(self.global_norm)

    # -- transient global tokens -----------------------------------------------------------
    def global_ids(self, p: Tensor, p0: Tensor, length: Tensor) -> Tensor:
        """Block id of position p: ⌊(p − p0)/k⌋, a final partial block joining the previous one."""
        full = length.div(self.global_block, rounding_mode="floor")
        return torch.minimum((p - p0).div(self.global_block, rounding_mode="floor"), full - 1)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        self._x = x                       # the block sums are taken over the mixer's input
        try:
            return super().forward(x, ctx, state)
        finally:
            self._x = None

    def _globals(self, x, q_pos, valid, G):
        """Block sums → RMS norm → K, V: (B, h, G, e) each, their ids and validity (B, G)."""
        B = x.shape[0]
        length = valid.sum(-1)
        p0 = q_pos.gather(1, valid.long().argmax(-1, keepdim=True)).squeeze(1)
        ids = self.global_ids(q_pos, p0.view(B, 1), length.view(B, 1))       # (B, n)
        ids = torch.where(valid & (ids >= 0), ids, G)                       # padding → dummy G
        sums = x.new_zeros(B, G + 1, x.shape[-1]).scatter_add(
            1, ids.unsqueeze(-1).expand_as(x), x)[:, :G]                     # (B, G, d)
        var = sums.float().pow(2).mean(-1, keepdim=True)
        xg = (sums.float() * torch.rsqrt(var + self.norm_eps)).to(x.dtype) * self.global_norm
        kg = self.repeat_kv(self._split(self.k_proj(xg), self.kv_heads))      # (B, h, G, e)
        vg = self.repeat_kv(self._split(self.v_proj(xg), self.kv_heads))
        gid = torch.arange(G, device=x.device).expand(B, G)
        g_valid = gid < length.div(self.global_block, rounding_mode="floor").view(B, 1)
        return kg, vg, gid, g_valid, p0, length

    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        B, h, n, e = q.shape
        r = self.radius
        # local: blocks of r+1 queries against the block before, itself and the block after
        q_idx, k_idx = band_tables(n, k.shape[2], key_offset, r + 1, r, r, device=q.device)
        local = tile_attention(q, k, v, q_idx, k_idx, q_pos, k_pos, k_valid,
                               allow=lambda qp, kp: (qp - kp).abs() <= r,
                               bias=self.bias_fn(ctx), scale=self.scale,
                               dropout=self.attn_dropout)
        G = n // self.global_block
        if G == 0:
            return merge_partials([local], q.dtype)
        valid = ctx.query_mask(n)
        valid = torch.ones(B, n, dtype=torch.bool, device=q.device) if valid is None else valid.bool()
        kg, vg, gid, g_valid, p0, length = self._globals(self._x, q_pos, valid, G)
        shape = (B, 1, 1, 1, 1)
        p0b, lb = p0.view(shape), length.view(shape)
        side = None
        if self.side_bias is not None:
            def side(qt, kt, qp, gp):              # b_side(g − block(i)), T5 buckets per head
                rel = gp.unsqueeze(-2) - self.global_ids(qp.unsqueeze(-1), p0b[:, 0], lb[:, 0])
                bucket = t5_relative_bucket(rel, True, self.num_buckets, self.max_distance)
                return self.side_bias(bucket).permute(0, 4, 1, 2, 3)     # (B, h, T, Q, G)
        glob = tile_attention(q, kg, vg, all_queries_table(n, q.device),
                              torch.arange(G, device=q.device).view(1, 1, G), q_pos, gid, g_valid,
                              bias=side, scale=self.scale, dropout=self.attn_dropout)
        return merge_partials([local, glob], q.dtype)
