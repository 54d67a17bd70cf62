"""Slow, obviously correct references for the sparse-attention paper tests (not a test module).

``dense_pattern_attention`` runs a mixer's own projections through plain dense softmax attention
with an explicit boolean (B, h, n, n) mask built naively from positions, so a tiled mixer can be
compared with "dense attention with the equivalent mask". ``prefill_then_steps`` is the decode
check with left padding, optionally with a position encoding in the context.
"""
from __future__ import annotations

import math

import torch

from tevo.nn.context import MixerContext, positions_from_mask


def qkv(m, x):
    q = m._split(m.q_proj(x), m.heads)
    k = m.repeat_kv(m._split(m.k_proj(x), m.kv_heads))
    v = m.repeat_kv(m._split(m.v_proj(x), m.kv_heads))
    return q, k, v


def dense_pattern_attention(m, x, allowed, mask=None, positions=None, bias=None, scale=None):
    """allowed(i, j, h) → bool for absolute positions i (query) and j (key) of one sample; or a
    ready (B|1, h|1, n, n) bool tensor. Loops over every (b, h, i, j): slow and plain."""
    B, n, _ = x.shape
    q, k, v = qkv(m, x)
    h, e = q.shape[1], q.shape[-1]
    if positions is None:
        positions = positions_from_mask(mask, n).expand(B, n) if mask is not None else \
            torch.arange(n).expand(B, n)
    if callable(allowed):
        M = torch.zeros(B, h, n, n, dtype=torch.bool)
        for b in range(B):
            for hh in range(h):
                for i in range(n):
                    for j in range(n):
                        M[b, hh, i, j] = bool(allowed(int(positions[b, i]), int(positions[b, j]), hh))
    else:
        M = allowed.expand(B, h, n, n).clone()
    if mask is not None:
        M &= mask[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(e))
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~M, float("-inf"))
    w = torch.nan_to_num(s.softmax(-1))                 # empty rows (padding) → 0
    y = (w @ v).transpose(1, 2).reshape(B, n, h * e)
    return m.o_proj(y), M


def ctx(x, causal, mask=None, pos=None):
    B, n = x.shape[:2]
    p = positions_from_mask(mask, n) if mask is not None else torch.arange(n)[None]
    return MixerContext(causal=causal, key_padding_mask=mask, positions=p.expand(B, n), pos=pos)


def prefill_then_steps(m, x, mask, k_prefill, pos=None, chunk=1):
    """Prefill k tokens then decode the rest `chunk` at a time; returns (incremental, full)."""
    B, n, _ = x.shape
    full, _ = m(x, ctx(x, True, mask, pos))
    state = m.init_state(B)
    ys = []
    y, state = m(x[:, :k_prefill], ctx(x[:, :k_prefill], True, mask[:, :k_prefill], pos), state)
    ys.append(y)
    t = k_prefill
    while t < n:
        t2 = min(n, t + chunk)
        c = MixerContext(causal=True, key_padding_mask=mask[:, :t2],
                         positions=positions_from_mask(mask[:, :t2], t2 - t), pos=pos)
        y, state = m(x[:, t:t2], c, state)
        ys.append(y)
        t = t2
    return torch.cat(ys, 1), full, state


class ToyBias(torch.nn.Module):
    """A ``bias`` position encoding for tests: ALiBi-like distance term plus a term that reads
    q and k, so tiles must hand the right queries, keys and positions to the hook."""

    hooks = frozenset({"bias"})

    def __init__(self, heads: int):
        super().__init__()
        self.slopes = torch.nn.Parameter(torch.linspace(0.1, 0.9, heads))

    def embed(self, x, positions):
        return x

    def rotate(self, q, k, q_pos, k_pos):
        return q, k

    def bias(self, q, k, q_pos, k_pos):
        d = (q_pos[:, None, :, None] - k_pos[:, None, None, :]).abs().float()    # (B, 1, nq, nk)
        content = q.mean(-1, keepdim=True) * k.mean(-1).unsqueeze(-2)            # (B, h, nq, nk)
        return -self.slopes.view(1, -1, 1, 1) * d + 0.5 * content


class ToyRotary(torch.nn.Module):
    """A ``qk`` position encoding for tests: rotate pairs of channels by angle position·θ."""

    hooks = frozenset({"qk"})

    def embed(self, x, positions):
        return x

    def _rot(self, t, p):
        e = t.shape[-1]
        theta = 1.0 / (10.0 ** (torch.arange(0, e, 2).float() / e))
        ang = p[:, None, :, None].float() * theta                                # (B, 1, n, e/2)
        c, s = ang.cos(), ang.sin()
        t1, t2 = t[..., 0::2], t[..., 1::2]
        return torch.stack([t1 * c - t2 * s, t1 * s + t2 * c], -1).flatten(-2)

    def rotate(self, q, k, q_pos, k_pos):
        return self._rot(q, q_pos), self._rot(k, k_pos)


class MaxTensorSize(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor (in elements) any op produces while active."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def largest_intermediate(m, x, causal):
    with torch.no_grad(), MaxTensorSize() as rec:
        m(x, ctx(x, causal))
    return rec.max_numel
