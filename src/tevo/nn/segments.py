"""Softmax pooling of keys and values inside segments (blocks of positions), by scatter.

Used by mixers that summarise a region of the sequence into a few keys: Long-Short's
segment-wise dynamic projection (r pooled keys per segment), Combiner's region summaries.
Segments are given per token (B, n) — e.g. position // length — so left padding, decoding and
full passes see the same segments, and nothing of size n × n is built.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segment_softmax_pool(logits: Tensor, k: Tensor, v: Tensor, seg: Tensor, valid: Tensor,
                         n_seg: int):
    """Pool keys and values with a softmax over the tokens of each segment.

    logits (B, h, n, r): pooling logit of each token for each of r slots; k, v (B, h, n, e);
    seg (B, n) segment ids in [0, n_seg); valid (B, n) real tokens.
    Returns k̄, v̄ (B, h, n_seg, r, e): Σ_{j∈s} softmax_{j∈s}(logits_j) k_j, and the number of
    real tokens of each segment (B, 1, n_seg, 1) (0 = empty segment, to be masked)."""
    B, h, n, r = logits.shape
    e = k.shape[-1]
    lg = logits.float().masked_fill(~valid[:, None, :, None], float("-inf"))
    idx = seg[:, None, :, None].expand(B, h, n, r)
    mx = torch.full((B, h, n_seg, r), float("-inf"), device=lg.device)
    mx = mx.scatter_reduce(2, idx, lg.detach(), "amax", include_self=True).clamp(min=-1e30)
    w = torch.exp(lg - torch.gather(mx, 2, idx))                         # (B, h, n, r), 0 if pad
    den = torch.zeros(B, h, n_seg, r, device=lg.device).scatter_add(2, idx, w)
    idx5 = idx.unsqueeze(-1).expand(B, h, n, r, e)

    def pool(t):
        num = torch.zeros(B, h, n_seg, r, e, device=lg.device)
        num = num.scatter_add(2, idx5, w.unsqueeze(-1) * t.float().unsqueeze(3))
        return num / den.clamp(min=1e-30).unsqueeze(-1)
    count = torch.zeros(B, n_seg, device=lg.device).scatter_add(1, seg, valid.float())
    return pool(k), pool(v), count[:, None, :, None]
