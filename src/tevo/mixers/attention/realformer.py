"""Residual attention (RealFormer): each layer adds the previous layer's raw scores to its own.

Paper: RealFormer: Transformer Likes Residual Attention (He et al., 2021), §3 eq. 3–4:
    ResidualMultiHead(Q, K, V, Prev) = Concat(head_1..h) W^O,
    head_i = softmax(Q_i K_iᵀ/√d_k + Prev_i) V_i,   and Prev' = Q_i K_iᵀ/√d_k + Prev_i
is handed to the next layer. The carried scores are the pre-softmax, pre-mask scores (position
bias included); masks are applied after the sum, so -inf never accumulates. They travel through
``ctx.carry["realformer_scores"]`` (B, h, n_q, n_k); with a KV cache a decode step carries its
own row (n_q = 1), so incremental decoding equals the full pass.
Complexity: time O(n² d); memory O(n²) (the score matrix is materialised and carried).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.masks import fix_empty_rows
from ...registry import MIXERS
from ..base import Supports
from .softmax import MultiHeadAttentionBase

CARRY_KEY = "realformer_scores"


@MIXERS.register(
    "realformer", paper="RealFormer: Transformer Likes Residual Attention (He et al., 2021)",
    equation="§3 eq. 3-4: head_i = softmax(Q_i K_iᵀ/√d_k + Prev_i) V_i; "
             "Prev'_i = Q_i K_iᵀ/√d_k + Prev_i carried to the next layer",
    complexity=("O(n² d)", "O(n²)"),
    test="tests/papers/test_attention_realformer.py::test_realformer_scores_include_previous_layer",
    tiny={"heads": 2})
class RealFormerAttention(MultiHeadAttentionBase):
    """Softmax attention whose pre-softmax scores are the running sum over layers (ctx.carry)."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 layer: int = 0):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, impl="eager")
        self.layer = layer

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        s = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])  # (B,h,nq,nk)
        if bias is not None:
            s = s + bias.float()
        prev = ctx.carry.get(CARRY_KEY) if self.layer > 0 else None   # layer 0 starts afresh
        if prev is not None:
            if prev.shape[1:] != s.shape[1:]:
                raise ConfigError("mixer.heads", self.heads,
                                  why=f"realformer layers must share heads and length: carried "
                                      f"scores {tuple(prev.shape)} vs {tuple(s.shape)}")
            s = s + prev
        ctx.carry[CARRY_KEY] = s
        if mask is not None:
            s = s.masked_fill(~fix_empty_rows(mask), float("-inf"))
        w = s.softmax(-1).to(v.dtype)
        if self.training and self.dropout > 0:
            w = F.dropout(w, self.dropout)
        return torch.matmul(w, v)
