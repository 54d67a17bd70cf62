"""CCNN: depthwise-separable FlexConvs whose kernel network is a multiplicative anisotropic Gabor
network (MAGNet) over N-dimensional relative positions — one architecture for 1D and ND data.

Paper: Towards a General Purpose CNN for Long Range Dependencies in ND (Knigge, Romero, Gu,
Gavves, Bekkers, Tomczak, Hoogendoorn & Sonke, 2023), §3 (SepFlexConv, eq. 3), with MAGNet from
FlexConv (Romero et al., ICLR 2022) §3.3:

    g_l(Δ) = exp(−½ ‖γ_l ⊙ (Δ − μ_l)‖²) ⊙ sin(W_l Δ + b_l)        anisotropic Gabor filters
    h₁ = g₁(Δ),   h_l = (U_l h_{l−1} + c_l) ⊙ g_l(Δ),   k(Δ) = V h_L + c     (MAGNet)
    k̃(Δ) = k(Δ) · w_σ(Δ)   (FlexConv's learned Gaussian window, cropped at 0.1)
    y = W_pw GELU(Σ_τ k̃(Δ_{t,τ}) ⊙ u_τ + D ⊙ u_t)              (SepFlexConv → GELU → pointwise)

Δ ∈ ℝ^D: the kernel network takes D-dimensional relative positions (``MAGNet(dim_in=D)``); as a
token mixer over sequences D = 1 (Δ = −j/(L−1), the window centred on the current token). A 2-D
layer needs the token grid, which the mixer contract does not carry yet. Simplification: γ ~
Gamma(6/layers, 1) and W_l ∝ γ_l (the paper's scheme, without its per-layer α schedule).
FFT convolution O(d n log n); decoding keeps the last L − 1 inputs (fixed size).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...registry import MIXERS
from .ckconv import FlexConv


class MAGNet(nn.Module):
    """Multiplicative anisotropic Gabor network: Δ (…, dim_in) → (…, out)."""

    def __init__(self, dim_in: int, hidden: int, out: int, layers: int = 3,
                 omega_0: float = 30.0, out_scale: float = 1.0, alpha: float = 6.0):
        super().__init__()
        gamma = torch.distributions.Gamma(alpha / layers, 1.0)
        self.filters = nn.ModuleList(nn.Linear(dim_in, hidden) for _ in range(layers))
        self.mu = nn.ParameterList(nn.Parameter(torch.rand(hidden, dim_in) * 2 - 1)
                                   for _ in range(layers))
        self.gamma = nn.ParameterList(nn.Parameter(gamma.sample((hidden, dim_in)))
                                      for _ in range(layers))
        self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, out)
        with torch.no_grad():
            for lin, g in zip(self.filters, self.gamma):
                lin.weight.copy_(torch.randn_like(lin.weight) * g * omega_0 / math.sqrt(dim_in)
                                 / layers)
                lin.bias.uniform_(-math.pi, math.pi)
            self.out.weight.mul_(out_scale)
            self.out.bias.zero_()

    def gabor(self, l: int, x: Tensor) -> Tensor:
        """g_l(Δ): Gaussian envelope (per unit, anisotropic) × sinusoid, (…, hidden)."""
        env = torch.exp(-0.5 * ((x.unsqueeze(-2) - self.mu[l]) * self.gamma[l]).pow(2).sum(-1))
        return env * torch.sin(self.filters[l](x))

    def forward(self, x: Tensor) -> Tensor:
        h = self.gabor(0, x)
        for l, lin in enumerate(self.linears, start=1):
            h = lin(h) * self.gabor(l, x)
        return self.out(h)


@MIXERS.register(
    "ccnn",
    paper="Towards a General Purpose CNN for Long Range Dependencies in ND (CCNN, Knigge et al., "
          "2023); MAGNet from FlexConv (Romero et al., ICLR 2022)",
    equation="SepFlexConv: y = W_pw GELU(Σ_τ MAGNet(Δ)·w_σ(Δ) ⊙ u_τ + D u_t); MAGNet h_l = "
             "(U h_{l−1}+c) ⊙ exp(−½‖γ(Δ−μ)‖²) sin(WΔ+b)",
    complexity=("O(d n log n + L h²) train; O(d L + L h²) per decoded token",
                "O(d n) train; O(d L) state"),
    test="tests/papers/test_ssm_ccnn.py::test_ccnn_kernel_is_a_windowed_magnet",
    tiny={"hidden": 8, "layers": 2, "init_size": 0.5, "kernel_len": 8})
class CCNN(FlexConv):
    """CCNN's SepFlexConv: MAGNet kernel × learned Gaussian window, depthwise, then pointwise."""

    def __init__(self, d_model: int, max_len: int = 1024, causal: bool = True,
                 kernel_len: int | None = None, hidden: int = 32, layers: int = 3,
                 omega_0: float = 30.0, init_size: float = 0.25):
        super().__init__(d_model, max_len, causal, kernel_len, hidden, layers, omega_0,
                         init_size)
        self.output = nn.Linear(d_model, d_model)               # pointwise, after GELU

    def kernel_net(self, dim_in, hidden, out, layers, omega_0, out_scale):
        return MAGNet(dim_in, hidden, out, layers, omega_0, out_scale)
