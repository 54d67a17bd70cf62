"""Hyena: implicit long convolutions (an FFN of positions, exponentially modulated) interleaved
with multiplicative gating.

Paper: Hyena Hierarchy: Towards Larger Convolutional Language Models (Poli, Massaroli, Nguyen,
Fu, Dao, Baccus, Bengio, Ermon & Ré, ICML 2023), §3, eq. 3–7, as in the authors' operator
(safari ``HyenaOperator`` / ``HyenaFilter``):

    (x⁰, …, x^{N−1}, v) = split(ShortConv₃(W_in u))     N+1 projections, causal depthwise conv
    filters  h^i_t = FFN(PosEmb(t)) ⊙ (exp(−|δ| t) + shift),   i = 1..N−1, t ∈ [0, 1]
             PosEmb(t) = [t, Re e^{−i f 2π t'/L}, Im …] (f = ``emb_dim``−1)/2 bands; FFN: Linear,
             sin(ω·) activations, ``filter_layers`` inner layers, width ``filter_width``
    z ← v;   for i = N−1, …, 1:  z ← h^i * (x^i ⊙ z) + b^i ⊙ (x^i ⊙ z)     (FFT convolution)
    y = W_out (x⁰ ⊙ z)

``order`` N counts gates as in the authors' code (N − 1 implicit long filters; the short
explicit filter acts on every projection). Filters have length ``kernel_len`` (default the
model's max_len) and are evaluated on a fixed grid, so a tap's value does not depend on n.
Simplification: the positional features are fixed (the authors train them at lr 1e-5) and the
modulation rates δ are fixed (the authors' default, modulation_lr = 0).
Decoding keeps the last 2 projected inputs (short conv) and the last L − 1 inputs of each long
convolution: a fixed-size state, O(N L d) per token. Training: O(N d n log n) time.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import upcast
from ...nn.context import MixerContext
from ...nn.fftconv import conv_buffer, conv_with_state, fft_conv
from ...nn.ssm import check_positive
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import check_float, decode_kernel, resolve_kernel_len


class Sin(nn.Module):
    """sin(ω ⊙ x) with a learned frequency per unit (the implicit filter's activation)."""

    def __init__(self, dim: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Implicit filters: FFN of positional features, times an exponential decay window."""

    def __init__(self, channels: int, L: int, emb_dim: int = 3, width: int = 64,
                 layers: int = 2, w: float = 1.0, fast_decay_pct: float = 0.3,
                 slow_decay_pct: float = 1.5, target: float = 1e-2, shift: float = 0.0):
        super().__init__()
        t = torch.linspace(0, 1, L)[:, None]                            # (L, 1)
        bands = (emb_dim - 1) // 2
        w_pos = 2 * math.pi * torch.arange(L, dtype=torch.float32)[:, None] / L
        f = torch.linspace(1e-4, bands - 1, bands)[None]
        z = torch.exp(-1j * f * w_pos)
        self.register_buffer("z", torch.cat([t, z.real, z.imag], -1), persistent=False)
        self.register_buffer("t", t, persistent=False)                  # (L, 1)
        act = Sin(width, w)
        mods = [nn.Linear(emb_dim, width), act]
        for _ in range(layers):
            mods += [nn.Linear(width, width), act]
        mods.append(nn.Linear(width, channels, bias=False))
        self.mlp = nn.Sequential(*mods)
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, channels)[None],
                             persistent=False)
        self.shift = shift

    def forward(self, L: int) -> Tensor:
        """The first L taps of every filter: (channels, L)."""
        h = self.mlp(self.z[:L])                                         # (L, channels)
        decay = torch.exp(-self.t[:L] * self.deltas.abs())
        return (h * (decay + self.shift)).transpose(0, 1)


@MIXERS.register(
    "hyena",
    paper="Hyena Hierarchy: Towards Larger Convolutional Language Models (Poli et al., ICML 2023)",
    equation="eq. 3–7: z ← h^i * (x^i ⊙ z) + b^i ⊙ (x^i ⊙ z) for the N−1 implicit filters "
             "h^i_t = FFN(PosEmb(t))·exp(−|δ|t) (FFT convolution), y = W(x⁰ ⊙ z)",
    complexity=("O(N d n log n) train; O(N L d) per decoded token",
                "O(N d n) train; O(N L d) state"),
    test="tests/papers/test_ssm_hyena.py::test_hyena_fft_conv_equals_direct_conv_loop",
    tiny={"order": 2, "filter_width": 8, "kernel_len": 8})
class Hyena(Mixer):
    """Hyena operator: gates and implicit long filters, FFT convolutions, ring-buffer decoding."""

    supports = Supports(causal=True, bidirectional=False, cache=True)

    def __init__(self, d_model: int, max_len: int = 1024, order: int = 2,
                 kernel_len: int | None = None, filter_width: int = 64, filter_layers: int = 2,
                 emb_dim: int = 3, filter_freq: float = 1.0, short_len: int = 3,
                 modulation_shift: float = 0.0):
        super().__init__()
        check_positive("mixer.order", order)
        if order < 2:
            raise ConfigError("mixer.order", order, why=f"must be an integer >= 2, got {order}")
        check_positive("mixer.filter_width", filter_width)
        if isinstance(filter_layers, bool) or not isinstance(filter_layers, int) \
                or filter_layers < 0:
            raise ConfigError("mixer.filter_layers", filter_layers,
                              why=f"must be an integer >= 0, got {filter_layers!r}")
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 3 \
                or emb_dim % 2 == 0:
            raise ConfigError("mixer.emb_dim", emb_dim,
                              why=f"must be an odd integer >= 3 (time, cos, sin), got {emb_dim!r}")
        check_float("mixer.filter_freq", filter_freq, 0.0)
        check_float("mixer.modulation_shift", modulation_shift, 0.0, lo_open=False)
        self.short_len = check_positive("mixer.short_len", short_len)
        self.L = resolve_kernel_len(kernel_len, max_len)
        self.d_model, self.order = d_model, order
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width)
        self.short_w = nn.Parameter(torch.randn(width, short_len) / short_len ** 0.5)
        self.short_b = nn.Parameter(torch.zeros(width))
        self.filter = HyenaFilter(d_model * (order - 1), self.L, emb_dim, filter_width,
                                  filter_layers, filter_freq, shift=modulation_shift)
        self.bias = nn.Parameter(torch.randn(order - 1, d_model))        # b^i: the D terms
        self.out_proj = nn.Linear(d_model, d_model)

    def filters(self, L: int) -> Tensor:
        """(N−1, d, L): filter i (applied i-th, innermost first) over the first L taps."""
        return self.filter(L).view(self.order - 1, self.d_model, L)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        width = (self.order + 1) * self.d_model
        return {"short": conv_buffer(batch, self.short_len, width, device),
                "long": [conv_buffer(batch, self.L, self.d_model, device)
                         for _ in range(self.order - 1)]}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        mask = ctx.query_mask(n)
        u = upcast(self.in_proj(x))                                      # (B, n, (N+1) d)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if state is None:
                uc = fft_conv(u, self.short_w, mask=mask)
                k = self.filters(min(n, self.L))
            else:
                uc, short = conv_with_state(u, self.short_w, state["short"], mask=mask)
                k = decode_kernel(self, self.L, self.filters)
                longs = []
            uc = uc + self.short_b
            *xs, z = uc.split(self.d_model, -1)
            for i, x_i in enumerate(reversed(xs[1:])):
                z = z * x_i
                if state is None:
                    z = fft_conv(z, k[i], self.bias[i], mask)
                else:
                    z, buf = conv_with_state(z, k[i], state["long"][i], self.bias[i], mask)
                    longs.append(buf)
            y = xs[0] * z
        new_state = None if state is None else {"short": short, "long": longs}
        return self.out_proj(y.to(x.dtype)), new_state
