"""Talking-heads attention.

Paper: Talking-Heads Attention (Shazeer et al., 2020), §4, Algorithm "TalkingHeadsAttention":
learned linear maps across the heads dimension, just before and just after the softmax:
    J = Q K^T / √e                    (B, h_k, n, m)  one logit map per key head
    L = einsum(J, P_l)                (B, h,   n, m)  P_l: (h_k, h)  mixes logits across heads
    W = softmax(L + mask)             over keys
    U = einsum(W, P_w)                (B, h_v, n, m)  P_w: (h, h_v)  mixes weights across heads
    O = U V                           per value head, then the output projection.
Here h_k = h_v = ``heads`` (the projections' heads) and h = ``mix_heads`` (default ``heads``).
P_l and P_w start as identities, so a fresh layer is multi-head attention; a ``bias`` position
hook is added to J (per key head, before the logits are mixed).
Complexity: time O(n² d + n² h²), memory O(n² h) (the mixing needs every score map: no fused
kernel); a KV cache as softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.masks import fix_empty_rows
from ...registry import MIXERS
from .softmax import MultiHeadAttentionBase


@MIXERS.register(
    "talking_heads", paper="Talking-Heads Attention (Shazeer et al., 2020)",
    equation="§4: W = softmax(einsum(QK^T/√e, P_l)); O = einsum(W, P_w) V",
    complexity=("O(n² d + n² h²)", "O(n² h)"),
    test="tests/papers/test_attention_talking_heads.py::test_identity_mixing_equals_softmax",
    tiny={"heads": 2})
class TalkingHeadsAttention(MultiHeadAttentionBase):
    """Multi-head attention whose score maps are linearly mixed across heads before and after
    the softmax."""

    def __init__(self, d_model: int, heads: int = 4, mix_heads: int | None = None,
                 kv_heads: int | None = None, head_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, cross: bool = False, scale: float | None = None):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, "eager", cross, scale)
        hm = heads if mix_heads is None else int(mix_heads)
        if hm < 1:
            raise ConfigError("mixer.mix_heads", mix_heads, why="mix_heads must be >= 1")
        self.mix_heads = hm
        self.pre_mix = nn.Parameter(torch.eye(heads, hm))         # P_l (h_k, h)
        self.post_mix = nn.Parameter(torch.eye(hm, heads))        # P_w (h, h_v)

    def init_weights(self):
        with torch.no_grad():
            self.pre_mix.copy_(torch.eye(*self.pre_mix.shape))
            self.post_mix.copy_(torch.eye(*self.post_mix.shape))

    def attend(self, q, k, v, mask, bias, ctx) -> Tensor:
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        J = torch.matmul(q, k.transpose(-1, -2)).float() * scale          # (B, h_k, n, m)
        if bias is not None:
            J = J + bias.float()
        L = torch.einsum("bkqm,kh->bhqm", J, self.pre_mix.float())        # (B, h, n, m)
        if mask is not None:
            L = L.masked_fill(~fix_empty_rows(mask), float("-inf"))
        W = L.softmax(-1)
        U = torch.einsum("bhqm,hv->bvqm", W, self.post_mix.float())       # (B, h_v, n, m)
        if self.training and self.dropout > 0:
            U = F.dropout(U, self.dropout)
        return torch.matmul(U.to(v.dtype), v)                             # (B, h_v, n, e)
