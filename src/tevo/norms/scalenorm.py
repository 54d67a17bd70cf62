"""ScaleNorm and FixNorm.

Paper: Transformers without Tears: Improving the Normalization of Self-Attention (Nguyen &
Salazar, 2019), §3.2–3.3:
    ScaleNorm(x; g) = g · x / ‖x‖        one learned scalar g per norm, initialised to √d (eq. 4)
    FixNorm(x)      = r · x / ‖x‖        a fixed length r (Nguyen & Chiang, 2018), no parameter
The paper uses them with pre-norm residuals (PreNorm + FixNorm + ScaleNorm). ‖x‖ is clamped
at ``eps`` so a zero vector stays zero. Complexity: O(n d) time and memory.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import NORMS

_TEST = "tests/papers/test_norms_scalenorm.py::test_scalenorm_and_fixnorm_formulas"


def _l2_normalise(x: Tensor, eps: float) -> Tensor:
    xf = x.float()                                            # fp32 norm, as RMSNorm does
    return (xf / xf.norm(dim=-1, keepdim=True).clamp(min=eps)).to(x.dtype)


@NORMS.register("scalenorm", paper="Transformers without Tears (Nguyen & Salazar, 2019)",
                equation="eq. 4: ScaleNorm(x; g) = g·x/‖x‖, g learned, init √d",
                complexity=("O(n d)", "O(n d)"), test=_TEST)
class ScaleNorm(nn.Module):
    """g · x/‖x‖ with one learned scalar g (init √d)."""

    def __init__(self, d_model: int, eps: float = 1e-5, g_init: float | None = None):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.tensor(float(g_init if g_init is not None
                                                 else math.sqrt(d_model))))

    def forward(self, x: Tensor) -> Tensor:
        return self.g.to(x.dtype) * _l2_normalise(x, self.eps)


@NORMS.register("fixnorm", paper="Transformers without Tears (Nguyen & Salazar, 2019); "
                                 "Improving Lexical Choice in NMT (Nguyen & Chiang, 2018)",
                equation="§3.3: FixNorm(x) = r·x/‖x‖ with a fixed length r",
                complexity=("O(n d)", "O(n d)"), test=_TEST)
class FixNorm(nn.Module):
    """r · x/‖x‖ with a fixed (not learned) length r."""

    def __init__(self, d_model: int, radius: float = 1.0, eps: float = 1e-5):
        super().__init__()
        if radius <= 0:
            raise ConfigError("norm.radius", radius, why="must be > 0")
        self.radius, self.eps = float(radius), eps

    def forward(self, x: Tensor) -> Tensor:
        return self.radius * _l2_normalise(x, self.eps)
