"""Scaled dot-product attention kernels: a fused path and the eager reference.

Both take q (B, h, n_q, e), k, v (B, h, n_k, e), a boolean mask broadcastable to
(B, h, n_q, n_k) (True = attend) and an optional float bias of the same shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import fix_empty_rows


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                    bias: Tensor | None = None, scale: float | None = None,
                    dropout: float = 0.0, return_weights: bool = False):
    """softmax(q k^T * scale + bias, masked) v — the readable reference (fp32 softmax)."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, h, n_q, n_k)
    if bias is not None:
        scores = scores + bias.float()
    if mask is not None:
        scores = scores.masked_fill(~fix_empty_rows(mask), float("-inf"))
    w = scores.softmax(-1).to(v.dtype)
    if dropout > 0:
        w = F.dropout(w, dropout)
    out = torch.matmul(w, v)
    return (out, w) if return_weights else out


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                   bias: Tensor | None = None, scale: float | None = None,
                   dropout: float = 0.0, is_causal: bool = False) -> Tensor:
    """torch's fused scaled_dot_product_attention (flash / memory-efficient kernels).
    ``is_causal`` (no mask, no bias, n_q == n_k) lets torch pick its flash kernel and never
    builds the n × n mask."""
    if is_causal:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale,
                                              is_causal=True)
    attn = None
    if mask is not None:
        mask = fix_empty_rows(mask)
    if bias is not None:
        attn = bias.to(q.dtype)
        if mask is not None:
            attn = attn.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        attn = mask
    if attn is not None and attn.dim() == 4 and attn.shape[1] == 1 and q.shape[1] > 1:
        attn = attn.expand(-1, q.shape[1], -1, -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn, dropout_p=dropout,
                                          scale=scale)


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}
