"""Tiled sparse attention: softmax attention restricted to a pattern, computed tile by tile so
that no n × n score matrix is ever built.

A pattern is described by *tiles*. Tile t holds up to Q queries (``q_idx[b, t]``, query indices,
-1 = empty slot) and the K keys those queries may need (``k_idx[b, t]``, key indices, -1 = none).
Inside a tile the exact pattern is a predicate on absolute positions, ``allow(q_pos, k_pos)``, so
the tiles only have to *cover* the pattern; the predicate decides. Scores are (B, h, T, Q, K):
for a band of width w tiled by blocks of w queries that is O(n·w) memory, not O(n²).

Each call returns a *partial* softmax (unnormalised output, row max, row sum), as in
FlashAttention's online softmax; partials over disjoint key groups (a local band and a set of
global/summary keys, say) merge exactly into one softmax over their union (``merge_partials``).
Rows with no allowed key give a zero output (never NaN, never a leak through masked keys).

Index-table builders:
- ``band_tables``: blocks of Q consecutive queries, keys from ``back`` before to ``fwd`` after the
  block (sliding windows, blocked local attention, neighbourhoods); ``shift`` aligns blocks to
  absolute positions per sample (blocks that must start at positions ≡ 0 mod Q under padding).
- ``strided_tables``: queries and keys grouped by index residue mod s (strided patterns).
Tables assume the real tokens of a sample are contiguous (left or right padding, a cache
followed by new tokens), so that a position difference equals an index difference;
``check_contiguous`` verifies it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

MASKED = -1e30      # finite "minus infinity": fully masked rows stay finite (and get weight 0)


@dataclass
class Partial:
    """Softmax over one key group, not yet normalised (per query row).

    o: (B, h, n, e) Σ_j exp(s_ij − m_i) v_j;  m: (B, h, n) row max (MASKED if nothing allowed);
    l: (B, h, n) Σ_j exp(s_ij − m_i) over allowed j (0 if nothing allowed)."""

    o: Tensor
    m: Tensor
    l: Tensor


def gather_tiles(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, h, m, e), idx (B|1, T, K) with -1 = empty → (B, h, T, K, e) (empty slots hold x[0])."""
    B, h, m, e = x.shape
    T, K = idx.shape[-2:]
    i = idx.clamp(min=0).reshape(idx.shape[0], 1, T * K, 1).expand(B, h, T * K, e)
    return x.gather(2, i).view(B, h, T, K, e)


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, m), idx (B|1, T, K) → (B, T, K)."""
    B = x.shape[0]
    T, K = idx.shape[-2:]
    i = idx.clamp(min=0).reshape(idx.shape[0], T * K).expand(B, T * K)
    return x.gather(1, i).view(B, T, K)


def tile_attention(q: Tensor, k: Tensor, v: Tensor, q_idx: Tensor, k_idx: Tensor,
                   q_pos: Tensor, k_pos: Tensor, k_valid: Tensor | None,
                   allow: Callable[[Tensor, Tensor], Tensor] | None = None,
                   bias: Callable | None = None, scale: float | None = None,
                   dropout: float = 0.0) -> Partial:
    """Partial softmax attention of q (B, h, n, e) over k, v (B, h, m, e) restricted to tiles.

    q_idx (B|1, T, Q), k_idx (B|1, T, K): tile tables (-1 = empty); a query index appears in at
    most one tile. q_pos (B, n), k_pos (B, m): absolute positions; k_valid (B, m): real keys.
    allow(qp, kp): qp (B, 1, T, Q, 1), kp (B, 1, T, 1, K) → bool broadcastable to (B, h, T, Q, K).
    bias(qt, kt, qp, kp): tiles qt (B, h, T, Q, e), kt (B, h, T, K, e), qp (B, T, Q),
    kp (B, T, K) → additive score term broadcastable to (B, h, T, Q, K), or None.
    Time O(T·Q·K·e), memory O(T·Q·K) for the scores: O(n·w) for a band of width w.
    """
    B, h, n, e = q.shape
    T, Q = q_idx.shape[-2:]
    K = k_idx.shape[-1]
    scale = 1.0 / math.sqrt(e) if scale is None else scale
    qt = gather_tiles(q, q_idx)                                   # (B, h, T, Q, e)
    kt, vt = gather_tiles(k, k_idx), gather_tiles(v, k_idx)       # (B, h, T, K, e)
    qp, kp = gather_rows(q_pos, q_idx), gather_rows(k_pos, k_idx)  # (B, T, Q), (B, T, K)
    ok = (k_idx >= 0).unsqueeze(-2).unsqueeze(1)                  # (B|1, 1, T, 1, K)
    if k_valid is not None:
        ok = ok & gather_rows(k_valid, k_idx).unsqueeze(-2).unsqueeze(1)
    if allow is not None:
        ok = ok & allow(qp[:, None, :, :, None], kp[:, None, :, None, :])
    s = torch.matmul(qt, kt.transpose(-1, -2)).float() * scale   # (B, h, T, Q, K)
    if bias is not None:
        b = bias(qt, kt, qp, kp)
        if b is not None:
            s = s + b.float()
    s = s.masked_fill(~ok, MASKED)
    m = s.amax(-1)                                                # (B, h, T, Q)
    p = torch.exp(s - m.unsqueeze(-1)).masked_fill(~ok, 0.0)      # exactly 0 off-pattern
    l = p.sum(-1)
    if dropout > 0:
        p = F.dropout(p, dropout)   # dropping unnormalised weights == dropping normalised ones
    o = torch.matmul(p.to(vt.dtype), vt)                          # (B, h, T, Q, e)
    return _scatter_queries(o, m, l, q_idx, n)


def _scatter_queries(o: Tensor, m: Tensor, l: Tensor, q_idx: Tensor, n: int) -> Partial:
    """Tile slots back to query rows; queries in no tile get an empty row."""
    B, h, T, Q, e = o.shape
    dst = q_idx.reshape(q_idx.shape[0], 1, T * Q)
    dst = torch.where(dst >= 0, dst, n).expand(B, h, T * Q)       # empty slots → dummy row n
    o_out = o.new_zeros(B, h, n + 1, e).scatter(2, dst.unsqueeze(-1).expand(B, h, T * Q, e),
                                                o.reshape(B, h, T * Q, e))
    m_out = m.new_full((B, h, n + 1), MASKED).scatter(2, dst, m.reshape(B, h, T * Q))
    l_out = l.new_zeros(B, h, n + 1).scatter(2, dst, l.reshape(B, h, T * Q))
    return Partial(o_out[:, :, :n], m_out[:, :, :n], l_out[:, :, :n])


def merge_partials(parts: list[Partial], dtype=None) -> Tensor:
    """One softmax over the union of disjoint key groups: (B, h, n, e)."""
    M = parts[0].m
    for p in parts[1:]:
        M = torch.maximum(M, p.m)
    num, den = 0.0, 0.0
    for p in parts:
        w = torch.exp(p.m - M)                                    # (B, h, n)
        num = num + w.unsqueeze(-1) * p.o.float()
        den = den + w * p.l
    out = num / den.clamp_min(1e-30).unsqueeze(-1)                # empty rows: 0 / tiny = 0
    return out.to(dtype or parts[0].o.dtype)


def cat_partials(parts: list[Partial]) -> Partial:
    """Concatenate partials computed on disjoint head slices (in head order)."""
    return Partial(torch.cat([p.o for p in parts], 1), torch.cat([p.m for p in parts], 1),
                   torch.cat([p.l for p in parts], 1))


def head_slice(p: Partial, heads: slice) -> Partial:
    return Partial(p.o[:, heads], p.m[:, heads], p.l[:, heads])


# -- index tables ---------------------------------------------------------------------------
def band_tables(n: int, m: int, key_offset: int, block: int, back: int, fwd: int,
                shift: Tensor | None = None, device=None) -> tuple[Tensor, Tensor]:
    """Blocks of ``block`` queries; the keys of a block run from ``back`` before its first query
    to ``fwd`` after its last (query i is key key_offset + i).

    shift (B,) in [0, block): sample b's blocks start at query indices ≡ −shift_b (mod block), so
    a caller can align blocks to absolute positions. Returns q_idx (B|1, T, Q), k_idx (B|1, T, K)
    with K = block + back + fwd.
    """
    Q = max(1, block)
    T = -(-n // Q) + (1 if shift is not None else 0)
    s = torch.zeros(1, dtype=torch.long, device=device) if shift is None else shift.long()
    slots = torch.arange(T * Q, device=device).view(1, T, Q)
    q_idx = slots - s.view(-1, 1, 1)                              # (B|1, T, Q)
    q_idx = torch.where((q_idx >= 0) & (q_idx < n), q_idx, -1)
    K = Q + back + fwd
    start = key_offset + torch.arange(T, device=device) * Q - back          # (T,)
    k_idx = start.view(1, T, 1) - s.view(-1, 1, 1) + torch.arange(K, device=device)
    k_idx = torch.where((k_idx >= 0) & (k_idx < m), k_idx, -1)    # (B|1, T, K)
    return q_idx, k_idx


def strided_tables(n: int, m: int, key_offset: int, stride: int,
                   device=None) -> tuple[Tensor, Tensor]:
    """Tile r (r < min(stride, n)) holds the queries i ≡ r (mod stride) and the keys j with
    j ≡ key_offset + r (mod stride): every pair whose index distance is a multiple of stride."""
    s = stride
    T = min(s, n)
    Qn, Kn = -(-n // s), -(-m // s) + 1
    r = torch.arange(T, device=device).view(T, 1)
    q_idx = r + s * torch.arange(Qn, device=device)                          # (T, Q)
    q_idx = torch.where(q_idx < n, q_idx, -1)
    k0 = (key_offset + r) % s
    k_idx = k0 + s * torch.arange(Kn, device=device)                         # (T, K)
    k_idx = torch.where(k_idx < m, k_idx, -1)
    return q_idx.unsqueeze(0), k_idx.unsqueeze(0)


def all_queries_table(n: int, device=None) -> Tensor:
    """One tile with every query: (1, 1, n)."""
    return torch.arange(n, device=device).view(1, 1, n)


def index_offset(q_pos: Tensor, q_valid: Tensor | None, key_offset: int = 0) -> Tensor:
    """c (B,) with position = key index + c for the real tokens of each sample (query i is key
    key_offset + i). Read off the first real query; samples with none get 0."""
    B, n = q_pos.shape
    if q_valid is None:
        first = torch.zeros(B, dtype=torch.long, device=q_pos.device)
        has = torch.ones(B, dtype=torch.bool, device=q_pos.device)
    else:
        first = q_valid.long().argmax(-1)
        has = q_valid.any(-1)
    c = q_pos.gather(1, first.view(B, 1)).squeeze(1) - (key_offset + first)
    return torch.where(has, c, torch.zeros_like(c))


def check_contiguous(k_pos: Tensor, k_valid: Tensor | None, who: str) -> None:
    """Raise unless, in every sample, real keys have position = index + a constant (real tokens
    contiguous, as with left or right padding): the tile tables rely on it. One host sync."""
    B, m = k_pos.shape
    if m == 0:
        return
    d = k_pos - torch.arange(m, device=k_pos.device)
    if k_valid is None:
        k_valid = torch.ones_like(k_pos, dtype=torch.bool)
    big = torch.iinfo(d.dtype).max
    hi = torch.where(k_valid, d, -big).amax(-1)
    lo = torch.where(k_valid, d, big).amin(-1)
    if bool(((hi != lo) & k_valid.any(-1)).any()):
        raise InputError(f"{who}: real tokens must be contiguous (left or right padding only) "
                         f"with positions increasing by one")


def tile_position_bias(pos, qt: Tensor, kt: Tensor, qp: Tensor, kp: Tensor,
                       heads: slice | None = None) -> Tensor | None:
    """The model's ``bias`` position hook evaluated on tiles: each tile is handed to
    ``pos.bias`` as one small problem of a batch of B·T, so no n × n bias is built.
    qt (B, h, T, Q, e), kt (B, h, T, K, e), qp (B, T, Q), kp (B, T, K) → (B|1, h', T, Q, K)."""
    B, h, T, Q, e = qt.shape
    K = kt.shape[3]
    q2 = qt.transpose(1, 2).reshape(B * T, h, Q, e)               # (B·T, h, Q, e)
    k2 = kt.transpose(1, 2).reshape(B * T, h, K, e)
    b = pos.bias(q2, k2, qp.reshape(B * T, Q), kp.reshape(B * T, K))
    if b is None:
        return None
    if b.shape[0] == 1:
        b = b.expand(B * T, *b.shape[1:])
    b = b.reshape(B, T, b.shape[1], Q, K).transpose(1, 2)         # (B, h, T, Q, K)
    return b if heads is None else b[:, heads]
