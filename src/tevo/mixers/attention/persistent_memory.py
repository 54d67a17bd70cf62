"""All-attention layer: self-attention whose keys and values are augmented with learned
persistent vectors, which take the place of the feed-forward sublayer.

Paper: Augmenting Self-attention with Persistent Memory (Sukhbaatar, Grave, Lample, Jégou &
Joulin, 2019), §4, eqs. 6–8:
    K_t = [k_1, …, k_t, m^k_1, …, m^k_N],   V_t = [v_1, …, v_t, m^v_1, …, m^v_N]
    y_t = Σ_{j ≤ t} a_tj v_j + Σ_{i ≤ N} a_ti m^v_i,   a = softmax over the t + N scores
A softmax attention over the N persistent pairs alone is an FFN with a softmax non-linearity
(keys = rows of W_1, values = columns of W_2), so an "all-attention" block is the layout "a"
with no FFN. Each head has its own persistent vectors (per key/value head under GQA). As in the
reference code they are stored as N(0, 1/e) keys and N(0, 1/N) values and used multiplied by √e
and √N (unit-scale entries, learning-rate-friendly parameters). Persistent slots carry no
position: RoPE/ALiBi act on the token keys only (zero bias on the persistent columns), and they
are visible to every query, past any causal or padding mask. The KV cache holds token keys only.
Complexity: time O(n (n + N) d), memory O(n (n + N)) eager; decode O((n + N) d) per token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.context import MixerContext
from ...registry import MIXERS, Option
from ..base import Supports
from .softmax import MultiHeadAttentionBase


@MIXERS.register(
    "persistent_memory",
    paper="Augmenting Self-attention with Persistent Memory (Sukhbaatar et al., 2019)",
    equation="§4 eqs. 6–8: y_t = Σ_{j≤t} a_tj v_j + Σ_i a_ti m^v_i, softmax over "
             "[q_t k_j ; q_t m^k_i]; the persistent vectors replace the FFN (layout 'a')",
    complexity=("O(n (n + N) d)", "O(n (n + N))"),
    test="tests/papers/test_ffn_persistent_memory.py::test_all_attention_model_matches_reference",
    tiny={"heads": 2, "n_persistent": 6})
class PersistentMemoryAttention(MultiHeadAttentionBase):
    """Multi-head self-attention over [token keys ; N learned persistent key/value pairs]."""

    options = {"n_persistent": Option(ge=1)}

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, n_persistent: int = 1024,
                 kv_heads: int | None = None, head_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, impl: str = "sdpa"):
        super().__init__(d_model, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
                         dropout=dropout, impl=impl)
        self.n_persistent = n_persistent
        self.mem_k = nn.Parameter(torch.empty(self.kv_heads, n_persistent, self.head_dim))
        self.mem_v = nn.Parameter(torch.empty(self.kv_heads, n_persistent, self.head_dim))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.mem_k, 0.0, self.head_dim ** -0.5)
        nn.init.normal_(self.mem_v, 0.0, self.n_persistent ** -0.5)

    def persistent(self, dtype) -> tuple[Tensor, Tensor]:
        """The (h_kv, N, e) persistent keys and values as used in the scores."""
        return ((self.mem_k * math.sqrt(self.head_dim)).to(dtype),
                (self.mem_v * math.sqrt(self.n_persistent)).to(dtype))

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        B, N = q.shape[0], self.n_persistent
        mk, mv = self.persistent(k.dtype)
        k = torch.cat([k, mk.unsqueeze(0).expand(B, -1, -1, -1)], 2)      # (B, h_kv, n_k+N, e)
        v = torch.cat([v, mv.unsqueeze(0).expand(B, -1, -1, -1)], 2)
        if mask is not None:                                                # always visible
            ones = torch.ones(*mask.shape[:-1], N, dtype=torch.bool, device=mask.device)
            mask = torch.cat([mask, ones], -1)
        if bias is not None:                                                # no position
            bias = F.pad(bias, (0, N))
        return super().attend(q, k, v, mask, bias, ctx)
