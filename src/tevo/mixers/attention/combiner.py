"""Combiner: full attention with sparse cost through a structured factorisation.

Paper: Combiner: Full Attention Transformer with Sparse Computation Cost (Ren et al., 2021), §3:
attention is a conditional expectation E_{p(j|i)}[v_j]; split the keys of query i into a
directly attended part Ω_i⁰ and regions Ω_i^r, and factorise within a region
    p(j|i) = p(Ω_i^r | i) · q(j | Ω_i^r)   (eq. 5),
with q(j|Ω) independent of i (a "local expectation" shared by every query). Then
    A(x_i) = Σ_{j∈Ω_i⁰} p(j|i) v_j + Σ_r p(Ω_i^r|i) Σ_{j∈Ω_i^r} q(j|Ω_i^r) v_j    (eq. 6)
reaches every position: directly, or in two hops through a region summary.
Here q(j|Ω) = softmax_{j∈Ω}(k_j·w/√d) (a learned per-head vector w, zero-initialised = mean
pooling), the region is summarised by k̄_Ω = Σ q(j|Ω) k_j and v̄_Ω = Σ q(j|Ω) v_j, and it is
scored as a whole as q_i·k̄_Ω/√d + log|Ω| (the log-size accounts for the |Ω| keys it stands for);
one softmax runs over the direct keys and the regions. The sequence is a grid of rows of length b:
- ``fixed``: Ω⁰ = own row (block), regions = the other rows (causal: earlier rows);
- ``axial``: Ω⁰ = own row, regions = the b columns restricted to the other rows (causal:
  earlier rows) — Combiner-Axial.
Rows start at the first real token; decode steps use the dense form over the KV cache.
Complexity (b = √n): time O(n√n d); memory O(n√n).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import left_pack, take, unpack
from ...registry import MIXERS
from ..base import Supports
from .long_short import joint_softmax
from .positional import PositionalAttention

PARTITIONS = ("fixed", "axial")


def masked_softmax(s: Tensor, allowed: Tensor, dim: int = -1) -> Tensor:
    """softmax over allowed entries; all-masked slices give zeros."""
    s = s.masked_fill(~allowed, float("-inf"))
    ok = allowed.any(dim, keepdim=True)
    return torch.softmax(s.masked_fill(~ok, 0.0), dim) * ok


@MIXERS.register(
    "combiner", paper="Combiner: Full Attention Transformer with Sparse Computation Cost "
                      "(Ren et al., 2021)",
    equation="§3 eq. 5-6: A(x_i) = Σ_{j∈Ω⁰} p(j|i) v_j + Σ_r p(Ω^r|i) Σ_{j∈Ω^r} q(j|Ω^r) v_j; "
             "fixed (row/block) or axial (column) regions",
    complexity=("O(n√n d)", "O(n√n)"),
    test="tests/papers/test_attention_combiner.py::test_combiner_every_position_reachable_in_two_hops",
    tiny={"heads": 2, "block": 4})
class CombinerAttention(PositionalAttention):
    """Direct attention within a row plus attention to summaries of the other rows / columns."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, block: int = 32,
                 partition: str = "fixed"):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        if partition not in PARTITIONS:
            raise ConfigError("mixer.partition", partition, PARTITIONS)
        if block < 1:
            raise ConfigError("mixer.block", block, why="block (row length) must be >= 1")
        self.block, self.partition = block, partition
        self.w_local = nn.Parameter(torch.zeros(heads, self.head_dim))    # q(j|Ω) logits

    def _pool_logits(self, k: Tensor) -> Tensor:
        return torch.einsum("bhne,he->bhn", k.float(), self.w_local.float()) / math.sqrt(k.shape[-1])

    def _rel(self, r_k: Tensor, r_q: Tensor, causal: bool) -> Tensor:
        """Which rows a query row summarises: earlier rows (causal) or every other row."""
        return r_k < r_q if causal else r_k != r_q

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        B, h, n, e = q.shape
        b, scale = self.block, 1 / math.sqrt(e)
        order = left_pack(valid)                               # rows start at the first real token
        q, k, v = (take(t, order, 2) for t in (q, k, v))
        valid = take(valid, order, 1)
        pad = (-n) % b
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        valid = F.pad(valid, (0, pad), value=False)
        R = (n + pad) // b
        qg, kg, vg = (t.reshape(B, h, R, b, e).float() for t in (q, k, v))   # (B, h, R, b, e)
        vr = valid.view(B, 1, R, b)
        # direct part: own row
        s_dir = torch.einsum("bhrie,bhrje->bhrij", qg, kg) * scale          # (B, h, R, b, b)
        ok = vr.unsqueeze(3).expand(B, 1, R, b, b)
        if ctx.causal:
            ok = ok & torch.ones(b, b, dtype=torch.bool, device=q.device).tril()
        lg = self._pool_logits(k).view(B, h, R, b)
        rows = torch.arange(R, device=q.device)
        rel = self._rel(rows[None, :], rows[:, None], ctx.causal)           # (R_q, R_k)
        if self.partition == "fixed":                        # a region = one other row
            p = masked_softmax(lg, vr)                                      # (B, h, R, b)
            kb, vb = (torch.einsum("bhrj,bhrje->bhre", p, t) for t in (kg, vg))  # (B, h, R, e)
            cnt = vr.sum(-1).float()                                        # (B, 1, R)
            s_reg = torch.einsum("bhrie,bhse->bhris", qg, kb) * scale \
                + cnt.clamp(min=1).log()[:, :, None, None, :]
            reg_ok = (rel & (cnt[:, :, None, :] > 0))[:, :, :, None, :]     # (B, 1, R, 1, R)
            veq = "bhris,bhse->bhrie"
        else:                                                # a region = a column, other rows
            allowed = rel[None, None, :, :, None] & vr[:, :, None]          # (B, 1, R_q, R_k, b)
            p = masked_softmax(lg[:, :, None].expand(B, h, R, R, b), allowed, dim=3)
            kb, vb = (torch.einsum("bhrsc,bhsce->bhrce", p, t) for t in (kg, vg))  # (B,h,R,b,e)
            cnt = allowed.sum(3).float()                                    # (B, 1, R, b)
            s_reg = torch.einsum("bhrie,bhrce->bhric", qg, kb) * scale \
                + cnt.clamp(min=1).log()[:, :, :, None, :]
            reg_ok = (cnt > 0)[:, :, :, None, :]                            # (B, 1, R, 1, b)
            veq = "bhric,bhrce->bhrie"
        y = joint_softmax([s_dir.masked_fill(~ok, float("-inf")),
                           s_reg.masked_fill(~reg_ok, float("-inf"))],
                          [("bhrij,bhrje->bhrie", vg), (veq, vb)])
        return unpack(y.reshape(B, h, R * b, e)[:, :, :n], order, 2)

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        b, e = self.block, q.shape[-1]
        scale = 1 / math.sqrt(e)
        r_q, r_k, c_k = q_pos // b, k_pos // b, k_pos % b                   # (B, n_q) / (B, n_k)
        direct = (r_k[:, None, :] == r_q[:, :, None]) & valid[:, None, :]  # (B, n_q, n_k)
        if ctx.causal:
            direct &= k_pos[:, None, :] <= q_pos[:, :, None]
        regions = torch.arange(int(k_pos.max()) // b + 1 if self.partition == "fixed" else b,
                               device=q.device)
        if self.partition == "fixed":                        # members of row r': (B, 1, R, n_k)
            member = (r_k[:, None, :] == regions[:, None]).unsqueeze(1) & valid[:, None, None, :]
            reg_ok = self._rel(regions[None, None, :], r_q[:, :, None], ctx.causal)   # (B,n_q,R)
        else:                                                # column c', rows related to r_q
            member = (c_k[:, None, None, :] == regions[:, None]) & \
                self._rel(r_k[:, None, None, :], r_q[:, :, None, None], ctx.causal) & \
                valid[:, None, None, :]                                     # (B, n_q, b, n_k)
            reg_ok = torch.ones(1, 1, b, dtype=torch.bool, device=q.device)
        lg = self._pool_logits(k)[:, :, None, None, :]                     # (B, h, 1, 1, n_k)
        p = masked_softmax(lg, member[:, None])                            # (B, h, ., reg, n_k)
        kb, vb = (torch.einsum("bhqrk,bhke->bhqre", p, t.float()) for t in (k, v))
        cnt = member.sum(-1).float()                                       # (B, ., reg)
        reg_ok = reg_ok & (cnt > 0)
        s_dir = (q.float() @ k.float().transpose(-1, -2)) * scale
        s_reg = torch.einsum("bhqe,bhqre->bhqr", q.float(), kb.expand(-1, -1, q.shape[2], -1, -1)) * scale \
            + cnt.clamp(min=1).log()[:, None]
        return joint_softmax([s_dir.masked_fill(~direct[:, None], float("-inf")),
                              s_reg.masked_fill(~reg_ok[:, None], float("-inf"))],
                             [("bhqk,bhke->bhqe", v.float()),
                              ("bhqr,bhqre->bhqe", vb.expand(-1, -1, q.shape[2], -1, -1))])
