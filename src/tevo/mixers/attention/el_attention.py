"""EL-attention: attention that expands the query instead of projecting keys and values.

Paper: EL-Attention: Memory Efficient Lossless Attention for Generation (Yan et al., 2021),
§3 eq. 5–6: with H the states attended to (encoder output, or past hidden states),
    head_i = softmax((Q W_i^Q)(W_i^K)ᵀ Hᵀ / √d_k) H W_i^V
i.e. the query is pushed through W_i^K into the model space so that every head attends to the
same H, and W_i^V is applied after the weighted sum. It equals multi-head attention exactly: the
key bias adds q·b_K to a whole row (cancels in the softmax) and the value bias passes through
because the weights of a row sum to 1. The cache holds H once (n·d numbers), not per-head K and V
(2·n·h·d_k); for cross-attention H is the encoder output itself, so nothing new is stored.
Parameters are those of ``softmax`` without the (redundant) key bias, so weights copy across.
Complexity: time O(n_q n_k h d); memory O(n_q n_k h) scores, cache O(n_k d).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.context import MixerContext
from ...nn.masks import attention_mask, fix_empty_rows
from ...registry import MIXERS
from ..base import Supports
from .softmax import MultiHeadAttentionBase


@MIXERS.register(
    "el_attention", paper="EL-Attention: Memory Efficient Lossless Attention for Generation "
                          "(Yan et al., 2021)",
    equation="§3 eq. 5-6: head_i = softmax(Q W_i^Q (W_i^K)ᵀ Hᵀ/√d_k) H W_i^V (query expanded "
             "into model space; K, V never projected)",
    complexity=("O(n_q n_k h d)", "O(n_q n_k h); cache O(n_k d)"),
    test="tests/papers/test_attention_el_attention.py::test_el_attention_equals_softmax_and_cache_is_smaller",
    tiny={"heads": 2})
class ELAttention(MultiHeadAttentionBase):
    """Multi-head attention computed by expanding queries, caching only the attended states."""

    supports = Supports(causal=True, bidirectional=True, cross=True, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, cross: bool = False):
        super().__init__(d_model, heads, None, head_dim, bias, dropout, "eager", cross)
        # no key bias: it adds q·b_K to a whole row of scores and cancels in the softmax
        self.k_proj = nn.Linear(d_model, heads * self.head_dim, bias=False)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        h, e = self.heads, self.head_dim
        q = self._split(self.q_proj(x), h)                                 # (B, h, n, e)
        if self.cross:
            if state is not None and "h" in state:
                H = state["h"]
            elif ctx.context is None:
                raise ValueError("cross-attention needs ctx.context (the encoder output)")
            else:
                H = ctx.context
            new_state = None if state is None else {"h": H}
            mask = attention_mask(n, H.shape[1], False, ctx.context_mask, x.device)
        else:
            H = x if state is None or "h" not in state else torch.cat([state["h"], x], 1)
            new_state = None if state is None else {"h": H}
            kpm = ctx.key_padding_mask
            if kpm is not None and kpm.shape[1] != H.shape[1]:
                raise ValueError(f"key_padding_mask covers {kpm.shape[1]} keys, "
                                 f"attention has {H.shape[1]}")
            mask = attention_mask(n, H.shape[1], ctx.causal, kpm, x.device)
        wk = self.k_proj.weight.view(h, e, d)                              # W^K per head
        wv = self.v_proj.weight.view(h, e, d)
        qh = torch.einsum("bhne,hed->bhnd", q, wk)                         # (B, h, n, d)
        s = torch.einsum("bhnd,bmd->bhnm", qh, H).float() / math.sqrt(e)   # (B, h, n, n_k)
        if mask is not None:
            s = s.masked_fill(~fix_empty_rows(mask), float("-inf"))
        w = s.softmax(-1).to(H.dtype)
        if self.training and self.dropout > 0:
            w = F.dropout(w, self.dropout)
        ah = torch.einsum("bhnm,bmd->bhnd", w, H)                          # (B, h, n, d)
        y = torch.einsum("bhnd,hed->bhne", ah, wv)                         # (B, h, n, e)
        if self.v_proj.bias is not None:
            y = y + self.v_proj.bias.view(1, h, 1, e)
        return self.o_proj(self._merge(y)), new_state
