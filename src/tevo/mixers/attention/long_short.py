"""Long-Short Transformer: sliding-window attention plus a dynamic low-rank projection.

Paper: Long-Short Transformer: Efficient Transformers for Language and Vision (Zhu et al., 2021).
- §3.1 long-range attention via dynamic projection: P_i = softmax_n(K W_i^P) ∈ ℝ^{n×r}
  (softmax over the sequence), K̄_i = P_iᵀ K, V̄_i = P_iᵀ V: r keys summarising the sequence;
- §3.2 short-term attention: each query attends to keys within a window w (here |i − j| ≤ w,
  causal: 0 ≤ i − j ≤ w);
- §3.3 aggregation with DualLN: one softmax over [LN_L(K_local); LN_G(K̄)] with values
  [LN_L(V_local); LN_G(V̄)] — separate layer norms because the pooled keys have a different
  scale from the local ones;
- §3.4 autoregressive form: the projection runs per segment of length l, and a query sees the
  projected keys of earlier segments only (plus its window).
Segments follow token positions (left padding and decoding see the same segments); the window is
gathered (O(n w) memory) and the projected keys are pooled by scatter.
Complexity: time O(n (w + r) d) bidirectional, O(n (w + r n/l) d) causal;
memory O(n (w + r)) / O(n (w + r n/l)).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import band_indices, gather_keys
from ...nn.segments import segment_softmax_pool
from ...registry import MIXERS
from ..base import Supports
from .positional import PositionalAttention


def joint_softmax(s_parts: list[Tensor], values: list) -> Tensor:
    """One softmax across several masked score blocks (-inf = not allowed); each block's weights
    multiply its values with the given einsum. Rows with no allowed key give zeros."""
    s = torch.cat(s_parts, -1)
    any_ok = torch.isfinite(s).any(-1, keepdim=True)
    w = torch.softmax(s.masked_fill(~any_ok, 0.0), -1) * any_ok
    out, start = 0, 0
    for part, (eq, val) in zip(s_parts, values):
        wp = w[..., start:start + part.shape[-1]]
        out = out + torch.einsum(eq, wp.to(val.dtype), val)
        start += part.shape[-1]
    return out


@MIXERS.register(
    "long_short", paper="Long-Short Transformer: Efficient Transformers for Language and Vision "
                        "(Zhu et al., 2021)",
    equation="§3.1-3.3: K̄ = softmax_n(K W^P)ᵀ K, V̄ likewise; y = softmax(Q [LN_L(K_w); "
             "LN_G(K̄)]ᵀ/√d) [LN_L(V_w); LN_G(V̄)]; §3.4 causal: per-segment projections",
    complexity=("O(n (w + r n/l) d) causal; O(n (w + r) d) bidirectional",
                "O(n (w + r n/l)) causal; O(n (w + r)) bidirectional"),
    test="tests/papers/test_attention_long_short.py::test_long_short_matches_dense_reference",
    tiny={"heads": 2, "window": 2, "rank": 2, "segment": 4})
class LongShortAttention(PositionalAttention):
    """Sliding-window attention + dynamically projected global keys, with dual layer norms."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, window: int = 16, rank: int = 8,
                 segment: int = 64):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        if window < 0 or rank < 1 or segment < 1:
            raise ConfigError("mixer.rank", rank, why="need window >= 0, rank >= 1, segment >= 1")
        e = self.head_dim
        self.window, self.rank, self.segment = window, rank, segment
        self.w_proj = nn.Parameter(torch.randn(heads, e, rank) / math.sqrt(e))   # W^P per head
        self.ln_local = nn.LayerNorm(e)
        self.ln_global = nn.LayerNorm(e)

    def _global(self, q, k, v, q_pos, k_pos, valid, causal):
        """Scores against the pooled keys (B, h, n_q, S·r) and the pooled values."""
        logits = torch.einsum("bhne,her->bhnr", k.float(), self.w_proj.float())
        if causal:
            seg_k, seg_q = k_pos // self.segment, q_pos // self.segment
        else:
            seg_k, seg_q = torch.zeros_like(k_pos), torch.zeros_like(q_pos)
        S = int(seg_k.max()) + 1
        kb, vb, cnt = segment_softmax_pool(logits, k, v, seg_k, valid, S)   # (B, h, S, r, e)
        kb, vb = self.ln_global(kb).flatten(2, 3), self.ln_global(vb).flatten(2, 3)
        slot_seg = torch.arange(S, device=q.device).repeat_interleave(self.rank)   # (S·r,)
        ok = (cnt > 0).repeat_interleave(self.rank, 2).transpose(-1, -2)   # (B, 1, 1, S·r)
        if causal:
            ok = ok & (slot_seg < seg_q[:, None, :, None])                 # earlier segments
        s = (q.float() @ kb.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return s.masked_fill(~ok, float("-inf")), vb

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        n = q.shape[2]
        pos = ctx.query_positions(q[:, 0]) if ctx.positions is None else ctx.positions
        kl, vl = self.ln_local(k), self.ln_local(v)
        idx, inside = band_indices(n, self.window, 0 if ctx.causal else self.window, q.device)
        ok = (inside & valid[:, idx])[:, None]                             # (B, 1, n, W)
        kg, vg = gather_keys(kl, idx[None, None]), gather_keys(vl, idx[None, None])
        sl = torch.einsum("bhqe,bhqwe->bhqw", q.float(), kg.float()) / math.sqrt(q.shape[-1])
        sg, vb = self._global(q, k, v, pos, pos, valid, ctx.causal)
        return joint_softmax([sl.masked_fill(~ok, float("-inf")), sg],
                             [("bhqw,bhqwe->bhqe", vg), ("bhqs,bhse->bhqe", vb)])

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        dist = q_pos[:, :, None] - k_pos[:, None, :]
        ok = valid[:, None, :] & (dist.abs() <= self.window)
        if ctx.causal:
            ok &= dist >= 0
        kl, vl = self.ln_local(k), self.ln_local(v)
        sl = (q.float() @ kl.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        sg, vb = self._global(q, k, v, q_pos, k_pos, valid, ctx.causal)
        return joint_softmax([sl.masked_fill(~ok[:, None], float("-inf")), sg],
                             [("bhqk,bhke->bhqe", vl), ("bhqs,bhse->bhqe", vb)])
