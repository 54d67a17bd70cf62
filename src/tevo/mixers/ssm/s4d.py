"""Diagonal state space layers: S4D (one SISO SSM per channel) and S5 (one MIMO SSM).

S4D — On the Parameterization and Initialization of Diagonal State Space Models (Gu, Gupta,
Goel & Ré, NeurIPS 2022), §2–4. Per channel h, N/2 complex states (one of each conjugate pair):
    Ā, B̄ = discretize(Λ_h, 1, Δ_h)  (ZOH eq. 5, or bilinear)
    x_t = Ā ⊙ x_{t-1} + B̄ u_t,   y_t = 2 Re(C_h · x_t) + D_h u_t          (recurrence)
    y = K * u + D u,   K_l = 2 Re(Σ_s C_s B̄_s Ā_s^l)                        (eq. 6, convolution)
The convolution form (default for training) is an FFT convolution; ``form: scan`` runs the
recurrence with the parallel scan instead; decoding runs the recurrence one step at a time with
the state x (B, d, N/2) — fixed size. S4D-Lin initialisation Λ_n = −1/2 + iπn, B = 1 (folded
into C, as in the authors' code), log Δ ~ U[log 1e-3, log 1e-1]. Block: GLU(W GELU(y)).
Bidirectional: a second C gives a kernel over the future (the S4 repository's two channels).
Complexity: conv O(d n log n + d N n), scan O(d N n log n); state O(d N).

S5 — Simplified State Space Layers for Sequence Modeling (Smith, Warrington & Linderman, ICLR
2023), §3, eq. 2–6. One multi-input multi-output SSM over all channels, P complex states:
    x_t = Ā ⊙ x_{t-1} + B̄ u_t   (Ā = exp(ΛΔ), B̄ = (Ā − 1)/Λ · B̃ ∈ ℂ^{P×d}, ZOH per state Δ_p)
    y_t = 2 Re(C̃ x_t) + D ⊙ u_t   (C̃ ∈ ℂ^{d×P}, conjugate-symmetric half kept)
trained with the parallel scan (``tevo.nn.scan.parallel_scan``), decoded one step at a time.
Initialisation: Λ the eigenvalues of the normal part of HiPPO-LegS (HiPPO-N, §4.1), B̃ = V⁻¹B
and C̃ = CV with the eigenvectors V; simplification: one block (the paper's J blocks of
HiPPO-N are not tiled). Complexity: O(n (P d) + P n log n) work, O(n P) memory; state O(P).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.ssm import check_discretization, check_positive, discretize, ssm_scan
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import DiagonalSSM, GLUOutput, check_dt, log_dt_init, two_sided_conv

FORMS = ("conv", "scan")


def _fp32(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def masked(u: Tensor, mask: Tensor | None) -> Tensor:
    """Zero padded inputs (in fp32): under left padding the state then stays at zero until the
    first real token, so real tokens see exactly the unpadded sequence."""
    u = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    return u if mask is None else u * mask[..., None].to(u.dtype)


@MIXERS.register(
    "s4d",
    paper="On the Parameterization and Initialization of Diagonal State Space Models (S4D, Gu "
          "et al., NeurIPS 2022)",
    equation="x_t = Ā x_{t-1} + B̄ u_t, y_t = 2Re(C x_t) + D u_t; y = K*u, "
             "K_l = 2Re(Σ C B̄ Ā^l) (eq. 5–6, ZOH or bilinear); out = GLU(W GELU(y))",
    complexity=("O(d n log n + d N n) conv; O(d N n log n) scan; O(d N) per decoded token",
                "O(d N n) train; O(d N) state"),
    test="tests/papers/test_ssm_s4d.py::test_s4d_scan_equals_recurrence_equals_convolution",
    tiny={"state_size": 8})
class S4D(Mixer):
    """S4D: a diagonal complex SSM per channel, convolution (FFT) or scan form, recurrent decode."""

    supports = Supports(causal=True, bidirectional=True, cache=True)

    def __init__(self, d_model: int, state_size: int = 64, causal: bool = True,
                 discretization: str = "zoh", form: str = "conv", dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__()
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS)
        self.d_model, self.causal, self.form = d_model, causal, form
        self.ssm = DiagonalSSM(d_model, state_size, 1 if causal else 2, discretization,
                               dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(d_model))
        self.output = GLUOutput(d_model)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"x": self.ssm.init_state(batch, device=device)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        new_state = None
        with _fp32(x.device.type):
            u = masked(x, ctx.query_mask(n))                         # (B, n, H)
            if not self.causal:
                K = self.ssm.kernel(n)
                y = two_sided_conv(u, K[0], K[1], None, None)
            else:
                x0 = None if state is None else state["x"]
                y, x_last = self.ssm.run(u, x0, self.form)
                if state is not None:
                    new_state = {"x": x_last}
            y = y + u * self.D
        return self.output(F.gelu(y).to(x.dtype)), new_state


def hippo_n(P: int) -> tuple[Tensor, Tensor]:
    """HiPPO-N (S5 §4.1): eigenvalues Λ and eigenvectors V of the normal part of HiPPO-LegS of
    size 2P, keeping one of each conjugate pair (P of them). Re Λ = −1/2."""
    M = 2 * P
    q = torch.sqrt(1 + 2 * torch.arange(M, dtype=torch.float64))
    A = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(torch.arange(M, dtype=torch.float64)))
    p = torch.sqrt(torch.arange(M, dtype=torch.float64) + 0.5)
    S = A + p[:, None] * p[None, :]                     # normal part: −1/2 I + skew-symmetric
    re = torch.diagonal(S).mean()
    im, V = torch.linalg.eigh(S.to(torch.cdouble) * -1j)
    Lambda = torch.complex(re.expand(M), im)
    return Lambda[:P].to(torch.cfloat), V[:, :P].to(torch.cfloat)


@MIXERS.register(
    "s5",
    paper="Simplified State Space Layers for Sequence Modeling (S5, Smith et al., ICLR 2023)",
    equation="x_t = Ā x_{t-1} + B̄ u_t (MIMO, Ā=exp(ΛΔ), B̄=(Ā−1)/Λ·B̃), y_t = 2Re(C̃ x_t) + D u_t "
             "(eq. 2–6) by parallel scan; out = GLU(W GELU(y))",
    complexity=("O(n P d + P n log n) scan; O(P d) per decoded token", "O(n P); state O(P)"),
    test="tests/papers/test_ssm_s4d.py::test_s5_scan_equals_recurrence_equals_convolution",
    tiny={"state_size": 8})
class S5(Mixer):
    """S5: one MIMO diagonal SSM (HiPPO-N init) over all channels; scan, recurrent decode."""

    supports = Supports(causal=True, bidirectional=False, cache=True)

    def __init__(self, d_model: int, state_size: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, discretization: str = "zoh"):
        super().__init__()
        P = check_positive("mixer.state_size", state_size)
        self.discretization = check_discretization(discretization)
        dt_min, dt_max = check_dt(dt_min, dt_max)
        self.d_model, self.P = d_model, P
        Lambda, V = hippo_n(P)                                       # (P,), (2P, P)
        B = torch.randn(2 * P, d_model) / math.sqrt(d_model)         # lecun-normal B
        C = torch.randn(d_model, 2 * P) / math.sqrt(2 * P)
        B_t = V.conj().T @ B.to(torch.cfloat)                        # B̃ = V⁻¹ B   (P, d)
        C_t = C.to(torch.cfloat) @ V                                 # C̃ = C V     (d, P)
        self.Lambda_re = nn.Parameter(Lambda.real.clone())
        self.Lambda_im = nn.Parameter(Lambda.imag.clone())
        self.B = nn.Parameter(torch.view_as_real(B_t.contiguous()))
        self.C = nn.Parameter(torch.view_as_real(C_t.contiguous()))
        self.log_dt = nn.Parameter(log_dt_init(P, dt_min, dt_max))
        self.D = nn.Parameter(torch.randn(d_model))
        self.output = GLUOutput(d_model)

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ā (P,), B̄ (P, d), 2C̃ (d, P)."""
        Lambda = torch.complex(self.Lambda_re.float(), self.Lambda_im.float())   # fp32 always
        B = torch.view_as_complex(self.B.float())
        A_bar, B_bar = discretize(Lambda[:, None], B, torch.exp(self.log_dt.float())[:, None],
                                  self.discretization)
        return A_bar[:, 0], B_bar, 2 * torch.view_as_complex(self.C.float())

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"x": torch.zeros(batch, self.P, dtype=torch.cfloat, device=device)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        with _fp32(x.device.type):
            u = masked(x, ctx.query_mask(n))                         # (B, n, d)
            A_bar, B_bar, C = self.discrete()
            drive = (u.to(B_bar.dtype) @ B_bar.T).unsqueeze(2)       # B̄ u_t: (B, n, 1, P)
            x0 = None if state is None else state["x"].unsqueeze(1)
            _, xs = ssm_scan(None, A_bar[None], None, None, x0, drive=drive)  # (B, n, 1, P)
            xs = xs[:, :, 0]
            y = (xs @ C.T).real + u * self.D                         # (B, n, d)
        new_state = None if state is None else {"x": xs[:, -1]}
        return self.output(F.gelu(y).to(x.dtype)), new_state
