"""Sinkformer attention: doubly stochastic attention matrices by Sinkhorn iterations.

Paper: Sinkformers: Transformers with Doubly Stochastic Attention (Sander et al., 2022), §3
eq. 4: starting from K = exp(QKᵀ/√d), alternately normalise columns and rows,
    K ← K / (1ᵀK)  (columns),   K ← K / (K1)  (rows),
iterations many times (Sinkhorn's algorithm), done here in the log domain. ``iters = 0`` is the
softmax (one row normalisation); each iteration adds one column and one row normalisation, so
rows always sum to 1 and columns converge to 1. Padded queries take no part in the column sums
and padded keys get no weight. The column step couples every query, so there is no causal form.
Complexity: time O(T n² + n² d) for T iterations; memory O(n²).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Supports
from .softmax import MultiHeadAttentionBase


def sinkhorn_log(s: Tensor, key_valid: Tensor, query_valid: Tensor, iters: int) -> Tensor:
    """Log of the Sinkhorn-normalised matrix of scores s (B, h, n_q, n_k).

    key_valid (B|1, 1, 1, n_k), query_valid (B|1, 1, n_q, 1) bool. Invalid entries get −inf;
    invalid query rows are plain softmax rows (unused) and excluded from column sums."""
    s = s.masked_fill(~key_valid, float("-inf"))
    logp = torch.log_softmax(s, -1)                                      # rows sum to 1
    for _ in range(iters):
        col = torch.logsumexp(logp.masked_fill(~query_valid, float("-inf")), -2, keepdim=True)
        logp = logp - col.masked_fill(~key_valid, 0.0)                   # columns sum to 1
        logp = torch.log_softmax(logp, -1)                               # rows sum to 1
    return logp


@MIXERS.register(
    "sinkhorn", paper="Sinkformers: Transformers with Doubly Stochastic Attention "
                      "(Sander et al., 2022)",
    equation="§3 eq. 4: Sinkhorn(exp(QKᵀ/√d)): alternate K ← K/(1ᵀK), K ← K/(K1) T times; "
             "y = Sinkhorn(·) V",
    complexity=("O(T n² + n² d)", "O(n²)"),
    test="tests/papers/test_attention_sinkhorn.py::test_sinkhorn_rows_and_columns_sum_to_one",
    tiny={"heads": 2, "iters": 3})
class SinkhornAttention(MultiHeadAttentionBase):
    """Attention whose weight matrix is made doubly stochastic by Sinkhorn iterations."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 iters: int = 3):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, "eager")
        if iters < 0:
            raise ConfigError("mixer.iters", iters, why="Sinkhorn iterations must be >= 0")
        self.iters = iters

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        if ctx.causal:
            raise ConfigError("mixer", "sinkhorn", why="sinkhorn attention has no causal form "
                              "(column normalisation mixes every query)")
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        B, _, n_q, e = q.shape
        n_k = k.shape[2]
        s = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(e)  # (B, h, n_q, n_k)
        if bias is not None:
            s = s + bias.float()
        kpm = ctx.key_padding_mask
        ones_k = torch.ones(1, n_k, dtype=torch.bool, device=q.device)
        key_valid = (kpm.bool() if kpm is not None else ones_k)[:, None, None, :]
        qm = ctx.query_mask(n_q)
        query_valid = (qm.bool() if qm is not None else ones_k[:, :n_q])[:, None, :, None]
        w = sinkhorn_log(s, key_valid, query_valid, self.iters).exp().to(v.dtype)
        if self.training and self.dropout > 0:
            w = F.dropout(w, self.dropout)
        return torch.matmul(w, v)
