"""LayerNorm and RMSNorm.

LayerNorm (Ba et al., 2016): y = (x − mean(x)) / sqrt(var(x) + ε) · γ + β.
RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x²) + ε) · γ (no centring, no bias).
Complexity: O(n d) time and memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import NORMS


@NORMS.register("layernorm", paper="Layer Normalization (Ba, Kiros & Hinton, 2016)",
                equation="y = (x − μ)/√(σ² + ε) · γ + β", complexity=("O(n d)", "O(n d)"),
                test="tests/papers/test_norms_basic.py::test_layernorm_and_rmsnorm_formulas")
class LayerNorm(nn.Module):
    """LayerNorm with an optional bias."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


@NORMS.register("rmsnorm", paper="Root Mean Square Layer Normalization (Zhang & Sennrich, 2019)",
                equation="y = x / √(mean(x²) + ε) · γ", complexity=("O(n d)", "O(n d)"),
                test="tests/papers/test_norms_basic.py::test_layernorm_and_rmsnorm_formulas")
class RMSNorm(nn.Module):
    """RMSNorm, computed in fp32 (as Llama does) and cast back."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)
