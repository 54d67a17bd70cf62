"""Diagonal state space models: discretisation, the convolution kernel they induce, and the
recurrent / scan forms — one implementation shared by S4D, S5, H3, BiGS and the linear RNNs.

Papers: On the Parameterization and Initialization of Diagonal State Space Models (S4D, Gu et
al., 2022) §2–3; Simplified State Space Layers for Sequence Modeling (S5, Smith et al., 2023)
§2–3; Efficiently Modeling Long Sequences with Structured State Spaces (S4, Gu et al., 2022) §2.

Continuous diagonal SSM per channel (A = diag(Λ), complex):
    x'(t) = Λ x(t) + B u(t),   y(t) = Re(C x(t))
discretised with step Δ:
    ZOH       Ā = exp(ΔΛ),                    B̄ = (Ā − 1)/Λ · B         (S4D eq. 5, S5 eq. 6)
    bilinear  Ā = (1 + ΔΛ/2)/(1 − ΔΛ/2),       B̄ = Δ/(1 − ΔΛ/2) · B      (S4 eq. 3)
    x_t = Ā ⊙ x_{t-1} + B̄ u_t,   y_t = Re(C x_t)                         (recurrence)
and, unrolled from x_{-1} = 0, y = K * u with the Vandermonde kernel
    K_l = Re(Σ_s C_s B̄_s Ā_s^l),  l = 0..L-1                              (S4D eq. 6)
S4D keeps N/2 states of each conjugate pair: multiply C by 2 to get the pair's real output.

Shapes: Λ, B̄, C are (..., H, N) (H channels/heads, N states per channel) and broadcast against
each other; the scan form takes inputs u (B, n, H) — or a precomputed drive b (B, n, H, N) for
multi-input (MIMO, S5) systems — and runs ``tevo.nn.scan.parallel_scan`` along n. Kernel:
O(H N L) time, O(H N √L) memory (blocked); scan: O(B n H N) work, O(B n H N) memory; step:
O(B H N).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import TOOLS
from .scan import parallel_scan

DISCRETIZATIONS = ("zoh", "bilinear")


def check_discretization(method: str, field: str = "mixer.discretization") -> str:
    if method not in DISCRETIZATIONS:
        raise ConfigError(field, method, DISCRETIZATIONS)
    return method


def check_positive(field: str, value) -> int:
    """A positive integer option (state size, order, heads): else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, value, why=f"must be a positive integer, got {value!r}")
    return value


def discretize(Lambda: Tensor, B: Tensor | None, dt: Tensor,
               method: str = "zoh") -> tuple[Tensor, Tensor]:
    """Ā, B̄ of x' = Λx + Bu with step Δ (``dt`` broadcast against Λ, e.g. (H, 1) for (H, N)).
    B = None means B = 1 (B̄ is then the input gain alone). Complex Λ; returns complex Ā, B̄."""
    check_discretization(method, "discretization")
    dtL = dt * Lambda
    if method == "zoh":
        A_bar = torch.exp(dtL)
        gain = (A_bar - 1) / Lambda
    else:
        den = 1 - dtL / 2
        A_bar = (1 + dtL / 2) / den
        gain = dt / den
    B_bar = gain if B is None else gain * B
    return A_bar, B_bar


def vandermonde(A_bar: Tensor, L: int) -> Tensor:
    """Ā^l for l = 0..L-1: (..., N) → (..., N, L), via exp(l log Ā) (one vectorised op)."""
    ar = torch.arange(L, device=A_bar.device, dtype=A_bar.real.dtype)
    return torch.exp(torch.log(A_bar).unsqueeze(-1) * ar)


