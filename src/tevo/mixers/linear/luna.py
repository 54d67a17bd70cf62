"""Luna: Linear Unified Nested Attention — pack the sequence into p slots, then unpack.

Paper: Luna: Linear Unified Nested Attention (Ma, Kong, Wang, Zhou, May, Ma & Zettlemoyer,
NeurIPS 2021), §3.1 eq. 3–5:

    Y_P = Pack(X, P)   = Attn(P W_q^p, X W_k^p, X W_v^p)          (p × d: P attends to X)
    Y_X = Unpack(X, Y_P) = Attn(X W_q^u, Y_P W_k^u, Y_P W_v^u)    (n × d: X attends to Y_P)

with multi-head softmax attention and P a learned p × d matrix. Both attentions have one side of
fixed length p, so with p fixed the cost is linear in n: time O(n p d), memory O(n p).
Bidirectional (this is the paper's bidirectional form; the packed context pools the whole
sequence). Each layer owns its P (the paper threads layer l's packed output, layer-normed with
P, into layer l+1; a per-layer P keeps the mixer contract local). Padded keys are masked.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.attention import eager_attention
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, merge_heads, split_heads


@MIXERS.register(
    "luna", paper="Luna: Linear Unified Nested Attention (Ma et al., NeurIPS 2021)",
    equation="eq. 3–5: Y_P = Attn(P, X), Y_X = Attn(X, Y_P)",
    complexity=("O(n p d)", "O(n p + p d)"),
    test="tests/papers/test_linear_luna.py::test_pack_unpack_equals_formula_and_cost_is_linear",
    tiny={"heads": 2, "p": 4})
class LunaAttention(Mixer):
    """Pack-and-unpack attention through p learned slots: linear in n for fixed p."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None, p: int = 16,
                 bias: bool = True):
        super().__init__()
        if int(p) < 1:
            raise ConfigError("mixer.p", p, why="must be >= 1")
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        inner = self.heads * self.head_dim
        self.P = nn.Parameter(torch.randn(int(p), d_model) / math.sqrt(d_model))
        names = ("pq", "pk", "pv", "po", "uq", "uk", "uv")
        dims = [(d_model, inner)] * 3 + [(inner, d_model)] + [(d_model, inner)] * 3
        for name, (a, b) in zip(names, dims):
            setattr(self, f"{name}_proj", nn.Linear(a, b, bias=bias))
        self.o_proj = nn.Linear(inner, d_model, bias=bias)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        h = self.heads
        mask = ctx.query_mask(n)
        kpm = None if mask is None else mask[:, None, None, :]            # (B, 1, 1, n)
        P = self.P.unsqueeze(0).expand(B, -1, -1).to(x.dtype)              # (B, p, d)
        # pack: the p slots attend to the sequence
        yp = eager_attention(split_heads(self.pq_proj(P), h), split_heads(self.pk_proj(x), h),
                             split_heads(self.pv_proj(x), h), kpm)          # (B, h, p, e)
        yp = self.po_proj(merge_heads(yp))                                  # (B, p, d)
        # unpack: the sequence attends to the packed slots
        y = eager_attention(split_heads(self.uq_proj(x), h), split_heads(self.uk_proj(yp), h),
                            split_heads(self.uv_proj(yp), h))               # (B, h, n, e)
        return self.o_proj(merge_heads(y)), None
