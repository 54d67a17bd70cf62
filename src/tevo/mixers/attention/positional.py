"""A base for attention variants whose pattern depends on token positions (chunks, bands,
log-spaced steps, hash buckets): a full pass uses the variant's efficient form, an incremental
step uses its dense form over the KV cache.

Subclasses implement
    attend_full(q, k, v, valid, ctx)                       -> (B, h, n, e)   keys == queries
    attend_dense(q, k, v, q_pos, k_pos, valid, ctx)        -> (B, h, n_q, e) any cached keys
where valid (B, n_k) marks real keys. The two forms compute the same function, so the
conformance check "prefill + steps == full pass" also checks the efficient form against the dense
one. Positions are the context's absolute positions (padding skipped), so left padding and
decoding see the same pattern. These forms apply no attention dropout (subclasses take no
``dropout`` option).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...nn.context import MixerContext
from .softmax import MultiHeadAttentionBase


class PositionalAttention(MultiHeadAttentionBase):
    """Projections, rotary hook and KV cache (keys, values, positions); no score bias hook."""

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v, extra = self.project(x, ctx, state)                 # (B, h, n, e) each
        q_pos = ctx.query_positions(x)
        k_pos = q_pos
        pos = ctx.pos
        if pos is not None and "qk" in pos.hooks:
            q, k = pos.rotate(q, k, q_pos, k_pos)
        past = state is not None and "k" in state
        if past:
            k = torch.cat([state["k"], k], 2)
            v = torch.cat([state["v"], v], 2)
            k_pos = torch.cat([state["pos"], k_pos], 1)
        new_state = None if state is None else {"k": k, "v": v, "pos": k_pos, **extra}
        n_k = k.shape[2]
        kpm = ctx.key_padding_mask
        if kpm is not None and kpm.shape[1] != n_k:
            raise ValueError(f"key_padding_mask covers {kpm.shape[1]} keys, attention has {n_k}")
        valid = torch.ones(B, n_k, dtype=torch.bool, device=x.device) if kpm is None else kpm.bool()
        if past:
            y = self.attend_dense(q, k, v, q_pos, k_pos, valid, ctx)
        else:
            y = self.attend_full(q, k, v, valid, ctx)
        return self.o_proj(self._merge(y.to(x.dtype))), new_state

    def project(self, x: Tensor, ctx: MixerContext, state) -> tuple:
        """q, k, v (B, h, n, e) and extra state entries (e.g. a convolution's last inputs)."""
        q = self._split(self.q_proj(x), self.heads)
        k = self.repeat_kv(self._split(self.k_proj(x), self.kv_heads))
        v = self.repeat_kv(self._split(self.v_proj(x), self.kv_heads))
        return q, k, v, {}

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no incremental form")


def dense_masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor,
                           scale: float) -> Tensor:
    """softmax(q kᵀ·scale) v over allowed (B|1, h|1, n_q, n_k) keys; empty rows give zeros."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s.masked_fill(~allowed.any(-1, keepdim=True), 0.0), -1)
    w = w * allowed.any(-1, keepdim=True)
    return torch.matmul(w.to(v.dtype), v)
