"""Merged attention (MAtt): one decoder sublayer that does the work of self- and cross-attention.

Paper: Improving Deep Transformer with Depth-Scaled Initialization and Merged Attention (Zhang,
Titov & Sennrich, 2019), §4, eqs. 12–14. The decoder's self-attention is simplified to an
average attention without gate or FFN (SAAN) and merged with encoder–decoder attention into one
sublayer sharing the output projection:
    SAAN_i   = (1/i) Σ_{k≤i} s_k W_v^s                       (cumulative average of values)
    ATT_i    = softmax(s_i W_q (H W_k)^T / √e) H W_v          (per head, over encoder states H)
    MAtt(s)_i = (SAAN_i + ATT_i) W_o
so a decoder layer has two sublayers (MAtt, FFN) instead of three; SAAN decodes in O(1) per
token with a running sum. It lives here because the ``dsinit`` init scheme installs it in the
decoder of an encoder–decoder model (``init: {name: dsinit, merged_attention: true}``).
Padding is honoured: the average runs over real tokens only.
Complexity: O(n m d) for the cross part plus O(n d) for the average; decode O(m d) per token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mixers.attention.softmax import MultiHeadAttentionBase
from ..nn.context import MixerContext


class MergedAttention(MultiHeadAttentionBase):
    """(cumulative average of s W_v^s + cross-attention over the encoder) W_o, one sublayer."""

    def __init__(self, d_model: int, heads: int = 4, bias: bool = True, dropout: float = 0.0,
                 impl: str = "sdpa"):
        super().__init__(d_model, heads=heads, bias=bias, dropout=dropout, impl=impl, cross=True)
        self.v_self = nn.Linear(d_model, heads * self.head_dim, bias=bias)   # W_v^s of SAAN

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        u = self.v_self(x)                                              # (B, n, h·e)
        real = ctx.query_mask(n)
        w = torch.ones(B, n, 1, dtype=u.dtype, device=x.device) if real is None \
            else real.to(u.dtype).unsqueeze(-1)                         # (B, n, 1)
        s0 = u.new_zeros(B, 1, u.shape[-1]) if state is None or "sum" not in state \
            else state["sum"].to(u.dtype)
        c0 = u.new_zeros(B, 1, 1) if state is None or "count" not in state \
            else state["count"].to(u.dtype)
        sums = s0 + (u * w).cumsum(1)                                   # (B, n, h·e)
        counts = c0 + w.cumsum(1)                                       # (B, n, 1)
        saan = sums / counts.clamp(min=1.0)                             # padded rows: unused
        q = self._split(self.q_proj(x), self.heads)
        cross_state = None if state is None else {k: state[k] for k in ("k", "v") if k in state}
        y_cross, new_cross = self._cross(x, q, ctx, cross_state)       # includes W_o and its bias
        y = y_cross + F.linear(saan, self.o_proj.weight)                # (SAAN + ATT) W_o
        new_state = None
        if state is not None:
            new_state = dict(new_cross, sum=sums[:, -1:], count=counts[:, -1:])
        return y, new_state
