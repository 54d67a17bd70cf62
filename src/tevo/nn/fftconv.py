"""Causal long convolution by FFT, its direct reference, and its fixed-size decoding buffer.

Used by every long-convolution mixer (S4D's convolution form, H3, Hyena, long convolutions,
SGConv, CKConv/FlexConv, CCNN) — one implementation for all of them.

    y_t = Σ_{j=0}^{min(t, L-1)} k_j ⊙ u_{t-j}  +  D ⊙ u_t           (per channel, causal)

Layout: u is (B, n, d) — channels last, like every mixer's input — and the kernel is (d, L)
(one filter per channel, tap j acts on the input j steps back), or (B, d, L) for per-sample
kernels. Computed as irfft(rfft(u, N) · rfft(k, N))[:n] with N ≥ n + min(L, n) − 1 (next power
of two), so the circular wrap never reaches a kept output: O(B d N log N) time, O(B d N) memory.
Taps beyond n can never reach an output and are dropped first, so a kernel longer than the input
costs no more than one of length n. Runs in fp32 (autocast off: low-precision FFTs lose the
small taps of long kernels), returns the input dtype.

Padding: ``mask`` (B, n) with True = real token zeroes padded inputs before the convolution, so
under left padding a padded position contributes nothing to any real one (every output depends
on the inputs only through the relative offset j, so the real tokens see exactly the unpadded
sequence shifted in time).

Decoding: a kernel of finite length L needs only the last L − 1 inputs; ``conv_with_state``
keeps exactly that window as a fixed-size buffer (B, L − 1, d) — never a cache growing with n.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import ConfigError
from ..registry import TOOLS

# An FFT longer than this per channel (2^26 fp32 complex values = 512 MiB per channel row
# batch) would exhaust memory long before it finished; refuse with a one-line error instead.
MAX_FFT_LEN = 1 << 26


def fft_size(n: int, L: int) -> int:
    """The FFT length for a causal convolution of n inputs with L (≤ n) taps: the next power of
    two ≥ n + L − 1. Raises ConfigError when it would exceed ``MAX_FFT_LEN``."""
    need = max(1, n + L - 1)
    size = 1 << (need - 1).bit_length()
    if size > MAX_FFT_LEN:
        raise ConfigError("sequence length", n,
                          why=f"FFT convolution of length {n} needs an FFT of {size} > "
                              f"{MAX_FFT_LEN} points (valid: n + kernel length <= "
                              f"{MAX_FFT_LEN // 2})")
    return size


def check_kernel_len(field: str, L, max_len: int | None = None) -> int:
    """Validate a kernel length option: an int in [1, max_len] (one-line ConfigError)."""
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ConfigError(field, L, why=f"must be a positive integer, got {L!r}")
    if max_len is not None and L > max_len:
        raise ConfigError(field, L, why=f"kernel length {L} exceeds the model's max_len "
                                        f"{max_len} (valid: 1..{max_len})")
    return L


def _prepare(u: Tensor, k: Tensor, mask: Tensor | None):
    if u.dim() != 3:
        raise ValueError(f"u must be (B, n, d), got {tuple(u.shape)}")
    if k.dim() not in (2, 3) or k.shape[-2] != u.shape[-1]:
        raise ValueError(f"kernel must be (d, L) or (B, d, L) with d={u.shape[-1]}, "
                         f"got {tuple(k.shape)}")
    uf = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    if mask is not None:
        uf = uf * mask[..., None].to(uf.dtype)
    kf = k.to(uf.dtype)
    return uf, kf


def _spectra(u: Tensor, k: Tensor) -> tuple[Tensor, Tensor, int]:
    """rfft of u (B, n, d) as (B, d, N/2+1) rows (contiguous FFTs) and of k (…, d, L), and N."""
    N = fft_size(u.shape[1], k.shape[-1])
    return torch.fft.rfft(u.transpose(1, 2), n=N, dim=-1), torch.fft.rfft(k, n=N, dim=-1), N


def _last_nonzero_keep(g: Tensor) -> Tensor:
    """(B, n, 1) mask of positions ≤ the last time step where g (B, n, d) is nonzero."""
    nz = (g != 0).any(-1)                                  # (B, n)
    seen = nz.flip(1).long().cummax(1).values.flip(1)      # 1 up to the last nonzero step
    return seen.unsqueeze(-1).to(g.dtype)


class _CausalFFTConv(torch.autograd.Function):
    """Causal FFT convolution y_t = Σ_j k_j u_{t-j} (t < n) with its adjoints in the frequency
    domain: ∂L/∂u_s = Σ_j k_j g_{s+j} = irfft(G·conj(K)) and ∂L/∂k_j = Σ_t g_t u_{t-j} =
    irfft(G·conj(U)) — N ≥ n + L − 1 keeps the negative lags of both correlations out of the
    kept range. The forward's spectra are reused, so the backward costs one rfft and two irffts.

    The input gradient of a causal convolution is exactly zero after the last step where the
    output gradient g is nonzero; rounding in the FFT leaves ~1e-10 there instead, and the
    backward restores the exact zeros, so "no gradient flows from the future" holds bit for
    bit."""

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor) -> Tensor:
        n, L = u.shape[1], k.shape[-1]
        U, K, N = _spectra(u, k)                           # (B, d, F), (…, d, F)
        ctx.save_for_backward(U, K)
        ctx.shape = (n, L, N, k.dim())
        return torch.fft.irfft(U * K, n=N, dim=-1)[..., :n].transpose(1, 2)   # (B, n, d)

    @staticmethod
    @once_differentiable                                   # spectra are saved, not inputs
    def backward(ctx, g: Tensor):
        U, K = ctx.saved_tensors
        n, L, N, kdim = ctx.shape
        G = torch.fft.rfft(g.transpose(1, 2), n=N, dim=-1)     # (B, d, F)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(G * K.conj(), n=N, dim=-1)[..., :n].transpose(1, 2)
            grad_u = grad_u * _last_nonzero_keep(g)
        if ctx.needs_input_grad[1]:
            grad_k = torch.fft.irfft(G * U.conj(), n=N, dim=-1)[..., :L]    # (B, d, L)
            if kdim == 2:
                grad_k = grad_k.sum(0)
        return grad_u, grad_k


def fft_conv(u: Tensor, k: Tensor, D: Tensor | None = None,
             mask: Tensor | None = None) -> Tensor:
    """Causal convolution of u (B, n, d) with per-channel kernels k (d, L) or (B, d, L), plus the
    skip term D (d,) ⊙ u. ``mask`` (B, n), True = real: padded inputs are zeroed first.
    O(n log n) by FFT. Returns (B, n, d) in u's dtype."""
    n = u.shape[1]
    uf, kf = _prepare(u, k, mask)
    with torch.autocast(device_type=u.device.type, enabled=False):
        kf = kf[..., :n]                                   # taps ≥ n never reach an output
        y = _CausalFFTConv.apply(uf, kf)                   # (B, n, d)
        if D is not None:
            y = y + uf * D.to(uf.dtype)
    return y.to(u.dtype)