def ssm_kernel(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """The convolution kernel of the discrete SSM: K_l = Re(Σ_s C_s B̄_s Ā_s^l), (..., H, L).
    Convolving u with it (``fft_conv``) equals running the recurrence from a zero state.

    Blocked, so that no (H, N, L) tensor is ever made: with l = gT + t (T = ⌈√L⌉ taps per
    block), Ā^l = Ā^{gT} Ā^t and

        K_{gT+t} = Re Σ_s (w_s Ā_s^{gT}) Ā_s^t = Σ_s Re(W)_{gs} Re(V)_{st} − Im(W)_{gs} Im(V)_{st}

    with w = C B̄, W (…, H, G, N) and V (H, N, T): two real batched matmuls, O(H N L) FLOPs but
    O(H N √L) memory (the dense Vandermonde form, ``ssm_kernel_dense``, holds several (H, N, L)
    tensors for the backward — 0.3 GB each at H = 128, N = 32, L = 16k — and was memory-bound).
    Real arithmetic in the matmuls: complex matmuls are several times slower on CPU.
    """
    w = C * B_bar                                              # (..., H, N)
    log_a = torch.log(A_bar)                                   # (H, N) (or broadcastable)
    T = max(1, math.isqrt(max(L - 1, 0)) + 1)                  # ⌈√L⌉-ish block of taps
    G = -(-L // T)                                             # blocks
    real = A_bar.real.dtype
    t = torch.arange(T, device=A_bar.device, dtype=real)
    g = torch.arange(G, device=A_bar.device, dtype=real) * T
    V = torch.exp(log_a.unsqueeze(-1) * t)                     # Ā^t: (…, H, N, T)
    W = (w.unsqueeze(-1) * torch.exp(log_a.unsqueeze(-1) * g)).transpose(-1, -2)  # (…, H, G, N)
    K = W.real @ V.real - W.imag @ V.imag                      # (…, H, G, T)
    return K.flatten(-2)[..., :L]


def ssm_kernel_dense(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """The plain Vandermonde form of ``ssm_kernel`` (reference for its blocked fast path).

    In real arithmetic: with log Ā = log r + iθ and w = C B̄,
    K_l = Σ_s r_s^l (Re w_s cos lθ_s − Im w_s sin lθ_s); O(H N L) time and memory.
    """
    w = C * B_bar                                              # (..., H, N)
    log_a = torch.log(A_bar)
    ar = torch.arange(L, device=A_bar.device, dtype=A_bar.real.dtype)
    mag = torch.exp(log_a.real.unsqueeze(-1) * ar)             # r^l: (..., H, N, L)
    ang = log_a.imag.unsqueeze(-1) * ar                        # lθ
    return (mag * (w.real.unsqueeze(-1) * torch.cos(ang)
                   - w.imag.unsqueeze(-1) * torch.sin(ang))).sum(-2)


def ssm_scan(u: Tensor | None, A_bar: Tensor, B_bar: Tensor | None, C: Tensor | None = None,
             x0: Tensor | None = None, drive: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All states of x_t = Ā x_{t-1} + B̄ u_t by the parallel scan, and y_t = Re(C x_t).

    u (B, n, H) with B̄ (H, N); or ``drive`` (B, n, H, N) = B̄ u_t precomputed (MIMO systems).
    Ā (H, N) or (B, n, H, N) (time-varying); x0 (B, H, N) the state before u (None = 0).
    Returns (y (B, n, H) real — or None when C is None — and all states x (B, n, H, N))."""
    if drive is None:
        drive = B_bar * u.unsqueeze(-1).to(B_bar.dtype)        # (B, n, H, N)
    a = A_bar if A_bar.dim() == drive.dim() else A_bar.expand(drive.shape)
    x = parallel_scan(a, drive, x0, dim=1)                     # (B, n, H, N)
    y = None if C is None else (x * C).sum(-1).real
    return y, x


def ssm_step(x: Tensor, u_t: Tensor | None, A_bar: Tensor, B_bar: Tensor | None,
             C: Tensor | None = None, drive: Tensor | None = None):
    """One recurrent step: x ← Ā x + B̄ u_t (u_t (B, H)), y = Re(C x). Returns (y, x)."""
    if drive is None:
        drive = B_bar * u_t.unsqueeze(-1).to(B_bar.dtype)
    x = A_bar * x + drive
    y = None if C is None else (x * C).sum(-1).real
    return y, x


def ssm_loop(u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor,
             x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The naive reference: the recurrence one step at a time (n sequential steps)."""
    Bsz, n, H = u.shape
    x = torch.zeros(Bsz, *A_bar.shape[-2:], dtype=A_bar.dtype) if x0 is None else x0
    ys = []
    for t in range(n):
        y, x = ssm_step(x, u[:, t], A_bar, B_bar, C)
        ys.append(y)
    return torch.stack(ys, 1), x


TOOLS.register(
    "ssm_kernel",
    paper="On the Parameterization and Initialization of Diagonal State Space Models (S4D, Gu et "
          "al., 2022); Simplified State Space Layers (S5, Smith et al., 2023)",
    equation="ZOH Ā=exp(ΔΛ), B̄=(Ā−1)/Λ·B; bilinear Ā=(1+ΔΛ/2)/(1−ΔΛ/2), B̄=Δ/(1−ΔΛ/2)·B; "
             "K_l = Re(Σ_s C_s B̄_s Ā_s^l)",
    complexity=("O(H N L)", "O(H N √L)"),
    test="tests/papers/test_ssm_primitives.py::test_ssm_kernel_equals_recurrence",
    tiny={},
)(ssm_kernel)
