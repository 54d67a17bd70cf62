"""Average attention network (AAN): a cumulative average replaces decoder self-attention.

Paper: Accelerating Neural Transformer via an Average Attention Network (Zhang et al., 2018),
§3 eq. 1–3:
    g_j = FFN( (1/j) Σ_{k≤j} y_k )                       (average layer + feed-forward)
    i_j, f_j = σ(W [y_j ; g_j] + b)                        (input and forget gates)
    h̃_j = i_j ⊙ y_j + f_j ⊙ g_j                            (gating layer)
The residual and layer norm around it (eq. 4) are the block's. Padded tokens are left out of the
running sum and count, so left padding changes nothing. Decoding keeps the running sum and count:
O(d) state and O(d²) work per token, independent of the position.
Complexity: time O(n d²); memory O(n d); decode state O(d).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "aan", paper="Accelerating Neural Transformer via an Average Attention Network "
                 "(Zhang et al., 2018)",
    equation="§3 eq. 1-3: g_j = FFN(1/j Σ_{k≤j} y_k); [i_j; f_j] = σ(W[y_j; g_j]); "
             "h̃_j = i_j ⊙ y_j + f_j ⊙ g_j",
    complexity=("O(n d²)", "O(n d); decode state O(d)"),
    test="tests/papers/test_attention_aan.py::test_aan_equals_naive_loop_and_decodes_in_o1",
    tiny={"d_ff": 32})
class AverageAttention(Mixer):
    """Cumulative-average attention with a feed-forward layer and input/forget gating."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, d_ff: int | None = None, dropout: float = 0.0):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_ff, d_model))
        self.gate = nn.Linear(2 * d_model, 2 * d_model)

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        qm = ctx.query_mask(n)
        m = torch.ones(B, n, 1, dtype=x.dtype, device=x.device) if qm is None else \
            qm.to(x.dtype).unsqueeze(-1)                                  # (B, n, 1)
        s0 = state.get("sum") if state else None
        c0 = state.get("count") if state else None
        csum = torch.cumsum(x * m, 1)                                     # (B, n, d)
        cnt = torch.cumsum(m, 1)                                          # (B, n, 1)
        if s0 is not None:
            csum, cnt = csum + s0.unsqueeze(1), cnt + c0.unsqueeze(1)
        g = self.ffn(csum / cnt.clamp(min=1.0))                           # eq. 1
        i, f = torch.sigmoid(self.gate(torch.cat([x, g], -1))).chunk(2, -1)   # eq. 2
        y = i * x + f * g                                                 # eq. 3
        new_state = None if state is None else {"sum": csum[:, -1], "count": cnt[:, -1]}
        return y, new_state
