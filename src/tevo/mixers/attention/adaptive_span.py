"""Adaptive attention span.

Paper: Adaptive Attention Span in Transformers (Sukhbaatar et al., 2019), §3, eq. 4–5: each head
learns a span z ∈ [0, S]; attention weights are multiplied by a soft mask of the distance x = t − r
    m_z(x) = clamp((R + z − x) / R, 0, 1),    a_tr = m_z(t−r) e^{s_tr} / Σ_q m_z(t−q) e^{s_tq},
and the loss gets the span penalty λ/M Σ_i z_i (M heads), which this mixer hands to
``ctx.add_aux("adaptive_span", ·)`` (the model adds it to the training loss).
Computed as a sliding window of D = min(S, ⌈max_i z_i + R⌉) keys (beyond it every mask is 0)
with log m_z added to the scores, so cost follows the learned spans; decoding keeps only the
last D − 1 keys (span-truncated cache). Bidirectional use reads x = |t − r|.
Complexity: time O(n·D·d), memory O(n·D), D ≤ S the current largest span (+ ramp).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.blocksparse import band_tables, merge_partials, tile_attention
from ...nn.context import MixerContext
from ...registry import MIXERS
from .pattern import PatternAttention


@MIXERS.register(
    "adaptive_span",
    paper="Adaptive Attention Span in Transformers (Sukhbaatar et al., 2019)",
    equation="eq. 4–5: a_tr = m_z(t−r)e^{s_tr} / Σ_q m_z(t−q)e^{s_tq}, "
             "m_z(x) = clamp((R+z−x)/R, 0, 1); loss += λ/M Σ_i z_i",
    complexity=("O(n D d)", "O(n D), D = ⌈max z⌉ + R ≤ S"),
    test="tests/papers/test_attention_adaptive_span.py::test_infinite_span_equals_softmax",
    tiny={"heads": 2, "max_span": 8, "ramp": 2, "init_span": 0.5})
class AdaptiveSpanAttention(PatternAttention):
    """Per-head learned soft attention span with an L1 span penalty; span-truncated cache."""

    def __init__(self, d_model: int, heads: int = 4, max_span: int = 1024, ramp: int = 32,
                 init_span: float = 0.0, span_loss: float = 2e-6, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 scale: float | None = None, causal: bool = True):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, scale, causal)
        if int(max_span) < 1:
            raise ConfigError("mixer.max_span", max_span, why="max_span (S) must be >= 1")
        if float(ramp) <= 0:
            raise ConfigError("mixer.ramp", ramp, why="ramp (R) must be > 0")
        if not 0.0 <= float(init_span) <= 1.0:
            raise ConfigError("mixer.init_span", init_span,
                              why="init_span is a fraction of max_span in [0, 1]")
        self.max_span, self.ramp, self.span_loss = int(max_span), float(ramp), float(span_loss)
        self.init_span = float(init_span)
        # z_i = S · clamp(p_i, 0, 1), as in the reference code (a fraction, clamped)
        self.span_frac = nn.Parameter(torch.full((heads,), self.init_span))

    def init_weights(self):
        nn.init.constant_(self.span_frac, self.init_span)

    def spans(self) -> Tensor:
        """z (h,) in [0, S]."""
        return self.max_span * self.span_frac.clamp(0.0, 1.0)

    def window(self) -> int:
        """D: keys at distance ≥ D get mask 0 for every head (or lie beyond S)."""
        z_max = float(self.spans().detach().max())
        return max(1, min(self.max_span, math.ceil(z_max + self.ramp)))

    def cache_span(self) -> int:
        return self.window() - 1

    def soft_mask(self, dist: Tensor) -> Tensor:
        """m_z(x) per head: dist (..., 1, T, Q, K) broadcast to (..., h, T, Q, K)."""
        z = self.spans().view(-1, 1, 1, 1)
        return ((self.ramp + z - dist) / self.ramp).clamp(0.0, 1.0)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        ctx.add_aux("adaptive_span", self.spans().mean(), self.span_loss)   # λ/M Σ_i z_i
        return super().forward(x, ctx, state)

    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        n, m, Dw = q.shape[2], k.shape[2], self.window()
        causal = ctx.causal
        q_idx, k_idx = band_tables(n, m, key_offset, min(Dw, n), Dw - 1, 0 if causal else Dw - 1,
                                   device=q.device)

        def dist(qp, kp):
            return (qp - kp) if causal else (qp - kp).abs()

        def allow(qp, kp):
            d = dist(qp, kp)
            return (d >= 0) & (d < Dw) & (self.soft_mask(d.float()) > 0)

        def log_mask(qp, kp):       # log m_z; off-pattern entries are masked, keep them finite
            return self.soft_mask(dist(qp, kp).float()).clamp_min(1e-30).log()

        part = tile_attention(q, k, v, q_idx, k_idx, q_pos, k_pos, k_valid, allow=allow,
                              bias=self.bias_fn(ctx, log_mask), scale=self.scale,
                              dropout=self.attn_dropout)
        return merge_partials([part], q.dtype)
