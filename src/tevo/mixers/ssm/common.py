"""Shared pieces of the state-space and long-convolution mixers.

``LongConvMixer`` is the S4-style block every long-convolution member uses (S4D's convolution
form, long convolutions, SGConv, CKConv/FlexConv, CCNN): per channel a kernel k (d, L) from the
subclass's parametrisation, then

    y = GLU(W · GELU(k * u + D ⊙ u))                  (S4 / S4D / LongConv / SGConv block)

with the causal convolution computed by ``tevo.nn.fftconv.fft_conv`` (O(n log n)); the
bidirectional form adds a second kernel over the future (k_b * u reversed, its tap 0 dropped so
the current token is counted once). Decoding keeps the last L − 1 inputs (``conv_with_state``):
a fixed-size buffer, O(L d) per token whatever the position.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.fftconv import check_kernel_len, conv_buffer, conv_with_state, fft_conv
from ...nn.ssm import check_discretization, check_positive, discretize, ssm_kernel, ssm_scan
from ..base import Mixer, Supports


def check_float(field: str, value, lo: float | None = None, hi: float | None = None,
                lo_open: bool = True) -> float:
    """A float option in (lo, hi] (or [lo, hi] with lo_open=False): else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, value, why=f"must be a finite number, got {value!r}")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and value > hi)
    if bad:
        left = "(" if lo_open else "["
        raise ConfigError(field, value, why=f"must lie in {left}{lo}, {hi}], got {value!r}")
    return float(value)


def resolve_kernel_len(kernel_len, max_len: int, field: str = "mixer.kernel_len") -> int:
    """kernel_len None → the model's max_len; otherwise an int in [1, max_len]."""
    return check_kernel_len(field, max_len if kernel_len is None else kernel_len, max_len)


def reverse(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.flip(1)


def two_sided_conv(u: Tensor, k_fwd: Tensor, k_bwd: Tensor, D: Tensor | None,
                   mask: Tensor | None) -> Tensor:
    """Bidirectional long convolution: Σ_{j≥0} k_f[j] u_{t-j} + Σ_{j≥1} k_b[j] u_{t+j} + D u_t.
    The future half is the causal convolution of the reversed sequence (tap 0 dropped)."""
    k_bwd = torch.cat([torch.zeros_like(k_bwd[..., :1]), k_bwd[..., 1:]], -1)
    y = fft_conv(u, k_fwd, D, mask)
    return y + reverse(fft_conv(reverse(u), k_bwd, None, reverse(mask)))


def decode_kernel(module: nn.Module, L: int, make):
    """``make(L)`` for a decoding step, computed once while the parameters stay the same.

    Kernel networks (Hyena's FFN, CKConv's SIREN) would otherwise be re-evaluated on all L taps
    for every generated token. Only without autograd (decoding); the key holds every
    parameter's storage, version counter (bumped by optimiser steps and load_state_dict) and
    dtype, and the autocast state, so any change recomputes it."""
    if torch.is_grad_enabled():
        return make(L)
    params = list(module.parameters())
    dev = params[0].device.type if params else "cpu"
    key = (L, torch.is_autocast_enabled(dev),
           tuple((p.data_ptr(), p._version, p.dtype) for p in params))
    cache = module.__dict__.get("_decode_kernel")
    if cache is None or cache[0] != key:
        cache = (key, make(L))
        module.__dict__["_decode_kernel"] = cache
    return cache[1]


class GLUOutput(nn.Module):
    """Position-wise output of the S4 block: GLU(W y) with W: d → 2d."""

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.Linear(d_model, 2 * d_model)

    def forward(self, y: Tensor) -> Tensor:
        return F.glu(self.linear(y), dim=-1)


class LongConvMixer(Mixer):
    """Base of the kernel-convolution mixers: subclasses define ``kernels(L)``."""

    supports = Supports(causal=True, bidirectional=True, cache=True)

    def __init__(self, d_model: int, kernel_len: int, causal: bool = True):
        super().__init__()
        self.d_model, self.kernel_len, self.causal = d_model, kernel_len, causal
        self.D = nn.Parameter(torch.randn(d_model))
        self.output = GLUOutput(d_model)

    def kernels(self, L: int) -> tuple[Tensor, Tensor | None]:   # pragma: no cover
        """Taps 0..L-1 of the forward kernel (d, L) and, bidirectional, the backward one."""
        raise NotImplementedError

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"buf": conv_buffer(batch, self.kernel_len, self.d_model, device)}

    def convolve(self, u: Tensor, ctx: MixerContext, state=None):
        """k * u + D u in the mixer's mode; returns (y, new state)."""
        n = u.shape[1]
        mask = ctx.query_mask(n)
        if not self.causal:
            k_f, k_b = self.kernels(min(n, self.kernel_len))
            return two_sided_conv(u, k_f, k_b, self.D, mask), None
        if state is None:
            k, _ = self.kernels(min(n, self.kernel_len))
            return fft_conv(u, k, self.D, mask), None
        k, _ = decode_kernel(self, self.kernel_len, self.kernels)
        y, buf = conv_with_state(u, k, state["buf"], self.D, mask)
        return y, {"buf": buf}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        y, new_state = self.convolve(x, ctx, state)               # (B, n, d)
        return self.output(F.gelu(y).to(x.dtype)), new_state


