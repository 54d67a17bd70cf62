"""Continuous kernel convolutions: the kernel is a small network of the relative position
(CKConv), optionally multiplied by a learnable Gaussian window that sets its size (FlexConv).

CKConv — CKConv: Continuous Kernel Convolution For Sequential Data (Romero, Kuzina, Bekkers,
Tomczak & Hoogendoorn, ICLR 2022), §3–4, eq. 4–6:

    k(Δ) = MLP_ψ(Δ),  Δ = (τ − t)/(L − 1) ∈ [−1, 0] the normalised relative position of key τ
    MLP_ψ: SIREN, Linear → sin(ω₀ ·) repeated ``layers`` times, then Linear (Sitzmann et al.)
    y_t = Σ_τ k(Δ_{t,τ}) ⊙ u_τ  (+ D ⊙ u_t),   out = GLU(W GELU(y))

The kernel is defined at every real Δ, so one network gives kernels of any length or
resolution, with O(hidden²) parameters independent of L. Taps sit on the grid of ``kernel_len``
(default the model's max_len) positions, so a tap's value does not depend on n. Bidirectional:
Δ ∈ [−1, 1], future keys read the same network at positive Δ.

FlexConv — FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes (Romero,
Bruintjes, Tomczak, Bekkers, Hoogendoorn & van Gemert, ICLR 2022), §3.1, eq. 3:

    k(Δ) = MLP_ψ(Δ) · w_σ(Δ),   w_σ(Δ) = exp(−Δ² / (2σ²)),  cropped where w_σ < 0.1

σ is learned, so the effective kernel size 2σ√(2 ln 10)·(L − 1) (one side causal) is learned by
gradient descent; taps beyond the crop are exactly zero. The window is centred on the current
token (μ = 0; the paper also learns μ for non-causal data).

Simplifications (both): depthwise-separable — the kernel network emits one filter per channel
and the block's pointwise output layer mixes channels (as CCNN's SepFlexConv), instead of a full
d × d kernel; FlexConv's kernel network is the SIREN above, not MAGNet (``ccnn`` uses MAGNet).
FFT convolution O(d n log n); decoding keeps the last L − 1 inputs (fixed size), O(d L) a token.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...nn.ssm import check_positive
from ...registry import MIXERS
from .common import LongConvMixer, check_float, resolve_kernel_len


class Siren(nn.Module):
    """x (…, dim_in) → (…, out): [Linear → sin(ω₀ ·)] × layers → Linear, SIREN initialisation."""

    def __init__(self, dim_in: int, hidden: int, out: int, layers: int = 3,
                 omega_0: float = 30.0, out_scale: float = 1.0):
        super().__init__()
        self.omega_0 = omega_0
        dims = [dim_in] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(hidden, out)
        with torch.no_grad():
            for i, lin in enumerate(self.hidden):
                bound = 1 / lin.in_features if i == 0 else \
                    math.sqrt(6 / lin.in_features) / omega_0
                lin.weight.uniform_(-bound, bound)
            bound = math.sqrt(6 / hidden) / omega_0
            self.out.weight.uniform_(-bound, bound)
            self.out.weight.mul_(out_scale * omega_0)
            self.out.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.hidden:
            x = torch.sin(self.omega_0 * lin(x))
        return self.out(x)


class ContinuousKernelConv(LongConvMixer):
    """Base: taps k(Δ_j) of a network over relative positions Δ_j = ∓j/(L−1)."""

    def __init__(self, d_model: int, max_len: int, causal: bool, kernel_len: int | None,
                 hidden: int, layers: int, omega_0: float, dim_in: int = 1):
        L = resolve_kernel_len(kernel_len, max_len)
        super().__init__(d_model, L, causal)
        check_positive("mixer.hidden", hidden)
        check_positive("mixer.layers", layers)
        check_float("mixer.omega_0", omega_0, 0.0)
        self.net = self.kernel_net(dim_in, hidden, d_model, layers, omega_0,
                                   out_scale=1 / math.sqrt(L))

    def kernel_net(self, dim_in, hidden, out, layers, omega_0, out_scale):
        return Siren(dim_in, hidden, out, layers, omega_0, out_scale)

    def relative_positions(self, L: int) -> Tensor:
        """Δ_j = −j/(L_k − 1) for tap j (key j steps back) on the kernel's fixed grid."""
        return -torch.arange(L, dtype=self.D.dtype, device=self.D.device) / max(
            self.kernel_len - 1, 1)

    def continuous_kernel(self, delta: Tensor) -> Tensor:
        """k(Δ) for Δ (L,): (d, L)."""
        return self.net(delta[:, None]).transpose(0, 1)

    def kernels(self, L: int):
        delta = self.relative_positions(L)
        k_f = self.continuous_kernel(delta)
        k_b = None if self.causal else self.continuous_kernel(-delta)
        return k_f, k_b


