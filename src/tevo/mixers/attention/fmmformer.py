"""FMMformer: banded near-field softmax attention plus low-rank (linear) far-field attention.

Paper: FMMformer: Efficient and Flexible Transformer via Decomposed Near-field and Far-field
Attention (Nguyen et al., 2021), §3, eq. 8–10: inspired by the fast multipole method,
    V̂ = (w₁ D + w₂ L) V,
    D = banded softmax: softmax of q_i·k_j/√d over |i − j| ≤ k (causal: 0 ≤ i − j ≤ k),
    L = Σ_l φ_l(Q) φ_l(K)ᵀ, row-normalised (linear attention with several feature maps
        φ_l ∈ {elu+1, elu(−x)+1, …}, whose sum has rank ≤ Σ_l d),
with learnable blending weights w₁, w₂ (one pair per head). The band is gathered (O(n k)
memory), the far field uses the associative (O(n d²)) form, prefix sums when causal.
Complexity: time O(n (k + d) d); memory O(n k + n d²) causal, O(n k + d²) bidirectional.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import band_indices, gathered_attention
from ...registry import MIXERS
from ..base import Supports
from .positional import PositionalAttention, dense_masked_attention

FEATURE_MAPS = {
    "elu": lambda x: F.elu(x) + 1,
    "elu_neg": lambda x: F.elu(-x) + 1,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
}


def far_field(fq: Tensor, fk: Tensor, v: Tensor, causal: bool, eps: float) -> Tensor:
    """Row-normalised φ(Q)φ(K)ᵀV in associative form. fq, fk (B, h, n, m) (padding rows of fk
    zeroed), v (B, h, n, e) → (B, h, n, e)."""
    fq, fk, v = fq.float(), fk.float(), v.float()
    if causal:
        kv = torch.cumsum(torch.einsum("bhnm,bhne->bhnme", fk, v), 2)   # (B, h, n, m, e)
        num = torch.einsum("bhnm,bhnme->bhne", fq, kv)
        den = (fq * torch.cumsum(fk, 2)).sum(-1, keepdim=True)
    else:
        num = fq @ torch.einsum("bhnm,bhne->bhme", fk, v)
        den = (fq * fk.sum(2, keepdim=True)).sum(-1, keepdim=True)
    return num / (den + eps)


@MIXERS.register(
    "fmmformer", paper="FMMformer: Efficient and Flexible Transformer via Decomposed Near-field "
                       "and Far-field Attention (Nguyen et al., 2021)",
    equation="§3 eq. 8-10: V̂ = (w₁ D + w₂ L) V, D = band-k softmax(QKᵀ/√d), "
             "L = rownorm(Σ_l φ_l(Q) φ_l(K)ᵀ)",
    complexity=("O(n (k + d) d)", "O(n k + n d²)"),
    test="tests/papers/test_attention_fmmformer.py::test_fmmformer_near_field_equals_banded_softmax",
    tiny={"heads": 2, "band": 3})
class FMMformerAttention(PositionalAttention):
    """Blend of banded softmax (near field) and multi-feature-map linear attention (far field)."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, band: int = 16,
                 features: list | tuple = ("elu", "elu_neg"), eps: float = 1e-6):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        features = [features] if isinstance(features, str) else list(features)
        for f in features:
            if f not in FEATURE_MAPS:
                raise ConfigError("mixer.features", f, FEATURE_MAPS)
        if band < 0 or not features:
            raise ConfigError("mixer.band", band, why="band must be >= 0 and features non-empty")
        self.band, self.features, self.eps = band, features, eps
        self.blend = nn.Parameter(torch.ones(2, heads, 1, 1))         # w₁ (near), w₂ (far)

    def phi(self, x: Tensor) -> Tensor:
        return torch.cat([FEATURE_MAPS[f](x) for f in self.features], -1)   # (.., L·e)

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        n = q.shape[2]
        idx, inside = band_indices(n, self.band, 0 if ctx.causal else self.band, q.device)
        ok = inside & valid[:, idx]                                      # (B, n, W)
        near = gathered_attention(q, k, v, idx[None, None], ok[:, None], 1 / math.sqrt(q.shape[-1]))
        fk = self.phi(k) * valid[:, None, :, None].to(k.dtype)
        far = far_field(self.phi(q), fk, v, ctx.causal, self.eps)
        return self.blend[0] * near + self.blend[1] * far

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        dist = q_pos[:, :, None] - k_pos[:, None, :]                     # (B, n_q, n_k)
        seen = valid[:, None, :] & ((dist >= 0) if ctx.causal else torch.ones_like(dist).bool())
        band = seen & (dist.abs() <= self.band)
        near = dense_masked_attention(q, k, v, band[:, None], 1 / math.sqrt(q.shape[-1]))
        a = (self.phi(q).float() @ self.phi(k).float().transpose(-1, -2)) * seen[:, None]
        far = (a @ v.float()) / (a.sum(-1, keepdim=True) + self.eps)
        return self.blend[0] * near + self.blend[1] * far
