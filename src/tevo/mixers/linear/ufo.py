"""UFO-ViT: softmax-free linear attention with cross-normalisation (XNorm).

Paper: UFO-ViT: High Performance Linear Vision Transformer without Softmax (Song, 2021), §3
eq. 4–6: the softmax is removed, KᵀV is computed first (linear in n), and both factors are
ℓ2-normalised with a learnable scale ("XNorm"):

    XNorm(a) = γ · a / ‖a‖₂
    Y = XNorm(Q) · XNorm(Kᵀ V)       (Q normalised per token over its channels; KᵀV per column
                                      over the key-channel axis that Q contracts with)

so every output entry is γ² × a cosine similarity between a query and a column of KᵀV (|y| ≤ γ²).
γ is learned per head. Bidirectional only (KᵀV pools the sequence; padded keys are zeroed).
Complexity: time O(n d_h d), memory O(n d + h d_h²).
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
    "ufo", paper="UFO-ViT: High Performance Linear Vision Transformer without Softmax (Song, "
                 "2021)",
    equation="eq. 4–6: Y = XNorm(Q) XNorm(KᵀV), XNorm(a) = γ a/‖a‖₂",
    complexity=("O(n d_h d)", "O(n d + h d_h²)"),
    test="tests/papers/test_linear_ufo.py::test_ufo_equals_cross_normalised_formula",
    tiny={"heads": 2})
class UFOAttention(Mixer):
    """Linear attention Q(KᵀV) with both factors cross-normalised (XNorm) instead of softmax."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)
        self.gamma = nn.Parameter(torch.ones(self.heads, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        q, k, v = project_qkv(self, x)
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            q, k, v = upcast(q), upcast(k), upcast(v)
            if mask is not None:
                m = key_mask(mask, k)
                k, v = k * m, v * m
            g = upcast(self.gamma)
            kv = k.transpose(-1, -2) @ v                                    # (B, h, e, e)
            xq = g * F.normalize(q, dim=-1, eps=self.eps)                   # per token
            xkv = g * F.normalize(kv, dim=-2, eps=self.eps)                 # per column
            y = xq @ xkv
        return self.o_proj(merge_heads(y.to(dtype))), None
