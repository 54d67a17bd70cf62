"""KERPLE: kernelized relative positional embedding with conditionally positive definite kernels.

Paper: KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation (Chi et al.,
2022) (reference: chijames/KERPLE ``ParallelKerplePower``/``ParallelKerpleLog``):
    power:  score_h(m, n) += -r1_h · |m - n|^{r2_h},         r1 > 0, 0 < r2 ≤ 2
    log:    score_h(m, n) += -r1_h · log(1 + r2_h · |m - n|), r1, r2 > 0
Both are conditionally positive definite (CPD) for those ranges, which is what makes them valid
shift-invariant kernels inside the softmax. The reference keeps the parameters in range by
clamping ``.data`` after each step; here they are reparametrised so every value of the raw
parameter is valid (r = eps + softplus(ρ), and r2 = eps + (2 - eps)·sigmoid(ρ) for the power
exponent), which keeps gradients everywhere and needs no in-place edit. Initialised like the
reference: r1 ~ U(0, 1) and r2 ~ U(0, 2) for power (bias_a, bias_p); r1 ~ U(0, 2) and
r2 ~ U(0, 1) for log (bias_p, bias_a), floored at eps = 0.01.
Complexity: time O(n²) per head, memory O(n²); parameters 2·h.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding

KERNELS = ("power", "log")
EPS = 1e-2


def _inv_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


@POSITIONS.register(
    "kerple", paper="KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation "
                    "(Chi et al., 2022)",
    equation="power: -r1|m-n|^{r2} (0<r2≤2); log: -r1 log(1 + r2|m-n|) (r1, r2 > 0)",
    complexity=("O(n²)", "O(n²)"),
    test="tests/papers/test_positions_kerple.py::test_kerple_kernels_formula_ranges_and_cpd",
    tiny={})
class KerplePosition(PositionEncoding):
    """Learned CPD distance kernel per head (power or logarithmic), parameters kept valid."""

    hooks = frozenset({"bias"})
    translation_invariant = True

    def __init__(self, heads: int = 4, kernel: str = "log"):
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError("position.kernel", kernel, KERNELS)
        self.heads, self.kernel = heads, kernel
        if kernel == "power":
            r1 = torch.rand(heads).clamp(min=EPS)                      # bias_a ~ U(0, 1)
            r2 = (torch.rand(heads) * 2).clamp(EPS, 2 - 1e-3)          # bias_p ~ U(0, 2)
            rho2 = torch.logit((r2 - EPS) / (2 - EPS), eps=1e-6)
        else:
            r1 = (torch.rand(heads) * 2).clamp(min=EPS)                # bias_p ~ U(0, 2)
            r2 = torch.rand(heads).clamp(min=EPS)                      # bias_a ~ U(0, 1)
            rho2 = _inv_softplus((r2 - EPS).clamp(min=1e-4))
        self.rho1 = nn.Parameter(_inv_softplus((r1 - EPS).clamp(min=1e-4)))
        self.rho2 = nn.Parameter(rho2)

    def params(self) -> tuple[Tensor, Tensor]:
        """The valid (r1, r2), each (h,)."""
        r1 = EPS + F.softplus(self.rho1)
        if self.kernel == "power":
            r2 = EPS + (2.0 - EPS) * torch.sigmoid(self.rho2)
        else:
            r2 = EPS + F.softplus(self.rho2)
        return r1, r2

    def kernel_bias(self, dist: Tensor) -> Tensor:
        """dist (…) of |m - n| -> (h, …) additive score."""
        r1, r2 = self.params()
        shape = (-1,) + (1,) * dist.dim()
        r1, r2 = r1.view(shape), r2.view(shape)
        d = dist.float().unsqueeze(0)
        if self.kernel == "power":
            # d^r2 with d = 0 -> 0; pow's gradient wrt r2 at d = 0 is nan-free via where
            return -r1 * torch.where(d > 0, d.clamp(min=1).pow(r2), torch.zeros_like(d * r2))
        return -r1 * torch.log1p(r2 * d)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads:
            raise ConfigError("position.heads", self.heads,
                              why=f"kerple has {self.heads} heads, the mixer {q.shape[1]}")
        dist = (q_pos[:, :, None] - k_pos[:, None, :]).abs()           # (B, n_q, n_k)
        return self.kernel_bias(dist).transpose(0, 1)                   # (B, h, n_q, n_k)
