"""LMU: the Legendre Memory Unit, in its parallel (convolution) training form.

Papers: Legendre Memory Units: Continuous-Time Representation in Recurrent Neural Networks
(Voelker, Kajić & Eliasmith, NeurIPS 2019), eqs. 1–2; Parallelizing Legendre Memory Unit
Training (Chilkuri & Eliasmith, ICML 2021), §3 eqs. 4–9.

The memory m ∈ ℝ^q of each scalar input u optimally (Padé) approximates the window u(t − θ'),
0 ≤ θ' ≤ θ, in shifted Legendre polynomials:
    θ ṁ(t) = A m(t) + B u(t),   A_ij = (2i + 1) · (−1 if i < j else (−1)^{i−j+1}),
                                B_i  = (2i + 1)(−1)^i                                (eq. 2)
discretised by zero-order hold with unit step (as the authors' code does): Ā = e^{A/θ},
B̄ = (A/θ)^{−1}(Ā − I) B/θ. The parallel LMU removes the hidden-to-memory feedback (eq. 4–6):
    u_t = W_u x_t ∈ ℝ^{m_d}                    (``memory`` channels, each with its own memory)
    m_t = Ā m_{t−1} + B̄ u_t  =  Σ_{j≤t} Ā^{t−j} B̄ u_j      a linear time-invariant system,
    h_t = tanh(W_m m_t + W_x x_t)                                                   (eq. 7–9)
so in training all memories are one causal convolution of u with the impulse response
H_l = Ā^l B̄ (l < n), run by ``tevo.nn.fftconv.fft_conv`` in O(m_d q n log n); H is built by
repeated squaring (O(log n) matrix products). Decoding keeps m_t: (m_d, q) per sequence, a
fixed-size state; a step costs O(m_d q²). A prefill from a state adds Ā^{t+1} m_{−1}.
Padding: padded inputs are zeroed (u = 0 there); under left padding the memory is still zero at
the first real token. A and B are fixed (not trained), as in the papers.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.fftconv import fft_conv
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import in_range, positive

FORMS = ("conv", "recurrent")


def legendre_AB(order: int) -> tuple[Tensor, Tensor]:
    """The continuous (A, B) of eq. 2 for θ = 1, float64: (q, q) and (q,)."""
    i = torch.arange(order, dtype=torch.float64)[:, None]
    j = torch.arange(order, dtype=torch.float64)[None, :]
    A = (2 * i + 1) * torch.where(i < j, -torch.ones(()), (-1.0) ** (i - j + 1))
    B = (2 * torch.arange(order, dtype=torch.float64) + 1) * (-1.0) ** torch.arange(order)
    return A, B


def zoh(A: Tensor, B: Tensor, dt: float = 1.0) -> tuple[Tensor, Tensor]:
    """Zero-order hold: Ā = e^{A dt}, B̄ = ∫₀^dt e^{As} ds B, read off the exponential of the
    augmented matrix [[A, B], [0, 0]] (valid for singular A too)."""
    q = A.shape[0]
    M = torch.zeros(q + 1, q + 1, dtype=A.dtype)
    M[:q, :q], M[:q, q] = A * dt, B * dt
    E = torch.linalg.matrix_exp(M)
    return E[:q, :q], E[:q, q]


def matrix_powers_apply(A: Tensor, v: Tensor, L: int) -> Tensor:
    """[A⁰v, A¹v, ..., A^{L−1}v] for v (..., q): (..., L, q), by repeated squaring (each round
    doubles the computed prefix with one product by A^{2^r})."""
    out, P = v.unsqueeze(-2), A
    while out.shape[-2] < L:
        out = torch.cat([out, out @ P.T], -2)
        P = P @ P
    return out[..., :L, :]


@MIXERS.register(
    "lmu", paper="Legendre Memory Units (Voelker et al., 2019); Parallelizing Legendre Memory "
                 "Unit Training (Chilkuri & Eliasmith, 2021)",
    equation="θṁ = Am + Bu (Legendre/Padé A, B), ZOH; m_t = Σ_j Ā^{t−j} B̄ u_j (FFT conv), "
             "h_t = tanh(W_m m_t + W_x x_t)",
    complexity=("O(m_d q n log n + n d m_d q)", "O(n m_d q); decode O(m_d q)"),
    test="tests/papers/test_rnn_lmu.py::test_lmu_parallel_equals_recurrent",
    tiny={"order": 4, "memory": 2, "theta": 8.0})
class LegendreMemoryUnit(Mixer):
    """Parallel LMU: a fixed Legendre delay-line memory (LTI, FFT convolution) + tanh readout."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, order: int = 32, memory: int = 4, theta: float = 256.0,
                 form: str = "conv"):
        super().__init__()
        self.order = positive("mixer.order", order)
        self.memory = positive("mixer.memory", memory)
        self.theta = in_range("mixer.theta", theta, 0.0, math.inf, lo_open=True, hi_open=True)
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS)
        self.form, self.d = form, int(d_model)
        A, B = legendre_AB(self.order)
        A_bar, B_bar = zoh(A / self.theta, B / self.theta)
        self.register_buffer("A", A.float(), persistent=False)          # continuous, θ = 1
        self.register_buffer("B", B.float(), persistent=False)
        self.register_buffer("A_bar", A_bar.float(), persistent=False)
        self.register_buffer("B_bar", B_bar.float(), persistent=False)
        self.encoder = nn.Linear(self.d, self.memory)                   # W_u
        self.readout = nn.Linear(self.memory * self.order, self.d)      # W_m
        self.skip = nn.Linear(self.d, self.d, bias=False)               # W_x

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"m": torch.zeros(batch, self.memory, self.order, device=device)}

    def memories(self, u: Tensor, m0: Tensor | None, form: str) -> Tensor:
        """All m_t (B, n, m_d, q) for inputs u (B, n, m_d), from m_{−1} = m0 (None = 0)."""
        B, n, md = u.shape
        q = self.order
        if form == "conv":
            H = matrix_powers_apply(self.A_bar, self.B_bar, n)          # (n, q): Ā^l B̄
            k = H.T.repeat(md, 1)                                       # (m_d q, n)
            m = fft_conv(u.repeat_interleave(q, -1), k).view(B, n, md, q)
            if m0 is not None:                                          # + Ā^{t+1} m0
                carry = matrix_powers_apply(self.A_bar, m0 @ self.A_bar.T, n)   # (B, m_d, n, q)
                m = m + carry.transpose(1, 2)
            return m
        m = torch.zeros(B, md, q, device=u.device, dtype=u.dtype) if m0 is None else m0
        out = []
        for t in range(n):                                              # one-token steps
            m = m @ self.A_bar.T + u[:, t, :, None] * self.B_bar
            out.append(m)
        return torch.stack(out, 1)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        mask = ctx.query_mask(n)
        with fp32_region(x.device.type):
            xf = upcast(x)
            u = self.encoder(xf)                                        # (B, n, m_d)
            if mask is not None:
                u = u * mask[..., None].to(u.dtype)
            m0 = None if state is None else state["m"].float()
            form = "recurrent" if (state is not None and n == 1) else self.form
            m = self.memories(u, m0, form)
            h = torch.tanh(self.readout(m.flatten(2)) + self.skip(xf))
        new_state = None if state is None else {"m": m[:, -1]}
        return h.to(x.dtype), new_state
