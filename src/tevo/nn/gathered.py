"""Attention over a per-query list of keys, and left-packing of padded sequences.

Sparse patterns (log-sparse steps, bands, LSH windows over a sorted sequence) are computed by
gathering, for every query, the W keys its pattern allows: scores are (B, h, n, W), never
(B, h, n, n), so memory grows as O(n·W) (plus the gathered (n, W, e) keys).

Block-structured mixers (chunks, H-matrix blocks) anchor their blocks at the first real token;
``left_pack`` moves the real tokens of each row to the front (stable), so that left padding does
not shift block boundaries, and ``unpack`` puts outputs back in place.
"""
from __future__ import annotations

import torch
from torch import Tensor


def gather_keys(t: Tensor, idx: Tensor) -> Tensor:
    """t (B, h, n_k, e), idx (B|1, h|1, n_q, W) integer indices into n_k → (B, h, n_q, W, e)."""
    B, h, n_k, e = t.shape
    idx = idx.expand(B, h, *idx.shape[2:])
    n_q, W = idx.shape[2], idx.shape[3]
    flat = idx.reshape(B, h, n_q * W, 1).expand(B, h, n_q * W, e)
    return torch.gather(t, 2, flat).view(B, h, n_q, W, e)          # (B, h, n_q, W, e)


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor,
                       scale: float, bias: Tensor | None = None, return_lse: bool = False):
    """softmax over the W gathered keys of each query.

    q (B, h, n_q, e); k, v (B, h, n_k, e); idx (B|1, h|1, n_q, W) key indices (any value where
    ``valid`` is False); valid (B|1, h|1, n_q, W) bool; bias: optional additive (.., n_q, W).
    Rows with no valid key return zeros (they belong to padding). Returns out (B, h, n_q, e)
    and, with ``return_lse``, the log-sum-exp of each row (B, h, n_q) (−inf for empty rows).
    """
    idx = idx.clamp(0, k.shape[2] - 1)
    kg, vg = gather_keys(k, idx), gather_keys(v, idx)                # (B, h, n_q, W, e)
    s = torch.einsum("bhqe,bhqwe->bhqw", q.float(), kg.float()) * scale
    if bias is not None:
        s = s + bias.float()
    s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, -1)                                     # (B, h, n_q)
    w = torch.exp(s - lse.unsqueeze(-1).clamp(min=-1e30)).nan_to_num(0.0)
    out = torch.einsum("bhqw,bhqwe->bhqe", w.to(vg.dtype), vg)
    return (out, lse) if return_lse else out


def band_indices(n: int, left: int, right: int, device=None) -> tuple[Tensor, Tensor]:
    """Key indices i-left .. i+right for each query i of a length-n sequence: (n, W) indices
    clamped into range and (n, W) validity (False where i+offset falls outside 0..n-1)."""
    off = torch.arange(-left, right + 1, device=device)
    idx = torch.arange(n, device=device).unsqueeze(1) + off          # (n, W)
    valid = (idx >= 0) & (idx < n)
    return idx.clamp(0, max(n - 1, 0)), valid


def left_pack(mask: Tensor | None) -> Tensor | None:
    """(B, n) bool (True = real) → (B, n) permutation putting real tokens first, in order."""
    if mask is None or bool(mask.all()):
        return None
    return torch.argsort((~mask.bool()).to(torch.int8), dim=1, stable=True)


def take(x: Tensor, order: Tensor | None, dim: int = 1) -> Tensor:
    """Reorder x along ``dim`` (the sequence axis) by order (B, n); x's batch axis is 0."""
    if order is None:
        return x
    shape = [1] * x.dim()
    shape[0], shape[dim] = order.shape
    idx = order.view(shape).expand(*x.shape[:dim], order.shape[1], *x.shape[dim + 1:])
    return torch.gather(x, dim, idx)


def unpack(x: Tensor, order: Tensor | None, dim: int = 1) -> Tensor:
    """Inverse of ``take``: put packed rows back at their original positions."""
    if order is None:
        return x
    return take(x, torch.argsort(order, dim=1), dim)
