"""Scaled cosine attention (Swin Transformer V2).

Paper: Swin Transformer V2: Scaling Up Capacity and Resolution (Liu et al., 2022), §3.2 eq. 2:
    Sim(q_i, k_j) = cos(q_i, k_j) / τ + B_ij,   τ a learnable per-head temperature, τ ≥ 0.01.
As in the reference code the temperature is stored as a log-scale s = log(1/τ) (init log 10) and
clamped at log(1/τ_min), so every score lies in [−1/τ, 1/τ] ⊆ [−100, 100] before the bias.
Complexity: time O(n² d); memory O(n²) eager, O(n) fused; decode O(n d) with the KV cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.attention import ATTENTION_FUNCTIONS
from ...nn.context import MixerContext
from ...registry import MIXERS
from .softmax import MultiHeadAttentionBase


def cosine_logit_scale(log_scale: Tensor, min_temperature: float) -> Tensor:
    """1/τ per head, clamped so that τ ≥ min_temperature (Swin V2's clamp of logit_scale)."""
    return log_scale.clamp(max=math.log(1.0 / min_temperature)).exp()


@MIXERS.register(
    "cosine", paper="Swin Transformer V2: Scaling Up Capacity and Resolution (Liu et al., 2022)",
    equation="§3.2 eq. 2: Sim(q_i,k_j) = cos(q_i,k_j)/τ + B_ij, τ learnable per head, τ ≥ 0.01",
    complexity=("O(n² d)", "O(n²) eager, O(n) fused"),
    test="tests/papers/test_attention_cosine.py::test_cosine_scores_bounded_by_temperature",
    tiny={"heads": 2})
class CosineAttention(MultiHeadAttentionBase):
    """Scaled cosine attention: cos(q, k)/τ with a learned, clamped per-head temperature."""

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 impl: str = "sdpa", cross: bool = False, temperature: float = 0.1,
                 min_temperature: float = 0.01):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, impl, cross)
        if not 0 < min_temperature <= temperature:
            raise ConfigError("mixer.temperature", temperature,
                              why=f"need 0 < min_temperature ({min_temperature}) <= temperature")
        self.min_temperature = min_temperature
        # log(1/τ) per head, shaped to broadcast over (B, h, n, e)
        self.log_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(1.0 / temperature)))

    def logit_scale(self) -> Tensor:
        return cosine_logit_scale(self.log_scale, self.min_temperature)       # (h, 1, 1)

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        # cos(q, k)/τ = (τ⁻¹ q/|q|) · (k/|k|): fold the temperature into the queries, scale 1
        qn = F.normalize(q, dim=-1) * self.logit_scale().to(q.dtype)
        kn = F.normalize(k, dim=-1)
        p = self.dropout if self.training else 0.0
        return ATTENTION_FUNCTIONS[self.impl](qn, kn, v, mask=mask, bias=bias, scale=1.0, dropout=p)
