"""SGConv: a structured global convolution kernel built from a few small sub-kernels at
geometrically growing scales with decaying weights.

Paper: What Makes Convolutional Models Great on Long Sequence Modeling? (Li, Cai, Zhang, Chen &
Dey, ICLR 2023), §3.2, eq. 2, as in the authors' ``GConv`` (mode "cat"):

    k = (1/Z) · Concat(α⁰ Up₁(w₀), α¹ Up₁(w₁), α² Up₂(w₂), …, α^{S−1} Up_{2^{S−2}}(w_{S−1}))

w_i ∈ ℝ^{d×m} (m = ``kernel_dim`` parameters per scale), Up_r linear interpolation by a factor
r = 2^{max(i−1, 0)}, so sub-kernel i covers taps [m·2^{i−1}, m·2^i) and the kernel doubles its
reach with each scale while the parameter count grows only with log L: S = 1 + ⌈log₂(L/m)⌉
scales. α = ``decay`` (the two principles: sublinear parameters, decaying weights). Z is each
channel's kernel norm at initialisation (fixed buffer). The kernel is cut to L = ``kernel_len``
(default max_len) taps. Block y = GLU(W GELU(k * u + D u)); FFT convolution; decoding keeps the
last L − 1 inputs. Complexity: O(d n log n) time, O(d m log L) parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.ssm import check_positive
from ...registry import MIXERS
from .common import LongConvMixer, check_float, resolve_kernel_len


@MIXERS.register(
    "sgconv",
    paper="What Makes Convolutional Models Great on Long Sequence Modeling? (SGConv, Li et al., "
          "ICLR 2023)",
    equation="eq. 2: k = Concat_i(α^i Upsample_{2^{max(i−1,0)}}(w_i)) / Z, S = 1+⌈log₂(L/m)⌉ "
             "scales; y = GLU(W GELU(k*u + D u))",
    complexity=("O(d n log n) train; O(d L) per decoded token", "O(d m log L) parameters"),
    test="tests/papers/test_ssm_sgconv.py::test_sgconv_kernel_is_multiscale_concat_with_decay",
    tiny={"kernel_dim": 2, "kernel_len": 8})
class SGConv(LongConvMixer):
    """SGConv: multi-scale concatenated sub-kernels with decay (FFT conv)."""

    def __init__(self, d_model: int, max_len: int = 1024, causal: bool = True,
                 kernel_dim: int = 64, decay: float = 0.5, kernel_len: int | None = None):
        L = resolve_kernel_len(kernel_len, max_len)
        super().__init__(d_model, L, causal)
        self.kernel_dim = check_positive("mixer.kernel_dim", kernel_dim)
        self.decay = check_float("mixer.decay", decay, 0.0, 1.0)
        self.scales = 1 + max(0, math.ceil(math.log2(L / kernel_dim)))
        c = 1 if causal else 2
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(c, d_model, kernel_dim)) for _ in range(self.scales)])
        with torch.no_grad():
            self.register_buffer("kernel_norm", self.multiscale().norm(dim=-1, keepdim=True))

    def multiscale(self) -> Tensor:
        """Concat_i α^i Up_{2^{max(i−1,0)}}(w_i): (c, d, m·2^{S−1}), before normalisation."""
        parts = []
        for i, w in enumerate(self.weights):
            r = 2 ** max(i - 1, 0)
            up = w if r == 1 else F.interpolate(w, scale_factor=r, mode="linear")
            parts.append(up * self.decay ** i)
        return torch.cat(parts, -1)

    def kernels(self, L: int):
        k = (self.multiscale() / self.kernel_norm)[..., :L]
        return k[0], (k[1] if k.shape[0] > 1 else None)
