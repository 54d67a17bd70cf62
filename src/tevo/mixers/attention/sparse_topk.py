"""Top-k sparse attention, chunked over queries.

Papers: Explicit Sparse Transformer: Concentrated Attention Through Explicit Selection (Zhao et
al., 2019), §2, eq. 4–6: keep the k largest scores of each query row, mask the rest, softmax:
    M(P, k)_ij = P_ij if P_ij ≥ t_i (the k-th largest of row i) else −∞,  A = softmax(M(P, k)) V;
Memory-efficient Transformers via Top-k Attention (Gupta et al., 2021), §3: process the queries
in chunks of c, so only a (c × m) score block exists at a time (with activation checkpointing
per chunk during training, the backward recomputes it instead of storing it).
Exactly k keys are kept per row (``torch.topk``; ties at the threshold are broken by index).
Complexity: time O(n² d) (every score is computed, once per chunk), memory O(c·n) per chunk
plus O(n·k); decoding keeps a full KV cache.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ...errors import ConfigError
from ...nn.blocksparse import MASKED
from ...nn.context import MixerContext
from ...registry import MIXERS
from .pattern import PatternAttention


@MIXERS.register(
    "sparse_topk",
    paper="Explicit Sparse Transformer (Zhao et al., 2019); Memory-efficient Transformers via "
          "Top-k Attention (Gupta et al., 2021)",
    equation="Zhao eq. 4–6: A = softmax(M(QK^T/√e, k)) V, M keeps the top-k scores of each row",
    complexity=("O(n² d)", "O(c n + n k) per query chunk of c"),
    test="tests/papers/test_attention_sparse_topk.py::test_k_equal_n_equals_softmax",
    tiny={"heads": 2, "topk": 4, "chunk": 5})
class TopKAttention(PatternAttention):
    """Each query keeps only its top-k scores; queries processed in chunks for memory."""

    needs_contiguous = False    # dense over the keys: any positions and padding work

    def __init__(self, d_model: int, heads: int = 4, topk: int = 8, chunk: int = 1024,
                 checkpoint: bool = True, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 scale: float | None = None, causal: bool = True):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, scale, causal)
        if int(topk) < 1:
            raise ConfigError("mixer.topk", topk, why="topk must be >= 1")
        if int(chunk) < 1:
            raise ConfigError("mixer.chunk", chunk, why="chunk (queries per block) must be >= 1")
        self.topk, self.chunk, self.use_checkpoint = int(topk), int(chunk), bool(checkpoint)

    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        n = q.shape[2]
        outs = []
        for s in range(0, n, self.chunk):
            qc, pc = q[:, :, s:s + self.chunk], q_pos[:, s:s + self.chunk]
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                outs.append(checkpoint(self._chunk, qc, k, v, pc, k_pos, k_valid, ctx,
                                       use_reentrant=False))
            else:
                outs.append(self._chunk(qc, k, v, pc, k_pos, k_valid, ctx))
        return torch.cat(outs, 2)

    def _chunk(self, q, k, v, qp, kp, k_valid, ctx: MixerContext) -> Tensor:
        """q (B, h, c, e) over all m keys: a (B, h, c, m) score block, top-k per row."""
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        s = torch.matmul(q, k.transpose(-1, -2)).float() * scale           # (B, h, c, m)
        pos = ctx.pos
        if pos is not None and "bias" in pos.hooks:
            b = pos.bias(q, k, qp, kp)
            if b is not None:
                s = s + b.float()
        ok = k_valid[:, None, None, :]
        if ctx.causal:
            ok = ok & (kp[:, None, None, :] <= qp[:, None, :, None])
        s = s.masked_fill(~ok, MASKED)
        top, idx = s.topk(min(self.topk, s.shape[-1]), dim=-1)             # (B, h, c, k)
        keep = top > MASKED / 2                                            # fewer than k allowed
        p = torch.exp(top - top[..., :1]).masked_fill(~keep, 0.0)          # row max is top[0]
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)                   # empty rows → 0
        if self.training and self.dropout > 0:
            p = torch.nn.functional.dropout(p, self.dropout)
        w = torch.zeros_like(s).scatter(-1, idx, p)                        # (B, h, c, m) sparse
        return torch.matmul(w.to(v.dtype), v)
