"""Normalized attention pooling (NAP): scores are standardised over the keys, not softmaxed.

Paper: Normalized Attention Without Probability Cage (Richter & Wattenhofer, 2020), §5: the
softmax is replaced by a normalisation of each query's scores over its keys,
    s_ij = q_i·k_j/√d,   a_ij = (s_ij − mean_j s_ij) / sqrt(var_j s_ij + ε),   y_i = Σ_j a_ij v_j,
so the weights sum to zero and the output leaves the convex hull of the values (no
"probability cage"). Mean and variance run over the keys the query may see (causal, padding);
with a single visible key the weight is 0. Works with a KV cache as softmax attention does.
Complexity: time O(n² d); memory O(n²).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...nn.context import MixerContext
from ...registry import MIXERS
from .softmax import MultiHeadAttentionBase


def normalized_weights(s: Tensor, mask: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Standardise scores s (.., n_q, n_k) over the allowed keys of each row; 0 elsewhere."""
    if mask is None:
        mask = torch.ones_like(s, dtype=torch.bool)
    mask = mask.expand_as(s)
    m = mask.to(s.dtype)
    cnt = m.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (s * m).sum(-1, keepdim=True) / cnt
    var = (((s - mean) * m) ** 2).sum(-1, keepdim=True) / cnt
    return (s - mean) * torch.rsqrt(var + eps) * m


@MIXERS.register(
    "nap", paper="Normalized Attention Without Probability Cage (Richter & Wattenhofer, 2020)",
    equation="§5: a_i = (s_i − μ(s_i))/σ(s_i) over the visible keys, s_ij = q_i·k_j/√d; "
             "y_i = Σ_j a_ij v_j (normalisation replaces the softmax)",
    complexity=("O(n² d)", "O(n²)"),
    test="tests/papers/test_attention_nap.py::test_nap_equals_naive_loop",
    tiny={"heads": 2})
class NormalizedAttention(MultiHeadAttentionBase):
    """Attention with per-query standardised scores instead of softmax weights."""

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 cross: bool = False, eps: float = 1e-5):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, "eager", cross)
        self.eps = eps

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        s = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])  # (B,h,nq,nk)
        if bias is not None:
            s = s + bias.float()
        w = normalized_weights(s, mask, self.eps).to(v.dtype)
        if self.training and self.dropout > 0:
            w = F.dropout(w, self.dropout)
        return torch.matmul(w, v)