def direct_conv(u: Tensor, k: Tensor, D: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
    """The O(n L) reference: y_t = Σ_j k_j u_{t-j} (+ D u_t), one shifted product per tap."""
    n = u.shape[1]
    uf, kf = _prepare(u, k, mask)
    y = torch.zeros_like(uf)
    for j in range(min(kf.shape[-1], n)):
        tap = kf[..., j]                                   # (d,) or (B, d)
        tap = tap.unsqueeze(-2) if tap.dim() == 2 else tap
        y[:, j:] = y[:, j:] + tap * uf[:, :n - j]
    if D is not None:
        y = y + uf * D.to(uf.dtype)
    return y.to(u.dtype)


def conv_buffer(batch: int, L: int, d: int, device=None, dtype=None) -> Tensor:
    """The empty decoding state of a length-L causal convolution: the last L − 1 inputs (zeros
    stand for 'before the start', which is what a causal convolution sees there)."""
    return torch.zeros(batch, max(L - 1, 0), d, device=device, dtype=dtype or torch.float32)


def conv_with_state(u: Tensor, k: Tensor, buf: Tensor, D: Tensor | None = None,
                    mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Continue a causal convolution from its buffer: the last L − 1 inputs before u.

    u (B, n, d), k (d, L), buf (B, L − 1, d). Returns y (B, n, d) and the new buffer (the last
    L − 1 of buf ++ masked u). Exact: a length-L kernel needs no input older than L − 1 steps.
    One token costs O(L d) (a dot product per channel), flat in the position of the token."""
    L = k.shape[-1]
    keep = buf.shape[1]
    uf = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    if mask is not None:
        uf = uf * mask[..., None].to(uf.dtype)
    full = torch.cat([buf.to(uf.dtype), uf], 1)            # (B, L-1+n, d)
    if u.shape[1] == 1:                                    # one decoding step: a dot product
        window = full.flip(1)                              # (B, L, d): u_t, u_{t-1}, ...
        kt = k.to(uf.dtype).transpose(-1, -2)              # (L, d) or (B, L, d)
        y = (window[:, :L] * kt).sum(1, keepdim=True)
        if D is not None:
            y = y + uf * D.to(uf.dtype)
    else:
        y = fft_conv(full, k, None)[:, keep:]
        if D is not None:
            y = y + uf * D.to(uf.dtype)
    new_buf = full[:, full.shape[1] - keep:] if keep > 0 else buf
    return y.to(u.dtype), new_buf


TOOLS.register(
    "fft_conv",
    paper="Simple Hardware-Efficient Long Convolutions for Sequence Modeling (Fu et al., 2023); "
          "Hyena Hierarchy (Poli et al., 2023): causal convolution via FFT",
    equation="y_t = Σ_{j<min(t+1,L)} k_j ⊙ u_{t-j} + D ⊙ u_t = irfft(rfft(u,N)·rfft(k,N))[:n], "
             "N ≥ n+L−1",
    complexity=("O(B d n log n)", "O(B d n)"),
    test="tests/papers/test_ssm_primitives.py::test_fft_conv_equals_direct_conv",
    tiny={},
)(fft_conv)
