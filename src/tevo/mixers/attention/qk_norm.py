"""Query-key normalisation: attention on cosine similarities with a learned temperature.

Paper: Query-Key Normalization for Transformers (Henry, Dachapally, Pawar & Chen, 2020), §3:
    Attention(Q, K, V) = softmax(g · Q̂ K̂ᵀ) V,   q̂ = q/‖q‖₂, k̂ = k/‖k‖₂ per head and position
where the learned scalar g replaces 1/√d_k and starts at g₀ = log₂(L² − L), L the (97.5th
percentile) training sequence length — here ``max_len`` unless ``g_init`` is given. Scores are
bounded in [−g, g], so the softmax cannot saturate however large q and k grow.
RoPE preserves norms, so normalising after the rotation is the same as before it.
Complexity: as softmax attention, O(n² d) time, O(n²) eager / O(n) fused memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...nn.attention import ATTENTION_FUNCTIONS
from ...nn.context import MixerContext
from ...registry import MIXERS
from .softmax import MultiHeadAttentionBase


@MIXERS.register(
    "qk_norm", paper="Query-Key Normalization for Transformers (Henry et al., 2020)",
    equation="§3: softmax(g · (Q/‖Q‖)(K/‖K‖)ᵀ) V, g learned, g₀ = log₂(L² − L)",
    complexity=("O(n² d)", "O(n²) eager, O(n) fused"),
    test="tests/papers/test_norms_qk_norm.py::test_qk_norm_attention_formula_and_scale_invariance",
    tiny={"heads": 2})
class QKNormAttention(MultiHeadAttentionBase):
    """Multi-head attention on l2-normalised queries and keys with a learned scale g."""

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 impl: str = "sdpa", cross: bool = False, max_len: int = 256,
                 g_init: float | None = None, eps: float = 1e-6):
        super().__init__(d_model, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
                         dropout=dropout, impl=impl, cross=cross)
        if g_init is None:
            if max_len < 2:
                raise ConfigError("mixer.max_len", max_len, why="g₀ = log₂(L² − L) needs L >= 2")
            g_init = math.log2(max_len ** 2 - max_len)
        self.g = nn.Parameter(torch.tensor(float(g_init)))
        self.eps = eps

    def attend(self, q, k, v, mask, bias, ctx: MixerContext):
        q = F.normalize(q, dim=-1, eps=self.eps) * self.g.to(q.dtype)    # g·q̂
        k = F.normalize(k, dim=-1, eps=self.eps)                         # k̂
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        p = self.dropout if self.training else 0.0
        return ATTENTION_FUNCTIONS[self.impl](q, k, v, mask=mask, bias=bias, scale=1.0, dropout=p)
