"""Recurrent fast weight programmer: the delta-rule layer with its output fed back to the slow net.

Paper: Going Beyond Linear Transformers with Recurrent Fast Weight Programmers (Irie, Schlag,
Csordás & Schmidhuber, NeurIPS 2021), §3 eq. 8–13 ("Recurrent Delta Net", RDN):

    q_t, k_t, v_t, β_t = W_{q,k,v,β} x_t + R_{q,k,v,β} tanh(y_{t-1})     (recurrent slow net)
    W_t = W_{t-1} + σ(β_t) φ(k_t)(v_t − W_{t-1}ᵀφ(k_t))ᵀ,   y_t = W_tᵀ φ(q_t)

y_t (all heads, before the output projection) feeds the next step's projections, so the layer
is a genuine RNN: it has only the recurrent form (a loop over tokens; no chunk form exists since
q, k, v depend on earlier outputs). R = 0 gives ``fast_weight``. Padded tokens leave W and y
unchanged. Complexity: time O(n (m d + d²)) sequential, state O(h m d + h d).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from .common import merge_heads
from .fast_weight import DeltaRuleBase


@MIXERS.register(
    "recurrent_fwp", paper="Going Beyond Linear Transformers with Recurrent Fast Weight "
                           "Programmers (Irie et al., NeurIPS 2021)",
    equation="eq. 8–13 (RDN): [q,k,v,β]_t = W x_t + R tanh(y_{t-1}); delta rule on W_t; "
             "y_t = W_tᵀφ(q_t)",
    complexity=("O(n (m d + d²)) sequential", "O(h m d + d)"),
    test="tests/papers/test_linear_recurrent_fwp.py::test_zero_feedback_equals_fast_weight",
    tiny={"heads": 2, "feature_map": "elu+1"})
class RecurrentFastWeightProgrammer(DeltaRuleBase):
    """Recurrent Delta Net: fast weights written by a slow net that sees its previous output."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 feature_map=None, sum_normalize: bool = True, bias: bool = False,
                 max_len: int = 4096):
        super().__init__(d_model, heads, head_dim, feature_map, sum_normalize, bias, max_len)
        inner = self.heads * self.head_dim
        self.r_proj = nn.Linear(inner, 3 * inner + self.heads, bias=False)   # R_q, R_k, R_v, R_β

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        h, e = self.heads, self.head_dim
        inner = h * e
        pos = ctx.query_positions(x)
        rotate = ctx.pos is not None and "qk" in ctx.pos.hooks
        mask = ctx.query_mask(n)
        # input projections in the model's dtype; the recurrence itself in fp32
        wq, wk, wv = (upcast(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B,n,he)
        wb = upcast(self.beta_proj(x))                                       # (B, n, h)
        rdt = self.r_proj.weight.dtype
        with fp32_region(x.device.type):
            st = state or {}
            S = st.get("S")
            y_prev = st.get("y", wq.new_zeros(B, inner))
            outs = []
            for t in range(n):
                r = upcast(self.r_proj(torch.tanh(y_prev).to(rdt)))
                rq, rk, rv, rb = r.split([inner, inner, inner, h], -1)
                q = (wq[:, t] + rq).view(B, h, 1, e)
                k = (wk[:, t] + rk).view(B, h, 1, e)
                v = (wv[:, t] + rv).view(B, h, e)
                beta = torch.sigmoid(wb[:, t] + rb)                          # (B, h)
                if rotate:
                    q, k = ctx.pos.rotate(q, k, pos[:, t:t + 1], pos[:, t:t + 1])
                fq, fk = self.phi(q, k, ctx, pos[:, t:t + 1])
                fq, fk = fq[:, :, 0], fk[:, :, 0]                            # (B, h, m)
                if S is None:
                    S = wq.new_zeros(B, h, fk.shape[-1], e)
                v_old = (fk.unsqueeze(-2) @ S).squeeze(-2)                   # Wᵀφ(k): (B, h, e)
                S_new = S + fk.unsqueeze(-1) * (beta.unsqueeze(-1) * (v - v_old)).unsqueeze(-2)
                y = (fq.unsqueeze(-2) @ S_new).squeeze(-2).reshape(B, inner)  # (B, h e)
                if mask is not None:                 # padding: keep the previous state
                    keep = mask[:, t]
                    S_new = torch.where(keep[:, None, None, None], S_new, S)
                    y = torch.where(keep[:, None], y, y_prev)
                S, y_prev = S_new, y
                outs.append(y)
        out = torch.stack(outs, 1).view(B, n, h, e).transpose(1, 2)          # (B, h, n, e)
        new_state = None if state is None else {"S": S, "y": y_prev}
        return self.o_proj(merge_heads(out).to(x.dtype)), new_state
