"""Softmax with entropy-invariant scaling: logits multiplied by log n / log n_train.

Source: "听说Attention与Softmax更配哦~" ("Attention and Softmax go better together", Su, 2022,
in the survey's seeds) and "从熵不变性看Attention的Scale操作" (Su, 2021): the entropy of a
softmax over n keys grows like log n, so a model trained at length n_train attends more diffusely
at longer lengths; scaling the logits by κ_n = log n / log n_train keeps the entropy roughly
invariant and helps length generalisation.

    Attention(Q, K, V)_i = softmax_j(κ_{n_i} · q_iᵀk_j/√d + bias_ij) V,   κ_n = log n / log n_train

n_i is the number of keys query i really sees (padding excluded; i + 1 under the causal mask), so
the factor is per query and the KV-cache decode equals the full pass. κ = 1 at n = n_train
(plain softmax). Complexity as softmax attention: time O(n² d), memory O(n) fused.
"""
from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ...registry import MIXERS
from ..attention.softmax import MultiHeadAttentionBase


@MIXERS.register(
    "softmax_plus", paper="'Attention and Softmax go better together' (Su, 2022); entropy-"
                          "invariant scaling (Su, 2021)",
    equation="softmax(log(n_i)/log(n_train) · QKᵀ/√d + bias)V, n_i = keys seen by query i",
    complexity=("O(n² d)", "O(n) fused"),
    test="tests/papers/test_linear_softmax_plus.py::test_logits_scaled_by_log_n_over_log_train",
    tiny={"heads": 2, "train_len": 8})
class SoftmaxPlus(MultiHeadAttentionBase):
    """Multi-head softmax attention whose logits are scaled by log n / log n_train per query."""

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 impl: str = "sdpa", cross: bool = False, train_len: int = 512):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, impl, cross)
        if int(train_len) < 2:
            raise ConfigError("mixer.train_len", train_len, why="must be >= 2 (log n_train > 0)")
        self.train_len = int(train_len)

    def attend(self, q, k, v, mask, bias, ctx):
        n_k = k.shape[2]
        if mask is None:
            cnt = torch.full((1, 1, q.shape[2], 1), float(n_k), device=q.device)
        else:
            cnt = mask.sum(-1, keepdim=True).float()                      # (B|1, 1, n_q, 1)
        kappa = cnt.clamp_min(1.0).log() / math.log(self.train_len)
        return super().attend(q * kappa.to(q.dtype), k, v, mask, bias, ctx)
