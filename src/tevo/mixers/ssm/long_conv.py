"""Long convolutions: explicit kernels as long as the sequence, regularised by Squash and Smooth.

Paper: Simple Hardware-Efficient Long Convolutions for Sequence Modeling (Fu, Epstein, Nguyen,
Thomas, Zhang, Dao, Rudra & Ré, ICML 2023), §3.1–3.2, Algorithm 1:

    K ∈ ℝ^{d×L} learned directly (init N(0, 0.002²)),
    Smooth:  K ← AvgPool_p(K)        (moving average over p neighbouring taps, zero padded)
    Squash:  K ← sign(K) ⊙ max(|K| − λ, 0)        (soft threshold: sparse, small-norm kernels)
    y = GLU(W GELU(K * u + D ⊙ u))                 (the S4-style block of the authors' LongConv)

The convolution is an FFT convolution (``tevo.nn.fftconv``); decoding keeps the last L − 1
inputs (fixed size). Bidirectional: a second kernel over the future. ``kernel_dropout`` is the
authors' dropout on kernel taps (training only). Defaults λ = 0.003 (the authors' language-model
setting), p = 3. Complexity: O(d n log n) time, O(d L) parameters; O(d L) per decoded token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import MIXERS
from .common import LongConvMixer, check_float, resolve_kernel_len


def squash(k: Tensor, lam: float) -> Tensor:
    """Soft threshold: sign(K) max(|K| − λ, 0)."""
    return F.relu(k.abs() - lam) * torch.sign(k)


def smooth(k: Tensor, window: int) -> Tensor:
    """Moving average of ``window`` (odd) taps along the last dim, zero padded at the ends."""
    if window == 1:
        return k
    shape = k.shape
    flat = k.reshape(-1, 1, shape[-1])
    return F.avg_pool1d(flat, window, stride=1, padding=window // 2).reshape(shape)


@MIXERS.register(
    "long_conv",
    paper="Simple Hardware-Efficient Long Convolutions for Sequence Modeling (Fu et al., "
          "ICML 2023)",
    equation="Alg. 1: K ← Squash_λ(Smooth_p(K)) = sign(K)max(|AvgPool_p(K)|−λ, 0); "
             "y = GLU(W GELU(K*u + D u)) by FFT",
    complexity=("O(d n log n) train; O(d L) per decoded token", "O(d n) train; O(d L) state"),
    test="tests/papers/test_ssm_long_conv.py::test_long_conv_kernel_is_squashed_smoothed_"
         "explicit_kernel",
    tiny={"kernel_len": 8})
class LongConv(LongConvMixer):
    """Explicit long convolution kernels with Squash/Smooth regularisation (FFT conv)."""

    def __init__(self, d_model: int, max_len: int = 1024, causal: bool = True,
                 kernel_len: int | None = None, lam: float = 0.003, smooth_window: int = 3,
                 kernel_dropout: float = 0.0, init_std: float = 0.002):
        L = resolve_kernel_len(kernel_len, max_len)
        super().__init__(d_model, L, causal)
        self.lam = check_float("mixer.lam", lam, 0.0, lo_open=False)
        if isinstance(smooth_window, bool) or not isinstance(smooth_window, int) \
                or smooth_window < 1 or smooth_window % 2 == 0:
            raise ConfigError("mixer.smooth_window", smooth_window,
                              why=f"must be an odd positive integer (1 = no smoothing), "
                                  f"got {smooth_window!r}")
        self.smooth_window = smooth_window
        check_float("mixer.kernel_dropout", kernel_dropout, 0.0, 1.0, lo_open=False)
        if kernel_dropout >= 1.0:
            raise ConfigError("mixer.kernel_dropout", kernel_dropout, why="must lie in [0, 1)")
        check_float("mixer.init_std", init_std, 0.0)
        self.kernel = nn.Parameter(torch.randn(1 if causal else 2, d_model, L) * init_std)
        self.drop = nn.Dropout(kernel_dropout)

    def regularised(self) -> Tensor:
        """(c, d, L): Squash(Smooth(K)) — the kernel the convolution uses."""
        return self.drop(squash(smooth(self.kernel, self.smooth_window), self.lam))

    def kernels(self, L: int):
        k = self.regularised()[..., :L]
        return k[0], (k[1] if k.shape[0] > 1 else None)
