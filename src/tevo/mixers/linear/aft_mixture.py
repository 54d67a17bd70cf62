"""AFT mixture: the Attention Free Transformer with a rank-r mixture position bias, linear in n.

tevo's own construction (not a published mechanism): it was first registered as "daft" under
A Dot Product Attention Free Transformer (DAFT; Zhai et al., ICLR 2022 submission), whose
"decomposable attention map" is not this factorisation, hence its own name here. It builds on
AFT-full (An Attention Free Transformer, Zhai et al., 2021, eq. 2) and replaces the learned
pairwise bias by r non-negative rank-one terms,
    exp(w_{t,t'}) = Σ_r exp(a_{t,r}) exp(b_{t',r})      (a, b: learned per absolute position)
which turns AFT-full (O(n² d)) into r cumulative softmax averages (O(n r d)):
    Y_t = σ(Q_t) ⊙ Σ_r exp(a_{t,r}) N_{t,r} / Σ_r exp(a_{t,r}) D_{t,r},
    N_{t,r} = Σ_{t'≤t} exp(K_{t'} + b_{t',r}) ⊙ V_{t'},   D_{t,r} = Σ_{t'≤t} exp(K_{t'} + b_{t',r})
         = σ(Q_t) ⊙ Σ_r softmax_r(a_{t,r} + log D_{t,r}) · (N_{t,r}/D_{t,r})
N/D and log D come from the stable cumulative softmax average (``parallel_scan``); the recurrent
state is (log D, N/D) per factor: O(r d), independent of n. With r = 1 and a = b = 0 it is
AFT-simple.
Complexity: time O(n r d), memory O(n r d); state O(r d).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from ...nn.chunked import (CUMSOFTMAX_FORMS, check_form, cumulative_softmax_average, fp32_region,
                           upcast)
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "aft_mixture", paper="tevo construction on An Attention Free Transformer (Zhai et al., 2021)",
    equation="AFT eq. 2 with exp(w_{t,t'}) = Σ_r exp(a_{t,r} + b_{t',r}): Y_t = σ(Q_t) ⊙ "
             "Σ_r e^{a_tr} Σ_{t'} e^{K_t'+b_t'r} V_t' / Σ_r e^{a_tr} Σ_{t'} e^{K_t'+b_t'r}",
    complexity=("O(n r d)", "O(n r d); state O(r d)"),
    test="tests/papers/test_linear_aft_mixture.py::test_decomposed_bias_equals_explicit_aft_full",
    tiny={"rank": 3})
class AFTMixture(Mixer):
    """AFT with a rank-r non-negative decomposition of exp(w): linear time, O(r d) state."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, rank: int = 8, max_len: int = 4096, form: str = "scan",
                 bias: bool = True):
        super().__init__()
        if int(rank) < 1:
            raise ConfigError("mixer.rank", rank, why="must be >= 1")
        self.rank, self.max_len = int(rank), int(max_len)
        self.form = check_form(form, CUMSOFTMAX_FORMS)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.a = nn.Parameter(torch.randn(self.max_len, self.rank) * 0.02)   # query-side factors
        self.b = nn.Parameter(torch.randn(self.max_len, self.rank) * 0.02)   # key-side factors

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        pos = ctx.query_positions(x)
        if pos.numel() and int(pos.max()) >= self.max_len:
            raise InputError(f"position {int(pos.max())} is past aft_mixture's factor tables "
                             f"(max_len={self.max_len})")
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            a, b = upcast(self.a[pos]), upcast(self.b[pos])              # (B, n, r)
            logits = upcast(k).unsqueeze(2) + b.unsqueeze(-1)            # (B, n, r, d)
            form = "recurrent" if (state is not None and n == 1) else self.form
            avg, logD, st = cumulative_softmax_average(logits, upcast(v).unsqueeze(2),
                                                       causal=ctx.causal, mask=mask,
                                                       state=state, form=form)
            wts = (a.unsqueeze(-1) + logD).softmax(2)                    # over the r factors
            y = (wts * avg).sum(2)                                        # (B, n, d)
        new_state = st if (state is not None and ctx.causal) else None
        return self.o_proj(torch.sigmoid(q) * y.to(dtype)), new_state
