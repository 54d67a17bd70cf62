"""Cross-covariance attention (XCA): attention between channels, not tokens.

Paper: XCiT: Cross-Covariance Image Transformers (El-Nouby et al., NeurIPS 2021), §3.1 eq. 2–3
and the official ``XCA`` module:

    XC-Attention(Q, K, V) = V · A_XC(K, Q),   A_XC(K, Q) = softmax(K̂ᵀ Q̂ / τ)
    (code: attn = softmax(τ · Q̂ᵀK̂) ∈ R^{d_h × d_h},  Y = V attnᵀ)

Q̂, K̂ are ℓ2-normalised along the *token* axis (each channel a unit vector over the sequence),
τ is a learned temperature per head. The d_h × d_h map does not depend on n: time O(n d_h d),
memory O(n d + h d_h²) — linear in n. Bidirectional only (the covariance pools all tokens);
padded tokens are zeroed before the normalisation, so they change nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, key_mask, merge_heads, project_qkv, qkvo


@MIXERS.register(
    "xca", paper="XCiT: Cross-Covariance Image Transformers (El-Nouby et al., NeurIPS 2021)",
    equation="eq. 3: XCA(Q,K,V) = V softmax(K̂ᵀQ̂/τ), Q̂, K̂ ℓ2-normalised over tokens",
    complexity=("O(n d_h d)", "O(n d + h d_h²)"),
    test="tests/papers/test_linear_xca.py::test_xca_equals_formula_and_cost_is_linear",
    tiny={"heads": 2})
class CrossCovarianceAttention(Mixer):
    """Channel-to-channel attention from the cross-covariance of token-normalised Q and K."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), flat_grid=True)   # XCiT: a patch grid

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)
        self.temperature = nn.Parameter(torch.ones(self.heads, 1, 1))

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        q, k, v = project_qkv(self, x)
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            q, k, v = upcast(q), upcast(k), upcast(v)
            if mask is not None:
                m = key_mask(mask, q)
                q, k, v = q * m, k * m, v * m
            q, k = F.normalize(q, dim=2), F.normalize(k, dim=2)       # over tokens
            attn = (q.transpose(-1, -2) @ k * upcast(self.temperature)).softmax(-1)  # (B,h,e,e)
            y = v @ attn.transpose(-1, -2)                             # (B, h, n, e)
        return self.o_proj(merge_heads(y.to(dtype))), None
