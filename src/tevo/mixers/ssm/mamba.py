"""Mamba: the selective state space model (S6) inside its gated block.

Paper: Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu & Dao, 2023),
§3.2 Algorithm 2 (S6) and §3.4 Figure 3 (the block), as in the authors' reference code and
transformers' ``MambaForCausalLM``:

    [x; z] = W_in h                                   (B, n, 2E), E = expand · d
    x = SiLU(conv_k(x))                               causal depthwise convolution, k taps
    Δ = softplus(W_Δ (W_x x)[:R] + b_Δ),  B_t = (W_x x)[R:R+N],  C_t = (W_x x)[R+N:]
    h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t          (E, N) per token; A = −exp(A_log)
    y_t = C_t · h_t + D ⊙ x_t,   out = W_out (y ⊙ SiLU(z))

Δ, B and C depend on the input (the selection mechanism); A is discretised by zero-order hold
and B by the simplified Euler rule Δ·B, as the paper's code does (§3.2 footnote; not the full
ZOH B̄ of ``tevo.nn.ssm.discretize``). The selective recurrence is time-varying, so there is no
convolution form: training runs it with ``tevo.nn.ssm.ssm_scan`` (``parallel_scan``), decoding
with ``ssm_step`` on a fixed-size state: the last k − 1 convolution inputs and h (B, E, N).
The convolution is ``tevo.nn.fftconv.conv_with_state``.

Complexity: O(n d E + n E N log n) time (projections; scan), O(n E N) memory (the states are
materialised, unlike the paper's fused kernel that keeps them in SRAM); decoding O(d E + E N)
per token with an O((k + N) E) state, flat in n.
Padding: padded positions are zeroed before the convolution and after it (the way transformers
masks a left-padded batch), so they leave the state at zero and left-padded sequences equal
unpadded ones exactly. Causal only. Initialisation as the authors' code (A_log = log 1..N,
D = 1, Δ bias = softplus⁻¹ of log-uniform Δ in [dt_min, dt_max], Δ weights U(±R^-½)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.fftconv import conv_buffer, conv_with_state
from ...nn.ssm import check_positive, ssm_scan, ssm_step
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "mamba",
    paper="Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu & Dao, 2023)",
    equation="Alg. 2 (S6) in the Fig. 3 block: [x;z] = W_in h; x = SiLU(conv(x)); Δ = "
             "softplus(W_Δ W_x x + b); B,C = W_x x; h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t x_t; "
             "y = (C_t·h_t + D x_t) ⊙ SiLU(z); out = W_out y",
    complexity=("O(n d E + n E N log n)", "O(n E N); decode state O((k + N) E)"),
    test="tests/papers/test_ssm_mamba.py::test_mamba_scan_equals_step_and_naive_loop",
    tiny={"d_state": 4, "expand": 2, "d_conv": 3})
class Mamba(Mixer):
    """Mamba block: gated, conv-preceded selective SSM (input-dependent Δ, B, C)."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", bias: bool = False, conv_bias: bool = True,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_floor: float = 1e-4,
                 causal: bool = True):
        super().__init__()
        if not causal:
            raise ConfigError("mixer.causal", causal, why="mamba is causal only (the selective "
                              "scan runs forward); use it in a decoder")
        N = check_positive("mixer.d_state", d_state)
        K = check_positive("mixer.d_conv", d_conv)
        check_positive("mixer.expand", expand)
        if dt_rank == "auto":
            R = math.ceil(d_model / 16)
        elif isinstance(dt_rank, int) and not isinstance(dt_rank, bool) and dt_rank >= 1:
            R = dt_rank
        else:
            raise ConfigError("mixer.dt_rank", dt_rank, why="must be a positive integer or "
                              "'auto' (= ceil(d_model / 16))")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float))
                and 0 < dt_min <= dt_max):
            raise ConfigError("mixer.dt_min", (dt_min, dt_max),
                              why="need 0 < dt_min <= dt_max (the initial step sizes)")
        E = expand * d_model
        self.d_model, self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_model, E, N, K, R
        self.dt_min, self.dt_max, self.dt_floor = float(dt_min), float(dt_max), float(dt_floor)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(E, K))        # tap j multiplies x_{t−j}
        self.conv_bias = nn.Parameter(torch.zeros(E)) if conv_bias else None
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))
        self.D.fill_(1.0)
        std = R ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(E) * (math.log(self.dt_max) - math.log(self.dt_min))
                       + math.log(self.dt_min)).clamp(min=self.dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # softplus⁻¹(Δ)
        bound = 1.0 / math.sqrt(self.d_conv)                            # nn.Conv1d's default
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            self.conv_bias.zero_()

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"conv": conv_buffer(batch, self.d_conv, self.d_inner, device, torch.float32),
                "ssm": torch.zeros(batch, self.d_inner, self.d_state, device=device,
                                   dtype=torch.float32)}

    def selection(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Δ (B, n, E), B (B, n, N), C (B, n, N) from the convolved input x (B, n, E)."""
        R, N = self.dt_rank, self.d_state
        dbc = self.x_proj(x)
        dt = F.softplus(self.dt_proj(dbc[..., :R]).float())
        return dt, dbc[..., R:R + N].float(), dbc[..., R + N:].float()

    def forward(self, h: Tensor, ctx: MixerContext, state: dict | None = None):
        """h (B, n, d) → (out (B, n, d), state {"conv": (B, k−1, E), "ssm": (B, E, N)} or None)."""
        Bsz, n, _ = h.shape
        mask = ctx.query_mask(n)                                   # (B, n) or None
        m = None if mask is None else mask.unsqueeze(-1)
        x, z = self.in_proj(h).chunk(2, -1)                        # (B, n, E) each
        buf = conv_buffer(Bsz, self.d_conv, self.d_inner, h.device, torch.float32) \
            if state is None else state["conv"]
        x, new_buf = conv_with_state(x, self.conv_weight, buf, mask=mask)   # padding zeroed
        if self.conv_bias is not None:
            x = x + self.conv_bias.to(x.dtype)
        x = F.silu(x)
        if m is not None:
            x = x * m.to(x.dtype)                                  # padding: x = 0 → Δ·B·x = 0
        dt, Bm, Cm = self.selection(x)
        A = -torch.exp(self.A_log.float())                         # (E, N)
        with fp32_region(h.device.type):
            xf = upcast(x)
            dA = torch.exp(dt.unsqueeze(-1) * A)                   # (B, n, E, N)
            drive = (dt * xf).unsqueeze(-1) * Bm.unsqueeze(2)      # Δ_t B_t x_t (B, n, E, N)
            if state is not None and n == 1:
                y, hs = ssm_step(state["ssm"], None, dA[:, 0], None, Cm[:, 0].unsqueeze(1),
                                 drive=drive[:, 0])
                y, last = y.unsqueeze(1), hs                        # (B, 1, E), (B, E, N)
            else:
                h0 = None if state is None else state["ssm"]
                y, hs = ssm_scan(None, dA, None, Cm.unsqueeze(2), x0=h0, drive=drive)
                last = hs[:, -1]
            y = y + xf * self.D.float()
        y = y.to(z.dtype) * F.silu(z)
        out = self.out_proj(y)
        return out, (None if state is None else {"conv": new_buf, "ssm": last})