def s4d_lin_init(H: int, N: int) -> tuple[Tensor, Tensor]:
    """S4D-Lin initialisation (S4D §4): Λ_n = −1/2 + iπn for n < N (one of each conjugate pair),
    as (log(−Re Λ), Im Λ) parameters, each (H, N)."""
    log_re = torch.full((H, N), math.log(0.5))
    im = math.pi * torch.arange(N, dtype=torch.float32).expand(H, N).clone()
    return log_re, im


def log_dt_init(shape, dt_min: float = 1e-3, dt_max: float = 1e-1) -> Tensor:
    """log Δ uniform in [log dt_min, log dt_max] (S4 / S4D / S5 default)."""
    return torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def check_dt(dt_min, dt_max) -> tuple[float, float]:
    dt_min = check_float("mixer.dt_min", dt_min, 0.0)
    dt_max = check_float("mixer.dt_max", dt_max, 0.0)
    if dt_min > dt_max:
        raise ConfigError("mixer.dt_min", dt_min, why=f"must be <= dt_max ({dt_max})")
    return dt_min, dt_max


class DiagonalSSM(nn.Module):
    """The S4D kernel module: H channels, each a diagonal SSM with N/2 complex states (one of each
    conjugate pair; output 2 Re(C x)), B = 1 folded into C, S4D-Lin init, learned log Δ;
    ``channels`` output maps (C) share Λ and Δ (a second one serves the backward direction).

    ``run(u)`` maps u (B, n, ..., H) to y (B, n, ..., H) — every leading group of channels
    through the same per-channel SSM — by FFT convolution with the kernel (``form="conv"``, from
    a zero state) or by the parallel scan (``form="scan"``, or whenever a state x0 is given),
    returning the last state (B, ..., H, N/2) in the scan form."""

    def __init__(self, H: int, state_size: int, channels: int = 1,
                 discretization: str = "zoh", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 field: str = "mixer.state_size"):
        super().__init__()
        check_positive(field, state_size)
        if state_size % 2:
            raise ConfigError(field, state_size,
                              why=f"must be a positive even integer (conjugate pairs), "
                                  f"got {state_size}")
        self.discretization = check_discretization(discretization)
        dt_min, dt_max = check_dt(dt_min, dt_max)
        self.H, self.N = H, state_size // 2
        log_re, im = s4d_lin_init(H, self.N)
        self.log_A_real = nn.Parameter(log_re)                      # (H, N/2)
        self.A_imag = nn.Parameter(im)                              # (H, N/2)
        self.log_dt = nn.Parameter(log_dt_init(H, dt_min, dt_max))  # (H,)
        self.C = nn.Parameter(torch.view_as_real(                   # (c, H, N/2) complex
            torch.randn(channels, H, self.N, dtype=torch.cfloat) * 0.5 ** 0.5))

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ā, B̄ (H, N/2) and 2C (c, H, N/2) — the factor 2 sums each conjugate pair."""
        # in fp32 whatever the parameters' dtype (complex bf16 does not exist)
        Lambda = torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())
        A_bar, B_bar = discretize(Lambda, None, torch.exp(self.log_dt.float())[:, None],
                                  self.discretization)
        return A_bar, B_bar, 2 * torch.view_as_complex(self.C.float())

    def kernel(self, L: int) -> Tensor:
        """K (c, H, L): the convolution kernel the SSM induces (Vandermonde, S4D eq. 6)."""
        A_bar, B_bar, C = self.discrete()
        return ssm_kernel(A_bar, B_bar, C, L)

    def init_state(self, batch: int, *group, device=None) -> Tensor:
        return torch.zeros(batch, *group, self.H, self.N, dtype=torch.cfloat, device=device)

    def run(self, u: Tensor, x0: Tensor | None = None, form: str = "conv", channel: int = 0):
        if form == "conv" and x0 is None:
            B, n = u.shape[:2]
            K = self.kernel(n)[channel]                                # (H, n)
            flat = u.reshape(B, n, -1)
            K = K.repeat(flat.shape[-1] // self.H, 1)                  # groups share the kernel
            return fft_conv(flat, K).view(u.shape), None
        A_bar, B_bar, C = self.discrete()
        y, xs = ssm_scan(u, A_bar, B_bar, C[channel], x0)
        return y, xs[:, -1]
