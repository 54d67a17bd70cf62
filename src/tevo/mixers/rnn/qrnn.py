"""QRNN: quasi-recurrent neural network (convolutional gates + fo-pooling).

Paper: Quasi-Recurrent Neural Networks (Bradbury, Merity, Xiong & Socher, ICLR 2017), §2,
eqs. 1–4.

    Z = tanh(W_z * X),  F = σ(W_f * X),  O = σ(W_o * X),  I = σ(W_i * X)            (eq. 1, 2)
    f-pooling:   h_t = f_t ⊙ h_{t-1} + (1 − f_t) ⊙ z_t                                (eq. 3)
    fo-pooling:  c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ z_t,  h_t = o_t ⊙ c_t              (eq. 4)
    ifo-pooling: c_t = f_t ⊙ c_{t-1} + i_t ⊙ z_t,        h_t = o_t ⊙ c_t              (eq. 5)

``*`` is a causal ("masked") convolution of width k = ``window`` over time, dense over channels
(W ∈ ℝ^{k×d×d}: one linear map of the k stacked inputs x_t, ..., x_{t−k+1}); hidden size = d.
The pooling is a diagonal linear recurrence in c, so training runs ``tevo.nn.scan.parallel_scan``
(O(n d log n) work, O(log n) depth; ``form: recurrent`` loops the one-token step instead).
Decoding state: the last k − 1 inputs and c_t — fixed size, O(k d). Zoneout (the paper's
regulariser) is left to the model's dropout.
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
from .common import causal_taps, empty_taps_buffer, hold_on_padding, positive, zero_padding

POOLINGS = {"f": 2, "fo": 3, "ifo": 4}           # pooling → number of gate maps (Z, F, O, I)
FORMS = ("scan", "recurrent")


@MIXERS.register(
    "qrnn", paper="Quasi-Recurrent Neural Networks (Bradbury et al., 2017)",
    equation="eqs. 1–4: Z, F, O = tanh/σ(W * X) (causal width-k conv); fo-pooling "
             "c_t = f_t c_{t-1} + (1 − f_t) z_t, h_t = o_t c_t",
    complexity=("O(n k d²) (scan O(n d log n))", "O(n k d); decode O(k d)"),
    test="tests/papers/test_rnn_qrnn_sru.py::test_qrnn_fo_pooling_equals_loop",
    tiny={"window": 2})
class QRNN(Mixer):
    """QRNN: causal-convolution gates and f/fo/ifo-pooling (a diagonal linear recurrence)."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, window: int = 2, pooling: str = "fo", form: str = "scan"):
        super().__init__()
        self.window = positive("mixer.window", window)
        if pooling not in POOLINGS:
            raise ConfigError("mixer.pooling", pooling, tuple(POOLINGS))
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS)
        self.pooling, self.form, self.d = pooling, form, int(d_model)
        self.conv = nn.Linear(self.window * self.d, POOLINGS[pooling] * self.d)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"buf": empty_taps_buffer(batch, self.window, 1, self.d, device),
                "c": torch.zeros(batch, self.d, device=device)}

    def gates(self, x: Tensor, mask: Tensor | None, buf: Tensor | None):
        """The convolution's gate maps Z, F, (O), (I), each (B, n, d), and the new buffer."""
        taps, buf = causal_taps(zero_padding(x, mask), self.window, 1, buf)   # (B, n, k, d)
        g = self.conv(taps.flatten(2)).chunk(POOLINGS[self.pooling], -1)
        z, f = torch.tanh(g[0]), torch.sigmoid(g[1])
        o = torch.sigmoid(g[2]) if self.pooling != "f" else None
        i = torch.sigmoid(g[3]) if self.pooling == "ifo" else 1 - f
        return z, f, o, i, buf

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        mask = ctx.query_mask(n)
        z, f, o, i, buf = self.gates(x, mask, None if state is None else state["buf"])
        with fp32_region(x.device.type):
            a, b = hold_on_padding(upcast(f), upcast(i) * upcast(z), mask)
            c0 = None if state is None else state["c"].float()
            if self.form == "scan" and not (state is not None and n == 1):
                c = parallel_scan(a, b, c0, dim=1)                         # (B, n, d)
            else:
                c = linear_recurrence_loop(a, b, c0, dim=1)     # one-token steps
            h = c if o is None else upcast(o) * c
        new_state = None if state is None else {"buf": buf, "c": c[:, -1]}
        return h.to(x.dtype), new_state
