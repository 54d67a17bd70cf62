"""Flowformer: linear attention normalised by flow conservation (competition and allocation).

Paper: Flowformer: Linearizing Transformers with Conservation Flows (Wu, Wu, Xu, Wang & Long,
ICML 2022), §3 eq. 4–9 and the official Flow-Attention code (non-causal and causal versions),
with φ = sigmoid. Attention is a flow network: values flow from sources (keys) to sinks
(queries) with capacities φ(q_i)ᵀφ(k_j).

    incoming  I_i = φ(q_i)ᵀ Σ_j φ(k_j),      outgoing  O_j = φ(k_j)ᵀ Σ_i φ(q_i)
    conserved Î_i = φ(q_i)ᵀ Σ_j φ(k_j)/O_j,  Ô_j = φ(k_j)ᵀ Σ_i φ(q_i)/I_i
    competition  V̂ = softmax_j(Ô) · n ⊙ V,      allocation  A_i = sigmoid(Î_i)
    Y_i = A_i · (φ(q_i)/I_i)ᵀ Σ_j φ(k_j) V̂_jᵀ

Causal (official causal code): every sum runs over the prefix, divided/multiplied by the count
c_i of tokens so far ("approximate normal conservation"), and the competition of key j is fixed
at time j: softmax over the prefix ≤ j. Every prefix quantity is a running sum, so the layer has a
recurrent state (the sums, the count and S = Σ φ(k_j) V̂_jᵀ) that does not grow with n; the
matrix part runs through the shared chunked kernel. ε = 1e-6 as the reference.
Complexity: time O(n d²), memory O(n d + h d²).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...nn.chunked import FORMS, NEG, check_form, fp32_region, linear_attention, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, key_mask, merge_heads, project_qkv, qkvo, rotate_qk


def _cumsum(x: Tensor, start: Tensor | None, dim: int = 2) -> Tensor:
    """Prefix sums along ``dim`` continuing from ``start`` (the sum of the history)."""
    c = x.cumsum(dim)
    return c if start is None else c + start.unsqueeze(dim)


@MIXERS.register(
    "flowformer", paper="Flowformer: Linearizing Transformers with Conservation Flows (Wu et "
                        "al., ICML 2022)",
    equation="eq. 4–9: Y = sigmoid(Î) ⊙ (φ(Q)/I)(φ(K)ᵀ(softmax(Ô)·n ⊙ V)), I, O incoming/"
             "outgoing flows, Î, Ô conserved flows, φ = sigmoid",
    complexity=("O(n d²)", "O(n d + h d²)"),
    test="tests/papers/test_linear_flowformer.py::test_flow_attention_equals_reference_equations",
    tiny={"heads": 2, "chunk": 4})
class FlowAttention(Mixer):
    """Linear attention with flow-conservation competition (softmax over sources) and
    allocation (sigmoid gate on sinks); causal with a recurrent state."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 form: str = "chunk", chunk: int = 64, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.form, self.chunk, self.eps = check_form(form, FORMS), int(chunk), eps
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v = project_qkv(self, x)
        q, k, pos = rotate_qk(q, k, x, ctx)
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            q, k, v = torch.sigmoid(upcast(q)), torch.sigmoid(upcast(k)), upcast(v)
            m = key_mask(mask, q)                                             # (B, 1, n, 1)
            if m is not None:
                q, k, v = q * m, k * m, v * m
            if ctx.causal:
                y, new_state = self._causal(q, k, v, m, state)
            else:
                y, new_state = self._bidirectional(q, k, v, m), None
        return self.o_proj(merge_heads(y.to(dtype))), new_state

    def _bidirectional(self, q, k, v, m):
        eps = self.eps
        n_real = q.new_full((q.shape[0], 1, 1), q.shape[2]) if m is None else m.sum(2)  # (B,1,1)
        inc = 1.0 / ((q + eps) * (k.sum(2, keepdim=True) + eps)).sum(-1)        # (B, h, n)
        out = 1.0 / ((k + eps) * (q.sum(2, keepdim=True) + eps)).sum(-1)
        c_sink = ((q + eps) * ((k * out.unsqueeze(-1)).sum(2, keepdim=True) + eps)).sum(-1)
        c_src = ((k + eps) * ((q * inc.unsqueeze(-1)).sum(2, keepdim=True) + eps)).sum(-1)
        c_src = c_src.clamp(-1.0, 1.0)                                           # stability
        alloc = torch.sigmoid(c_sink)                                            # n_q / n_k = 1
        if m is not None:
            c_src = c_src.masked_fill(m[..., 0] == 0, NEG)
        comp = c_src.softmax(-1) * n_real                                        # (B, h, n)
        kv = k.transpose(-1, -2) @ (v * comp.unsqueeze(-1))                      # (B, h, e, e)
        return ((q * inc.unsqueeze(-1)) @ kv) * alloc.unsqueeze(-1)

    def _causal(self, q, k, v, m, state):
        eps, st = self.eps, state or {}
        B, h, n, e = q.shape
        real = torch.ones_like(q[..., :1]) if m is None else m.expand(B, h, n, 1)
        cnt = _cumsum(real[..., 0], st.get("count"))                             # c_i: (B, h, n)
        normal = cnt.clamp_min(1.0)
        sum_k = _cumsum(k, st.get("sum_k"))
        sum_q = _cumsum(q, st.get("sum_q"))
        inc = normal / ((q + eps) * (sum_k + eps)).sum(-1)                       # (B, h, n)
        out = normal / ((k + eps) * (sum_q + eps)).sum(-1)
        if m is not None:                                      # padding carries no flow
            inc, out = inc * real[..., 0], out * real[..., 0]
        sum_ko = _cumsum(k * out.unsqueeze(-1), st.get("sum_ko"))
        sum_qi = _cumsum(q * inc.unsqueeze(-1), st.get("sum_qi"))
        c_sink = ((q + eps) * (sum_ko + eps)).sum(-1) / normal
        c_src = (((k + eps) * (sum_qi + eps)).sum(-1) / normal).clamp(-1.0, 1.0)
        alloc = torch.sigmoid(c_sink)
        e_src = c_src.exp() * real[..., 0]                                       # ≤ e: safe
        sum_e = _cumsum(e_src, st.get("sum_e"))
        comp = e_src / sum_e.clamp_min(1e-30) * normal                           # fixed at time j
        qn = q * (inc / normal).unsqueeze(-1)
        form = "recurrent" if (state is not None and n == 1) else self.form
        o, S = linear_attention(qn, k, v * comp.unsqueeze(-1), form=form, chunk=self.chunk,
                                state=st.get("S"))
        y = o * alloc.unsqueeze(-1)
        new_state = None
        if state is not None:
            new_state = {"S": S, "count": cnt[..., -1], "sum_k": sum_k[:, :, -1],
                         "sum_q": sum_q[:, :, -1], "sum_ko": sum_ko[:, :, -1],
                         "sum_qi": sum_qi[:, :, -1], "sum_e": sum_e[..., -1]}
        return y, new_state
