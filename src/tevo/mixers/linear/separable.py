"""Separable self-attention (MobileViTv2): one context vector from softmax context scores.

Paper: Separable Self-attention for Mobile Vision Transformers (Mehta & Rastegari, 2022), §3.2,
Fig. 4(c):
    c = softmax_n(X W_I)  (n × 1 context scores),   c_v = Σ_j c_j (X W_K)_j   (context vector)
    Y = (relu(X W_V) ⊙ c_v) W_O

Bidirectional as in the paper; the causal form takes the context vector of the prefix,
c_v,t = Σ_{j≤t} softmax_{j≤t}(X W_I)_j (X W_K)_j — a cumulative softmax average (stable,
``parallel_scan``), with a recurrent state (log-normaliser, c_v) of O(d).
Complexity: time O(n d²) (projections; the mixing itself is O(n d)), memory O(n d).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.chunked import (CUMSOFTMAX_FORMS, check_form, cumulative_softmax_average, fp32_region,
                           upcast)
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "separable", paper="Separable Self-attention for Mobile Vision Transformers (MobileViTv2; "
                       "Mehta & Rastegari, 2022)",
    equation="§3.2: c = softmax(XW_I), c_v = Σ_j c_j (XW_K)_j, Y = (relu(XW_V) ⊙ c_v) W_O",
    complexity=("O(n d²)", "O(n d)"),
    test="tests/papers/test_linear_separable.py::test_separable_equals_context_vector_formula",
    tiny={})
class SeparableAttention(Mixer):
    """Linear-cost attention through a single softmax-weighted context vector."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, form: str = "scan", bias: bool = True):
        super().__init__()
        self.form = check_form(form, CUMSOFTMAX_FORMS)
        self.i_proj = nn.Linear(d_model, 1, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        scores, k, v = self.i_proj(x), self.k_proj(x), F.relu(self.v_proj(x))
        dtype = v.dtype
        with fp32_region(x.device.type):
            form = "recurrent" if (state is not None and n == 1) else self.form
            cv, _, st = cumulative_softmax_average(upcast(scores), upcast(k), causal=ctx.causal,
                                                   mask=ctx.query_mask(n), state=state,
                                                   form=form)                  # (B, n, d)
        new_state = st if (state is not None and ctx.causal) else None
        return self.o_proj(v * cv.to(dtype)), new_state
