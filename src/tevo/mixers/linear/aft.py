"""Attention Free Transformer (AFT): full, simple, local and conv variants.

Paper: An Attention Free Transformer (Zhai, Talbott, Srivastava, Huang, Goh, Zhang & Susskind,
2021), §3 eq. 2 (AFT-full), §3.1–3.3 (AFT-local, AFT-simple, AFT-conv), causal forms in §3.

    Y_t = σ(Q_t) ⊙ Σ_{t'} exp(K_{t'} + w_{t,t'}) ⊙ V_{t'} / Σ_{t'} exp(K_{t'} + w_{t,t'})

(elementwise over channels; t' ≤ t in the causal form). Variants of the position bias w:
- ``full``: a learned pairwise bias, factorised w = U Vᵀ (U, V: max_len × rank, as the paper
  does for its experiments), indexed by absolute positions;
- ``local``: the same, but w_{t,t'} = 0 outside |t − t'| < window (tokens still see everything,
  weighted by exp(K) alone);
- ``conv``: w_{t,t'} = w^h_{t−t'} a per-head relative kernel of size ``window`` (channels split
  into heads), 0 outside;
- ``simple``: w = 0 — Y_t = σ(Q_t) ⊙ Σ softmax_{t'}(K)_{t'} ⊙ V_{t'}, computed for the causal
  form as the stable cumulative softmax average (a linear recurrence run by ``parallel_scan``).

Complexity: simple O(n d) time and memory (recurrent state O(d)); full/local/conv O(n² d) time,
O(n² + n d) memory (exp(w) @ (exp(K) ⊙ V) as matrix products), decoding with a K/V cache.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from ...nn.chunked import (CUMSOFTMAX_FORMS, check_form, cumulative_softmax_average, fp32_region,
                           upcast)
from ...nn.context import MixerContext
from ...nn.masks import attention_mask
from ...registry import MIXERS
from ..base import Mixer, Supports

VARIANTS = ("full", "simple", "local", "conv")


@MIXERS.register(
    "aft", paper="An Attention Free Transformer (Zhai et al., 2021)",
    equation="eq. 2: Y_t = σ(Q_t) ⊙ Σ_{t'} exp(K_{t'} + w_{t,t'}) ⊙ V_{t'} / "
             "Σ_{t'} exp(K_{t'} + w_{t,t'}); simple: w = 0; local/conv: banded w",
    complexity=("simple O(n d); full/local/conv O(n² d)", "simple O(n d); others O(n² + n d)"),
    test="tests/papers/test_linear_aft.py::test_aft_simple_causal_equals_cumulative_form",
    tiny={"variant": "simple"})
class AttentionFreeTransformer(Mixer):
    """AFT: elementwise attention-free mixing by exp(K + w)-weighted averages gated by σ(Q)."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, variant: str = "simple", max_len: int = 4096,
                 window: int = 32, heads: int = 4, rank: int = 64, form: str = "scan",
                 bias: bool = True):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError("mixer.variant", variant, VARIANTS)
        if int(window) < 1:
            raise ConfigError("mixer.window", window, why="must be >= 1")
        if variant == "conv" and d_model % int(heads):
            raise ConfigError("mixer.heads", heads,
                              why=f"d_model={d_model} is not divisible by heads={heads}")
        self.variant, self.max_len, self.window = variant, int(max_len), int(window)
        self.heads = int(heads) if variant == "conv" else 1
        self.form = check_form(form, CUMSOFTMAX_FORMS)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        if variant in ("full", "local"):        # w = U Vᵀ (zero at init: starts as AFT-simple)
            self.w_u = nn.Parameter(torch.randn(self.max_len, int(rank)) * 0.02)
            self.w_v = nn.Parameter(torch.zeros(self.max_len, int(rank)))
        elif variant == "conv":
            self.w_conv = nn.Parameter(torch.zeros(self.heads, 2 * self.window - 1))

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    # -- the position bias w ------------------------------------------------------------------
    def position_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(B, H, n_q, n_k) bias w for absolute positions (H = heads for conv, else 1)."""
        if self.variant == "conv":
            rel = q_pos[:, :, None] - k_pos[:, None, :]                    # (B, n_q, n_k)
            inside = rel.abs() < self.window
            idx = (rel + self.window - 1).clamp(0, 2 * self.window - 2)
            w = self.w_conv[:, idx].permute(1, 0, 2, 3)                    # (B, H, n_q, n_k)
            return w * inside[:, None]
        top = int(torch.maximum(q_pos.max(), k_pos.max())) if q_pos.numel() else 0
        if top >= self.max_len:
            raise InputError(f"position {top} is past AFT-{self.variant}'s learned bias table "
                             f"(max_len={self.max_len}); use variant 'simple' or 'conv'")
        w = self.w_u[q_pos] @ self.w_v[k_pos].transpose(-1, -2)           # (B, n_q, n_k)
        if self.variant == "local":
            w = w * ((q_pos[:, :, None] - k_pos[:, None, :]).abs() < self.window)
        return w.unsqueeze(1)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q_pos = ctx.query_positions(x)
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            k, v = upcast(k), upcast(v)
            if self.variant == "simple":
                form = "recurrent" if (state is not None and n == 1) else self.form
                avg, _, st = cumulative_softmax_average(k, v, causal=ctx.causal, mask=mask,
                                                        state=state, form=form)
                new_state = st if (state is not None and ctx.causal) else None
            else:
                avg, new_state = self._pairwise(k, v, q_pos, ctx, state)
        y = torch.sigmoid(q) * avg.to(dtype)
        return self.o_proj(y), new_state

    def _pairwise(self, k, v, q_pos, ctx, state):
        """Σ_t' exp(K_t' + w_tt') V_t' / Σ_t' exp(K_t' + w_tt') with a K/V cache."""
        B, n, d = k.shape
        k_pos = q_pos
        if state is not None and "k" in state:
            k = torch.cat([state["k"], k], 1)
            v = torch.cat([state["v"], v], 1)
            k_pos = torch.cat([state["pos"], k_pos], 1)
        new_state = None if state is None else {"k": k, "v": v, "pos": k_pos}
        n_k, H = k.shape[1], self.heads
        w = upcast(self.position_bias(q_pos, k_pos))                       # (B|1, H, n, n_k)
        allowed = attention_mask(n, n_k, ctx.causal, ctx.key_padding_mask, k.device)
        if allowed is not None:                                            # (B|1, 1, n, n_k)
            w = w.masked_fill(~allowed, float("-inf"))
        # stabilise: subtract constants that cancel between numerator and denominator
        w_max = w.amax(-1, keepdim=True).clamp_min(-1e30).detach()        # per query row
        ew = (w - w_max).exp()                                             # (B, H, n, n_k)
        kpm = ctx.key_padding_mask
        kk = k if kpm is None else k.masked_fill(~kpm[:, :, None], -1e30)  # pads: no max, no mass
        k_max = kk.amax(1, keepdim=True).detach()                          # per channel
        ek = (kk - k_max).exp()                                            # (B, n_k, d)
        ek = ek.view(B, n_k, H, d // H).transpose(1, 2)                    # (B, H, n_k, d/H)
        ev = v.view(B, n_k, H, d // H).transpose(1, 2)
        num = ew @ (ek * ev)
        den = ew @ ek
        out = num / den.clamp_min(1e-30)
        return out.transpose(1, 2).reshape(B, n, d), new_state
