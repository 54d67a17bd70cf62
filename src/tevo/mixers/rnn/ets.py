"""ETSformer's token mixing: exponential smoothing attention (growth) and frequency attention
(seasonality).

Paper: ETSformer: Exponential Smoothing Transformers for Time-series Forecasting (Woo, Liu,
Sahoo, Kumar & Hoi, 2022), §3.2: eq. 3 (the encoder layer), §3.2.1 frequency attention (FA),
§3.2.2 exponential smoothing attention (ESA, MH-ESA), checked against the authors' code.

ESA: per head h with smoothing rate α_h ∈ (0, 1) and learned initial state v₀,
    ES_t = α V_t + (1 − α) ES_{t−1},  ES_{−1} = v₀
         = Σ_{j≤t} α (1 − α)^{t−j} V_j + (1 − α)^{t+1} v₀          (A_ES, a lower-triangular
                                                                     attention matrix, eq. 5)
applied, in the growth block, to successive differences of the projected input,
V_t = Z_t − Z_{t−1} with Z = W_v x and Z_{−1} = z₀ learned; G = W_o · MH-ESA(V).
FA: S = the inverse DFT of the top-K amplitude frequencies of x per channel (DC and, for even
lengths, the Nyquist bin excluded, as in the authors' code):
    S_t = Σ_{k ∈ topK} (2/n) |X_k| cos(2π f_k t + Φ_k)
The encoder removes both components (eq. 3): x ← x − S, then x ← x − G(x); as a mixer whose
output is added back by the residual block this is y = −(S + G(x − S)).

Causality: ESA is causal (a linear recurrence, run by ``parallel_scan``; decoding keeps Z_{t−1}
and ES_t, O(d)). FA needs the whole window (the DFT over all n positions), so it is applied only
in the bidirectional form; the causal form is the growth (ESA) component alone — a
simplification for autoregressive use. FA runs on each sample's real tokens.
Complexity: ESA O(n d log n) work (scan) / O(n d) (loop); FA O(n d log n).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.scan import linear_recurrence_loop, parallel_scan
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import hold_on_padding, positive

FORMS = ("scan", "recurrent")


def frequency_attention(x: Tensor, k: int) -> Tensor:
    """FA on x (B, n, d): the top-k amplitude DFT components per channel (DC and the Nyquist
    bin excluded), back in time: (B, n, d). Fewer than k available frequencies → all of them."""
    B, n, d = x.shape
    X = torch.fft.rfft(x.float(), dim=1)                               # (B, n//2+1, d)
    hi = X.shape[1] - 1 if n % 2 == 0 else X.shape[1]                  # drop Nyquist (even n)
    X = X[:, 1:hi]                                                     # drop DC
    f = torch.fft.rfftfreq(n, device=x.device)[1:hi]                   # (F,) cycles per step
    kk = min(k, X.shape[1])
    if kk == 0:
        return torch.zeros_like(x, dtype=torch.float32)
    _, idx = X.abs().topk(kk, dim=1)                                   # (B, k, d)
    Xk = X.gather(1, idx)                                              # (B, k, d)
    fk = f[idx]                                                        # (B, k, d)
    t = torch.arange(n, device=x.device, dtype=torch.float32)
    amp, phase = (2.0 / n) * Xk.abs(), Xk.angle()
    arg = 2 * torch.pi * fk[:, :, None] * t[None, None, :, None] + phase[:, :, None]
    return (amp[:, :, None] * torch.cos(arg)).sum(1)                   # (B, n, d)


@MIXERS.register(
    "ets", paper="ETSformer: Exponential Smoothing Transformers for Time-series Forecasting "
                 "(Woo et al., 2022)",
    equation="ESA: ES_t = Σ_{j≤t} α(1−α)^{t−j} V_j + (1−α)^{t+1} v₀, V_t = Z_t − Z_{t−1}; "
             "FA: top-K DFT components; y = −(S + W_o ESA(x − S)) (eq. 3)",
    complexity=("O(n d log n)", "O(n d); decode O(d)"),
    test="tests/papers/test_rnn_ets.py::test_esa_equals_explicit_exponential_weight_matrix",
    tiny={"heads": 2, "top_k": 2})
class ETSMixer(Mixer):
    """ETSformer: exponential smoothing attention (growth) + frequency attention (season)."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, top_k: int = 3, causal: bool = True,
                 form: str = "scan"):
        super().__init__()
        self.heads = positive("mixer.heads", heads)
        self.top_k = positive("mixer.top_k", top_k)
        if d_model % self.heads:
            raise ConfigError("mixer.heads", heads,
                              why=f"d_model={d_model} is not divisible by heads={heads}")
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS)
        self.d, self.causal, self.form = int(d_model), bool(causal), form
        self.in_proj = nn.Linear(self.d, self.d)                       # Z = W_v x
        self.out_proj = nn.Linear(self.d, self.d)                      # W_o
        self.z0 = nn.Parameter(torch.randn(self.d) * 0.02)             # Z_{−1}
        self.v0 = nn.Parameter(torch.randn(self.d) * 0.02)             # ES_{−1}
        self.smoothing = nn.Parameter(torch.randn(self.heads))         # α = σ(·) per head

    def alpha(self) -> Tensor:
        """(d,) the smoothing rate of each channel's head, in (0, 1)."""
        return torch.sigmoid(self.smoothing).repeat_interleave(self.d // self.heads)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"prev": self.z0.detach().float().expand(batch, -1).clone().to(device),
                "s": self.v0.detach().float().expand(batch, -1).clone().to(device)}

    def seasonal(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """FA over each sample's real tokens (zeros at padding)."""
        if mask is None:
            return frequency_attention(x, self.top_k)
        S = torch.zeros_like(x, dtype=torch.float32)
        for b in range(x.shape[0]):
            idx = mask[b].nonzero().squeeze(1)
            if idx.numel():
                S[b, idx] = frequency_attention(x[b:b + 1, idx], self.top_k)[0]
        return S

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        mask = ctx.query_mask(n)
        with fp32_region(x.device.type):
            xf = upcast(x)
            S = self.seasonal(xf, mask) if not ctx.causal else None
            r = xf if S is None else xf - S
            z = self.in_proj(r)                                        # (B, n, d)
            prev0 = self.z0.expand(B, d) if state is None else state["prev"].float()
            s0 = self.v0.expand(B, d) if state is None else state["s"].float()
            z_prev = torch.cat([prev0[:, None], z[:, :-1]], 1)
            if mask is not None:                                       # first real token: z₀
                had = torch.cat([mask.new_ones(B, 1), mask[:, :-1]], 1)
                z_prev = torch.where(had[..., None], z_prev, prev0[:, None])
            V = z - z_prev                                             # successive differences
            al = self.alpha()
            a, b = hold_on_padding((1 - al).expand(B, n, d), al * V, mask)
            if self.form == "scan" and not (state is not None and n == 1):
                es = parallel_scan(a, b, s0, dim=1)
            else:
                es = linear_recurrence_loop(a, b, s0, dim=1)          # one-token steps
            y = -self.out_proj(es)
            if S is not None:
                y = y - S
        new_state = None
        if state is not None:
            last = z[:, -1] if mask is None else torch.where(mask[:, -1:], z[:, -1], prev0)
            new_state = {"prev": last, "s": es[:, -1]}
        return y.to(x.dtype), new_state