@MIXERS.register(
    "ckconv",
    paper="CKConv: Continuous Kernel Convolution For Sequential Data (Romero et al., ICLR 2022)",
    equation="eq. 4–6: k(Δ) = SIREN_ψ(Δ) of the normalised relative position; "
             "y = GLU(W GELU(Σ_τ k(Δ_{t,τ}) u_τ + D u_t)) by FFT",
    complexity=("O(d n log n + L h²) train; O(d L + L h²) per decoded token",
                "O(d n) train; O(d L) state; O(h² + h d) parameters"),
    test="tests/papers/test_ssm_ckconv.py::test_ckconv_kernel_is_an_mlp_of_relative_positions",
    tiny={"hidden": 8, "layers": 2, "kernel_len": 8})
class CKConv(ContinuousKernelConv):
    """CKConv: a SIREN of the relative position generates every tap (depthwise, FFT conv)."""

    def __init__(self, d_model: int, max_len: int = 1024, causal: bool = True,
                 kernel_len: int | None = None, hidden: int = 32, layers: int = 3,
                 omega_0: float = 30.0):
        super().__init__(d_model, max_len, causal, kernel_len, hidden, layers, omega_0)


@MIXERS.register(
    "flexconv",
    paper="FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes (Romero et "
          "al., ICLR 2022)",
    equation="eq. 3: k(Δ) = SIREN_ψ(Δ)·exp(−Δ²/2σ²), cropped where the window < 0.1; σ learned",
    complexity=("O(d n log n + L h²) train; O(d L + L h²) per decoded token",
                "O(d n) train; O(d L) state"),
    test="tests/papers/test_ssm_ckconv.py::test_flexconv_learned_width_sets_the_kernel_size",
    tiny={"hidden": 8, "layers": 2, "init_size": 0.5, "kernel_len": 8})
class FlexConv(ContinuousKernelConv):
    """FlexConv: CKConv times a learnable Gaussian window: a kernel size learned by gradient."""

    THRESHOLD = 0.1

    def __init__(self, d_model: int, max_len: int = 1024, causal: bool = True,
                 kernel_len: int | None = None, hidden: int = 32, layers: int = 3,
                 omega_0: float = 30.0, init_size: float = 0.25):
        super().__init__(d_model, max_len, causal, kernel_len, hidden, layers, omega_0)
        init_size = check_float("mixer.init_size", init_size, 0.0, 1.0)
        # the window reaches THRESHOLD at |Δ| = σ √(2 ln(1/THRESHOLD)) = init_size
        sigma = init_size / math.sqrt(2 * math.log(1 / self.THRESHOLD))
        self.log_sigma = nn.Parameter(torch.full((d_model, 1), math.log(sigma)))

    def window(self, delta: Tensor) -> Tensor:
        """w_σ(Δ) (d, L), zero where it falls below the threshold (the crop)."""
        w = torch.exp(-0.5 * (delta / self.log_sigma.exp()) ** 2)
        return w * (w >= self.THRESHOLD)

    def effective_size(self) -> Tensor:
        """Taps per channel inside the crop: ⌊σ√(2 ln 10)(L − 1)⌋ + 1 (one side)."""
        r = self.log_sigma.exp()[:, 0] * math.sqrt(2 * math.log(1 / self.THRESHOLD))
        return torch.clamp(torch.floor(r * (self.kernel_len - 1)) + 1, max=self.kernel_len)

    def continuous_kernel(self, delta: Tensor) -> Tensor:
        return super().continuous_kernel(delta) * self.window(delta)
