"""LRU: the Linear Recurrent Unit.

Paper: Resurrecting Recurrent Neural Networks for Long Sequences (Orvieto, Smith, Gu, Fernando,
Gulcehre, Pascanu & De, 2023), §3 and Appendix A (reference code).

    x_t = diag(λ) x_{t-1} + γ ⊙ (B u_t),      y_t = Re(C x_t) + D ⊙ u_t            (eq. 1, §3.3)
    λ_j = exp(−exp(ν_j) + i·exp(θ_j))          stable exponential parametrisation (§3.3)
    γ_j = exp(γ_log_j), γ_log initialised to log sqrt(1 − |λ_j|²)       normalisation (§3.4)

x ∈ ℂ^N (``state`` N), u, y ∈ ℝ^d (H = d_model), B ∈ ℂ^{N×H}, C ∈ ℂ^{H×N}, D ∈ ℝ^H. Because
|λ| = exp(−exp(ν)) < 1 for every real ν, the recurrence is stable for any parameter values.
Initialisation (Appendix A): |λ| uniform on the ring [r_min, r_max] (ν_log from u₁ ~ U[0,1]),
phase θ ~ U[0, max_phase]; B, C complex Gaussian / sqrt(2H) and / sqrt(N); D Gaussian.
γ stays a trained parameter as in the reference code.

Forms: ``scan`` (training) runs ``tevo.nn.scan.parallel_scan`` on the complex diagonal
recurrence, O(n N log n) work, O(log n) depth; ``recurrent`` applies the one-token step n times
(the decoding form, state O(N) per sequence, flat in n). Padding: padded steps are the identity
(state held), so a left-padded sequence starts from x_0 = 0 at its first real token.
The paper's LRU block adds an MLP/GLU after the recurrence; here the model's FFN plays that role.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.scan import linear_recurrence_loop, parallel_scan
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import hold_on_padding, in_range, positive, real_mask

FORMS = ("scan", "recurrent")


@MIXERS.register(
    "lru", paper="Resurrecting Recurrent Neural Networks for Long Sequences (Orvieto et al., "
                 "2023)",
    equation="x_t = diag(λ) x_{t-1} + γ ⊙ B u_t, y_t = Re(C x_t) + D u_t; "
             "λ = exp(−exp(ν) + i exp(θ)), γ₀ = sqrt(1 − |λ|²)",
    complexity=("O(n N d) (scan O(n N log n) work, O(log n) depth)", "O(n N); decode O(N)"),
    test="tests/papers/test_rnn_lru.py::test_lru_scan_equals_loop_of_the_equation",
    tiny={"state": 8})
class LinearRecurrentUnit(Mixer):
    """LRU: complex diagonal linear recurrence with exponential stable parametrisation."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, state: int = 64, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, form: str = "scan"):
        super().__init__()
        N, H = positive("mixer.state", state), int(d_model)
        r_min = in_range("mixer.r_min", r_min, 0.0, 1.0, hi_open=True)
        r_max = in_range("mixer.r_max", r_max, 0.0, 1.0, lo_open=True)
        if r_min >= r_max:
            raise ConfigError("mixer.r_min", r_min, why=f"must be < r_max={r_max}")
        max_phase = in_range("mixer.max_phase", max_phase, 0.0, 2 * math.pi, lo_open=True)
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS)
        self.state_size, self.form = N, form
        u1, u2 = torch.rand(N), torch.rand(N)
        u1 = u1.clamp_min(1e-6)                  # log(0) guard when r_min = 0
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2)
                                                              + r_min**2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2.clamp_min(1e-6)))
        lam_abs = torch.exp(-torch.exp(self.nu_log.detach()))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - lam_abs**2)))
        self.B_re = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.B_im = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.C_re = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.C_im = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H))

    def eigenvalues(self) -> Tensor:
        """λ (N,) complex: exp(−exp(ν_log) + i exp(θ_log)), |λ| < 1 for any parameters."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"h": torch.zeros(batch, self.state_size, 2, device=device)}   # view_as_real

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, H = x.shape
        mask = real_mask(ctx, n)
        with fp32_region(x.device.type):
            u = upcast(x)
            lam = self.eigenvalues()                                       # (N,)
            gamma = torch.exp(self.gamma_log)                              # (N,)
            bu = torch.complex(u @ self.B_re.T, u @ self.B_im.T) * gamma   # (B, n, N) γ⊙Bu
            a = lam.expand(B, n, -1)
            a, bu = hold_on_padding(a, bu, mask)
            h0 = None if state is None else torch.view_as_complex(state["h"].float())
            if self.form == "scan" and not (state is not None and n == 1):
                h = parallel_scan(a, bu, h0, dim=1)                        # (B, n, N)
            else:
                h = linear_recurrence_loop(a, bu, h0, dim=1)       # one-token steps
            C = torch.complex(self.C_re, self.C_im)                        # (H, N)
            y = (h @ C.T).real + self.D * u                                # (B, n, H)
        new_state = None if state is None else {"h": torch.view_as_real(h[:, -1]).contiguous()}
        return y.to(x.dtype), new_state
