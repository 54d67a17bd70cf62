"""A base for sparse-pattern attention computed by tiles (``tevo.nn.blocksparse``): local
windows, blocks, strides, summaries, neighbourhoods.

The base owns the projections, the position hooks, padding and the incremental state; a
subclass implements only

    attend_pattern(q, k, v, q_pos, k_pos, k_valid, key_offset, ctx) -> (B, h, n, e)

where the n queries are keys ``key_offset .. key_offset + n - 1`` of the m keys (cached keys
first), positions are the context's absolute positions (padding skipped), and ``k_valid`` marks
real keys. The same code serves a full pass (key_offset = 0) and a decode step (key_offset = the
cache length), so "prefill + steps == full pass" checks the tiled form against itself under
every cache shape. ``cache_span()`` bounds the cache: None keeps every key; an int r keeps the
last r keys only (a rolling buffer: local windows, adaptive spans).

Position hooks: ``qk`` rotates q and k before caching (keys are cached rotated); ``bias`` is
evaluated on each tile through ``tile_position_bias`` with the cached keys' own positions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...nn.blocksparse import check_contiguous, gather_tiles, tile_position_bias
from ...nn.context import MixerContext
from ..base import Supports
from .softmax import MultiHeadAttentionBase


class PatternAttention(MultiHeadAttentionBase):
    """Projections, rotary/bias hooks and a (possibly bounded) KV cache for tiled patterns."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))
    needs_contiguous = True     # tile tables assume real tokens are contiguous (see blocksparse)

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 scale: float | None = None, causal: bool = True,
                 out_bias: bool | None = None):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, impl="eager",
                         cross=False, scale=scale, out_bias=out_bias)
        self.causal = causal

    # -- to override ------------------------------------------------------------------------
    def attend_pattern(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor,
                       k_valid: Tensor, key_offset: int, ctx: MixerContext) -> Tensor:
        raise NotImplementedError

    def cache_span(self) -> int | None:
        """How many past keys a decode step can still need (None: all of them)."""
        return None

    # -- shared -----------------------------------------------------------------------------
    @property
    def attn_dropout(self) -> float:
        return self.dropout if self.training else 0.0

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q = self._split(self.q_proj(x), self.heads)                  # (B, h, n, e)
        k = self._split(self.k_proj(x), self.kv_heads)               # (B, h_kv, n, e)
        v = self._split(self.v_proj(x), self.kv_heads)
        q_pos = ctx.query_positions(x)                               # (B, n)
        q_valid = ctx.query_mask(n)
        q_valid = (torch.ones(B, n, dtype=torch.bool, device=x.device) if q_valid is None
                   else q_valid.bool())
        pos = ctx.pos
        if pos is not None and "qk" in pos.hooks:
            q, k = pos.rotate(q, k, q_pos, q_pos)
        k_pos, k_valid, offset = q_pos, q_valid, 0
        if state is not None and "k" in state:                      # cached keys come first
            offset = state["k"].shape[2]
            k = torch.cat([state["k"], k], 2)
            v = torch.cat([state["v"], v], 2)
            k_pos = torch.cat([state["pos"], k_pos], 1)
            k_valid = torch.cat([state["valid"], k_valid], 1)
        if n > 1 and self.needs_contiguous:
            check_contiguous(k_pos, k_valid, type(self).__name__)
        new_state = None
        if state is not None:
            span = self.cache_span()
            keep = k.shape[2] if span is None else min(span, k.shape[2])
            new_state = {"k": k[:, :, k.shape[2] - keep:], "v": v[:, :, v.shape[2] - keep:],
                         "pos": k_pos[:, k_pos.shape[1] - keep:],
                         "valid": k_valid[:, k_valid.shape[1] - keep:]}
        y = self.attend_pattern(q, self.repeat_kv(k), self.repeat_kv(v), q_pos, k_pos, k_valid,
                                offset, ctx)
        return self.o_proj(self._merge(y)), new_state

    def bias_fn(self, ctx: MixerContext, extra=None, heads: slice | None = None,
                full: tuple[Tensor, Tensor, Tensor, Tensor] | None = None):
        """The additive score term on tiles: the model's ``bias`` hook (if any) plus ``extra``
        (qp, kp) → (B|1, h|1, T, Q, K) of the mixer itself. For a kernel run on a head slice,
        ``heads`` is that slice and ``full`` = (q, k, q_idx, k_idx) with all heads, since the
        position encoding is built for all heads."""
        pos = ctx.pos
        use_pos = pos is not None and "bias" in pos.hooks
        if not use_pos and extra is None:
            return None

        def fn(qt, kt, qp, kp):
            b = None
            if use_pos:
                if heads is not None and full is not None:
                    qf, kf, qi, ki = full
                    b = tile_position_bias(pos, gather_tiles(qf, qi), gather_tiles(kf, ki),
                                           qp, kp, heads)
                else:
                    b = tile_position_bias(pos, qt, kt, qp, kp)
            if extra is not None:
                e = extra(qp[:, None, :, :, None], kp[:, None, :, None, :])
                b = e if b is None else b + e
            return b
        return fn
