"""RWKV-4 time mixing: the WKV linear recurrence with per-channel decay and a bonus for the
current token, on token-shifted inputs.

Paper: RWKV: Reinventing RNNs for the Transformer Era (Peng et al., 2023), §3.1.1 eq. 11–16
(RWKV-4, the architecture of transformers' ``RwkvForCausalLM``):

    r_t = W_r (μ_r ⊙ x_t + (1 − μ_r) ⊙ x_{t−1})        (k_t, v_t likewise with μ_k, μ_v)
    wkv_t = (Σ_{i<t} e^{−(t−1−i)w + k_i} ⊙ v_i + e^{u + k_t} ⊙ v_t)
            / (Σ_{i<t} e^{−(t−1−i)w + k_i} + e^{u + k_t})                             (eq. 14)
    o_t = W_o (σ(r_t) ⊙ wkv_t)

per channel, with decay w = exp(time_decay) > 0 and bonus u = time_first. The sums are the
state (num, den) of the linear recurrence num_t = e^{−w} num_{t−1} + e^{k_t} v_t; they are kept
relative to a reference exponent p_t = max(p_{t−1} − w, k_t) (the running maximum of the
decayed keys), which is exactly the (num, den, max) state of the authors' CUDA kernel and of
transformers' CPU loop, so exp never overflows:

    ñ_t = e^{p_{t−1} − w − p_t} ñ_{t−1} + e^{k_t − p_t} v_t        (d̃ likewise with v = 1)

Parallel form: p_t for all t at once as a cumulative maximum (cummax of k_i + i·w minus t·w,
computed in float64 and detached: the result does not depend on the reference, only its
stability does), then both sums by ``tevo.nn.scan.parallel_scan``. Recurrent form (decoding):
one step of the same update on the fixed-size state (num, den, max) plus the shift token.

Complexity: O(n d² + n d log n) time (projections; scan), O(n d) memory; decoding O(d²) per
token with an O(d) state (num, den, max, previous token) that does not grow with n.
Padding: a padded token has zero weight (k = −∞, value 0) and shifts in as a zero vector, so
left-padded sequences equal unpadded ones exactly. Causal only (the recurrence runs forward).
Initialisation as the authors' code (time_decay, time_first, μ ramps per layer); the linear
maps keep the model's default init.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.scan import parallel_scan
from ...nn.shift import token_shift
from ...registry import MIXERS
from ..base import Mixer, Supports

NEG = -1e30          # "minus infinity" that stays finite in differences (the kernels' -1e38)


def wkv_scan(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: dict | None = None,
             mask: Tensor | None = None) -> tuple[Tensor, dict]:
    """Parallel WKV (eq. 14). w (d,) decay > 0, u (d,) bonus, k, v (B, n, d); state
    {"num", "den", "max"} (B, d) or None (empty); mask (B, n) True = real token.
    Returns wkv (B, n, d) and the state after the last token."""
    B, n, d = k.shape
    if state is None or state.get("num") is None:
        num0 = k.new_zeros(B, d)
        den0 = k.new_zeros(B, d)
        m0 = k.new_full((B, d), NEG)
    else:
        num0, den0, m0 = state["num"].to(k.dtype), state["den"].to(k.dtype), state["max"]
    if mask is not None:
        m = mask.unsqueeze(-1)
        k = k.masked_fill(~m, NEG)                               # zero weight for padding
        v = v * m.to(v.dtype)
    with torch.no_grad():                                        # the reference p_t, float64
        w64 = w.detach().double()
        steps = torch.arange(0, n + 1, device=k.device, dtype=torch.float64)[:, None]  # (n+1, 1)
        lead = torch.cat([m0.detach().double().unsqueeze(1),
                          k.detach().double() + steps[1:] * w64], 1)   # (B, n+1, d)
        p = torch.cummax(lead, 1).values - steps * w64           # p[:, 0] = m0, p[:, t+1] = p_t
        drop = (p[:, :-1] - p[:, 1:]).to(k.dtype)                # p_{t-1} - p_t
        p_prev, p_cur = p[:, :-1].to(k.dtype), p[:, 1:].to(k.dtype)
    a = torch.exp(drop - w)                                      # e^{p_{t-1} - w - p_t} ≤ 1
    e = torch.exp(k - p_cur)                                     # e^{k_t - p_t} ≤ 1
    if mask is not None:
        e = e * mask.unsqueeze(-1).to(e.dtype)
    num = parallel_scan(a, e * v, num0, dim=1)                   # ñ_t (B, n, d)
    den = parallel_scan(a, e, den0, dim=1)                       # d̃_t (B, n, d)
    num_prev = torch.cat([num0.unsqueeze(1), num[:, :-1]], 1)    # ñ_{t-1}
    den_prev = torch.cat([den0.unsqueeze(1), den[:, :-1]], 1)
    q = torch.maximum(p_prev, u + k)                             # output reference
    e1, e2 = torch.exp(p_prev - q), torch.exp(u + k - q)
    y = (e1 * num_prev + e2 * v) / (e1 * den_prev + e2).clamp_min(1e-30)
    return y, {"num": num[:, -1], "den": den[:, -1], "max": p_cur[:, -1]}


def wkv_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: dict,
             mask: Tensor | None = None) -> tuple[Tensor, dict]:
    """One token of the recurrence (the decoding form): k, v (B, d), state (num, den, max)
    (B, d), mask (B,) True = real. Returns wkv (B, d) and the new state."""
    num, den, mx = state["num"].to(k.dtype), state["den"].to(k.dtype), state["max"].to(k.dtype)
    if mask is not None:
        k = k.masked_fill(~mask.unsqueeze(-1), NEG)
        v = v * mask.unsqueeze(-1).to(v.dtype)
    q = torch.maximum(mx, u + k)
    e1, e2 = torch.exp(mx - q), torch.exp(u + k - q)
    y = (e1 * num + e2 * v) / (e1 * den + e2).clamp_min(1e-30)
    q = torch.maximum(mx - w, k)
    e1, e2 = torch.exp(mx - w - q), torch.exp(k - q)
    return y, {"num": e1 * num + e2 * v, "den": e1 * den + e2, "max": q}


@MIXERS.register(
    "rwkv",
    paper="RWKV: Reinventing RNNs for the Transformer Era (Peng et al., 2023)",
    equation="§3.1.1 eq. 11–16 (RWKV-4 time mix): r,k,v from token-shifted x; wkv_t = "
             "(Σ_{i<t} e^{−(t−1−i)w+k_i} v_i + e^{u+k_t} v_t) / (Σ_{i<t} e^{−(t−1−i)w+k_i} + "
             "e^{u+k_t}); o_t = W_o(σ(r_t) ⊙ wkv_t); channel mix: ffn rwkv_channel_mix",
    complexity=("O(n d² + n d log n)", "O(n d); decode state O(d)"),
    test="tests/papers/test_rnn_rwkv.py::test_rwkv_scan_equals_recurrence_and_naive_loop",
    tiny={})
class RWKVTimeMix(Mixer):
    """RWKV-4 time mix: token shift, WKV recurrence (parallel scan / O(1)-state step), σ(r) gate."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, d_att: int | None = None, causal: bool = True,
                 layer: int = 0, n_layers: int = 1):
        super().__init__()
        if not causal:
            raise ConfigError("mixer.causal", causal, why="rwkv is causal only (the WKV "
                              "recurrence runs forward); use it in a decoder")
        if d_att is not None and (isinstance(d_att, bool) or not isinstance(d_att, int)
                                  or d_att < 1):
            raise ConfigError("mixer.d_att", d_att, why="must be a positive integer "
                              "(the attention width; default d_model)")
        d_att = d_att or d_model
        self.d_model, self.d_att = d_model, d_att
        self.layer, self.n_layers = layer, max(1, n_layers)
        self.time_decay = nn.Parameter(torch.zeros(d_att))          # w = exp(time_decay)
        self.time_first = nn.Parameter(torch.zeros(d_att))          # u (bonus)
        self.mix_k = nn.Parameter(torch.full((d_model,), 0.5))
        self.mix_v = nn.Parameter(torch.full((d_model,), 0.5))
        self.mix_r = nn.Parameter(torch.full((d_model,), 0.5))
        self.key = nn.Linear(d_model, d_att, bias=False)
        self.value = nn.Linear(d_model, d_att, bias=False)
        self.receptance = nn.Linear(d_model, d_att, bias=False)
        self.out_proj = nn.Linear(d_att, d_model, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The authors' init: decay speeds −5 + 8(h/(H−1))^(0.7 + 1.3 l/(L−1)), bonus
        log 0.3 + zigzag, μ ramps (i/d)^(1 − l/L) (μ_v + 0.3 l/(L−1), μ_r with half the power)."""
        H, d = self.d_att, self.d_model
        r01 = self.layer / (self.n_layers - 1) if self.n_layers > 1 else 0.0
        r10 = 1.0 - self.layer / self.n_layers
        h = torch.arange(H, dtype=torch.float32)
        self.time_decay.copy_(-5 + 8 * (h / max(H - 1, 1)) ** (0.7 + 1.3 * r01))
        zigzag = ((h + 1) % 3 - 1) * 0.5
        self.time_first.copy_(torch.full((H,), float(torch.log(torch.tensor(0.3)))) + zigzag)
        ramp = torch.arange(d, dtype=torch.float32) / d
        self.mix_k.copy_(ramp.pow(r10))
        self.mix_v.copy_(ramp.pow(r10) + 0.3 * r01)
        self.mix_r.copy_(ramp.pow(0.5 * r10))

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        z = torch.zeros(batch, self.d_att, device=device, dtype=torch.float32)
        return {"num": z, "den": z.clone(), "max": torch.full_like(z, NEG),
                "shift": torch.zeros(batch, self.d_model, device=device,
                                     dtype=dtype or torch.float32)}

    def forward(self, x: Tensor, ctx: MixerContext, state: dict | None = None):
        """x (B, n, d) → (y (B, n, d), state or None)."""
        B, n, _ = x.shape
        mask = ctx.query_mask(n)                                    # (B, n) or None
        xx, last = token_shift(x, None if state is None else state.get("shift"), mask)
        k = self.key(x * self.mix_k + xx * (1 - self.mix_k))        # (B, n, H)
        v = self.value(x * self.mix_v + xx * (1 - self.mix_v))
        r = torch.sigmoid(self.receptance(x * self.mix_r + xx * (1 - self.mix_r)))
        w, u = torch.exp(upcast(self.time_decay)), upcast(self.time_first)
        with fp32_region(x.device.type):
            kf, vf = upcast(k), upcast(v)
            if state is not None and n == 1 and state.get("num") is not None:
                y, st = wkv_step(w, u, kf[:, 0], vf[:, 0], state,
                                 None if mask is None else mask[:, 0])
                y = y.unsqueeze(1)
            else:
                y, st = wkv_scan(w, u, kf, vf, state, mask)         # (B, n, H)
        out = self.out_proj(r * y.to(r.dtype))
        if state is None:
            return out, None
        st["shift"] = last
        return out, st
