"""H-Transformer-1D: hierarchical (H-matrix) attention.

Paper: H-Transformer-1D: Fast One-Dimensional Hierarchical Attention for Sequences (Zhu &
Soricut, 2021), §5-6: the attention matrix is split hierarchically. Blocks of N_r tokens on the
diagonal are computed exactly; at level l = 0, 1, …, the two halves of every parent block of
N_r·2^(l+1) tokens interact at a resolution coarsened 2^l times — queries and keys averaged over
groups of 2^l tokens (restriction), values summed — and the result is interpolated back to the
tokens (eq. 27-33: Y = Σ_l P^(l) Ã^(l) V^(l), normalised by the same sums of the row weights).
Each key group stands for its tokens in the normaliser (weight = count · exp(q·k̄)), and one
stabiliser per row is shared by all levels, so the levels combine exactly like one softmax over
{diagonal keys} ∪ {coarse keys}. With N_r ≥ n there is a single exact block (softmax).
Causal form: a block only attends to its earlier sibling; queries are not averaged (an averaged
query would mix in later tokens), so every token keeps its own query against the coarse keys.
Blocks start at the first real token (left padding is packed away); decode steps use the dense
form of the same causal pattern over the KV cache.
Complexity: time O(n N_r d) bidirectional, O(n N_r log(n/N_r) d) causal; memory O(n N_r).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import left_pack, take, unpack
from ...registry import MIXERS
from ..base import Supports
from .long_short import joint_softmax
from .positional import PositionalAttention


def coarsen(t: Tensor, valid: Tensor, f: int):
    """Mean over the real tokens of groups of f: t (B, h, N, e) → (B, h, N/f, e), counts (B, N/f)."""
    B, h, N, e = t.shape
    vm = valid[:, None, :, None].to(t.dtype)
    s = (t * vm).view(B, h, N // f, f, e).sum(3)
    c = valid.view(B, N // f, f).sum(-1)
    return s / c.clamp(min=1)[:, None, :, None].to(t.dtype), c


def block_term(s: Tensor, allowed: Tensor, v: Tensor):
    """Row max M, Σ exp(s − M) v and Σ exp(s − M) of masked block scores s (.., rows, keys)."""
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1)
    ms = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(s - ms.unsqueeze(-1))
    return m, w @ v, w.sum(-1)


@MIXERS.register(
    "h_transformer", paper="H-Transformer-1D: Fast One-Dimensional Hierarchical Attention for "
                           "Sequences (Zhu & Soricut, 2021)",
    equation="§5-6 eq. 27-33: Y = Σ_l P^(l) (Ã^(l) V^(l)) / Σ_l P^(l) (Ã^(l) 1): exact diagonal "
             "blocks of N_r, sibling blocks at level l on 2^l-coarsened Q, K (mean) and V (sum)",
    complexity=("O(n N_r d)", "O(n N_r)"),
    test="tests/papers/test_attention_h_transformer.py::test_error_vs_dense_shrinks_with_finer_levels",
    tiny={"heads": 2, "block": 2})
class HTransformerAttention(PositionalAttention):
    """Hierarchical attention: exact near-diagonal blocks, coarser interactions further away."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, block: int = 16):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        if block < 1:
            raise ConfigError("mixer.block", block, why="block size N_r must be >= 1")
        self.block = block

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        B, h, n, e = q.shape
        Nr, causal, scale = self.block, ctx.causal, 1 / math.sqrt(e)
        order = left_pack(valid)
        q, k, v = (take(t, order, 2).float() for t in (q, k, v))
        valid = take(valid, order, 1)
        nb = 1 << max(0, math.ceil(math.log2(math.ceil(n / Nr))))          # blocks: power of 2
        N, L = nb * Nr, nb.bit_length() - 1
        q, k, v = (F.pad(t, (0, 0, 0, N - n)) for t in (q, k, v))
        valid = F.pad(valid, (0, N - n), value=False)
        terms = []                                           # (M, Y, A) at token resolution
        blk = lambda t, r: t.reshape(B, h, -1, r, e)
        s = blk(q, Nr) @ blk(k, Nr).transpose(-1, -2) * scale             # diagonal blocks
        ok = valid.view(B, 1, nb, 1, Nr)
        if causal:
            ok = ok & torch.ones(Nr, Nr, dtype=torch.bool, device=q.device).tril()
        m, y, a = block_term(s, ok, blk(v, Nr))
        terms.append((m.reshape(B, h, N), y.reshape(B, h, N, e), a.reshape(B, h, N)))
        for l in range(L):
            f, nbl = 1 << l, nb >> l                          # group size, level blocks
            kc, cnt = coarsen(k, valid, f)
            vc, _ = coarsen(v, valid, f)
            sib = torch.arange(nbl, device=q.device) ^ 1      # the sibling of each level block
            kc, vc = blk(kc, Nr)[:, :, sib], blk(vc, Nr)[:, :, sib]
            cnt = cnt.view(B, nbl, Nr)[:, sib]
            ok = (cnt > 0)[:, None, :, None, :]
            if causal:                                        # fine queries, earlier sibling only
                qq = blk(q, Nr * f)
                ok = ok & (torch.arange(nbl, device=q.device) % 2 == 1)[:, None, None]
            else:
                qq = blk(coarsen(q, valid, f)[0], Nr)
            s = qq @ kc.transpose(-1, -2) * scale + cnt.clamp(min=1).log()[:, None, :, None, :]
            m, y, a = block_term(s, ok, vc)
            m, y, a = m.reshape(B, h, -1), y.reshape(B, h, -1, e), a.reshape(B, h, -1)
            if not causal:                                    # interpolate back to tokens
                m, y, a = (t.repeat_interleave(f, dim=2) for t in (m, y, a))
            terms.append((m, y, a))
        M = torch.stack([t[0] for t in terms]).amax(0)
        M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
        Y, A = 0.0, 0.0
        for m, y, a in terms:
            w = torch.exp(m - M)                                           # 0 where m = −inf
            Y, A = Y + w.unsqueeze(-1) * y, A + w * a
        out = torch.where(A.unsqueeze(-1) > 0, Y / A.clamp(min=1e-30).unsqueeze(-1), 0.0)
        return unpack(out[:, :, :n], order, 2)

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        if not ctx.causal:
            raise NotImplementedError("h_transformer's dense form is the causal decode path")
        Nr, e = self.block, q.shape[-1]
        scale = 1 / math.sqrt(e)
        q, k, v = q.float(), k.float(), v.float()
        ok = (k_pos[:, None, :] // Nr == q_pos[:, :, None] // Nr) & \
            (k_pos[:, None, :] <= q_pos[:, :, None]) & valid[:, None, :]
        parts = [(q @ k.transpose(-1, -2) * scale).masked_fill(~ok[:, None], float("-inf"))]
        vals = [("bhqk,bhke->bhqe", v)]
        l = 0
        while Nr << l <= int(q_pos.max()):                                 # levels in reach
            f = 1 << l
            g = k_pos // f                                                  # key groups
            G = int(g.max()) + 1
            w = valid.to(q.dtype)[:, None, :, None]
            idx = g[:, None, :, None].expand_as(k)
            cnt = torch.zeros(k.shape[0], G, device=q.device).scatter_add(1, g, valid.float())
            mean = lambda t: torch.zeros(*t.shape[:2], G, e, device=q.device).scatter_add(
                2, idx, t * w) / cnt.clamp(min=1)[:, None, :, None]
            kc, vc = mean(k), mean(v)                                       # (B, h, G, e)
            qb = q_pos // (Nr * f)                                          # query level block
            gb = torch.arange(G, device=q.device) // Nr                     # group level block
            allow = (qb % 2 == 1)[:, :, None] & (gb == qb[:, :, None] - 1) & (cnt > 0)[:, None, :]
            s = q @ kc.transpose(-1, -2) * scale + cnt.clamp(min=1).log()[:, None, None, :]
            parts.append(s.masked_fill(~allow[:, None], float("-inf")))
            vals.append(("bhqg,bhge->bhqe", vc))
            l += 1
        return joint_softmax(parts, vals)
