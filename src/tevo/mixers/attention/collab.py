"""Collaborative multi-head attention.

Paper: Multi-Head Attention: Collaborate Instead of Concatenate (Cordonnier et al., 2020), §3,
eq. 6–7: all heads share one query and one key projection W̃_Q, W̃_K (d × D̃) and each head
re-weights the D̃ shared dimensions with its own mixing vector m_i:
    head_i = softmax( (X W̃_Q diag(m_i) W̃_K^T X^T + 1 (X r_i)^T) / √(D̃/h) ) X W_V^i,
    MultiHead = Concat(head_1..h) W_O.
The "content bias" r_i (a vector of R^d per head, §3.2) is what remains of the query bias of a
standard layer: (x W_Q + b_Q)(x' W_K + b_K)^T = x W_Q W_K^T x'^T + b_Q W_K^T x'^T + terms constant
over keys (which the softmax ignores), so a trained multi-head layer is reproduced exactly at
D̃ = h·e by W̃ = [W^1 … W^h], m_i = the indicator of head i's block, r_i = W_K^i b_Q^i
(``from_attention``); smaller D̃ shares key/query dimensions across heads.
Complexity: time O(n² h D̃ + n d D̃), memory O(n² h); the KV cache holds the shared keys (n·D̃),
values and content terms.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.attention import eager_attention
from ...nn.context import MixerContext
from ...nn.masks import attention_mask
from ...registry import MIXERS
from ..base import Mixer, Supports

MIXING_INITS = ("concatenate", "normal")


@MIXERS.register(
    "collab",
    paper="Multi-Head Attention: Collaborate Instead of Concatenate (Cordonnier et al., 2020)",
    equation="eq. 6–7: head_i = softmax((X W̃_Q diag(m_i) W̃_K^T X^T + 1(X r_i)^T)/√(D̃/h)) X W_V^i",
    complexity=("O(n² h D̃ + n d D̃)", "O(n² h)"),
    test="tests/papers/test_attention_collab.py::"
         "test_reparametrised_trained_mha_is_reproduced_at_full_rank",
    tiny={"heads": 2})
class CollaborativeAttention(Mixer):
    """Heads share one query/key projection and differ by a mixing vector over its dimensions."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, shared_dim: int | None = None,
                 head_dim: int | None = None, bias: bool = True, content_bias: bool = True,
                 mixing_init: str = "concatenate", dropout: float = 0.0,
                 scale: float | None = None):
        super().__init__()
        if head_dim is None:
            if d_model % heads:
                raise ConfigError("mixer.heads", heads,
                                  why=f"d_model={d_model} is not divisible by heads={heads}")
            head_dim = d_model // heads
        D = heads * head_dim if shared_dim is None else int(shared_dim)
        if D < 1:
            raise ConfigError("mixer.shared_dim", shared_dim, why="shared_dim must be >= 1")
        if mixing_init not in MIXING_INITS:
            raise ConfigError("mixer.mixing_init", mixing_init, MIXING_INITS)
        self.heads, self.head_dim, self.shared_dim = heads, head_dim, D
        self.mixing_init, self.dropout = mixing_init, dropout
        self.scale = scale if scale is not None else (D / heads) ** -0.5
        self.q_proj = nn.Linear(d_model, D, bias=False)       # W̃_Q (biases: see content bias)
        self.k_proj = nn.Linear(d_model, D, bias=False)       # W̃_K
        self.v_proj = nn.Linear(d_model, heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=bias)
        self.content_bias = nn.Linear(d_model, heads, bias=False) if content_bias else None
        self.mixing = nn.Parameter(torch.zeros(heads, D))     # m_i, one row per head
        self.init_weights()

    def init_weights(self):
        with torch.no_grad():
            if self.mixing_init == "normal":                  # the reference code's default
                self.mixing.normal_(0.0, 0.2)
            else:                                             # block i → head i, as concatenation
                self.mixing.zero_()
                w = -(-self.shared_dim // self.heads)
                for i in range(self.heads):
                    self.mixing[i, i * w:(i + 1) * w] = 1.0

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q = self.q_proj(x)                                               # (B, n, D̃)
        k = self.k_proj(x)                                               # (B, n, D̃) shared
        v = self.v_proj(x).view(B, n, self.heads, self.head_dim).transpose(1, 2)   # (B, h, n, e)
        c = (self.content_bias(x).transpose(1, 2) if self.content_bias is not None
             else x.new_zeros(B, self.heads, n))                         # (B, h, n) X r_i
        if state is not None and "k" in state:
            k = torch.cat([state["k"], k], 1)
            v = torch.cat([state["v"], v], 2)
            c = torch.cat([state["c"], c], 2)
        new_state = None if state is None else {"k": k, "v": v, "c": c}
        m = k.shape[1]
        kpm = ctx.key_padding_mask
        if kpm is not None and kpm.shape[1] != m:
            raise ValueError(f"key_padding_mask covers {kpm.shape[1]} keys, attention has {m}")
        mask = attention_mask(n, m, ctx.causal, kpm, x.device)
        qm = q.unsqueeze(1) * self.mixing.view(1, self.heads, 1, -1)     # (B, h, n, D̃) diag(m_i)
        bias = (c * self.scale).unsqueeze(2)                             # (B, h, 1, m), scaled too
        y = eager_attention(qm, k.unsqueeze(1), v, mask, bias, self.scale,
                            self.dropout if self.training else 0.0)      # (B, h, n, e)
        return self.o_proj(y.transpose(1, 2).reshape(B, n, -1)), new_state

    @classmethod
    def from_attention(cls, mha) -> "CollaborativeAttention":
        """The exact collaborative form (D̃ = h·e) of a multi-head attention layer
        (``MultiHeadAttentionBase``, one K/V head per query head), §3.2."""
        h, e = mha.heads, mha.head_dim
        if mha.kv_heads != h:
            raise ConfigError("mixer.kv_heads", mha.kv_heads,
                              why="from_attention needs one key head per query head")
        d = mha.q_proj.in_features
        out = cls(d, h, head_dim=e, bias=mha.v_proj.bias is not None,
                  content_bias=mha.q_proj.bias is not None, scale=mha.scale)
        with torch.no_grad():
            out.q_proj.weight.copy_(mha.q_proj.weight)
            out.k_proj.weight.copy_(mha.k_proj.weight)
            out.v_proj.load_state_dict(mha.v_proj.state_dict())
            out.o_proj.load_state_dict(mha.o_proj.state_dict())
            if out.content_bias is not None:
                wk = mha.k_proj.weight.view(h, e, d)                     # W_K^i as (e, d)
                bq = mha.q_proj.bias.view(h, 1, e)
                out.content_bias.weight.copy_((bq @ wk).squeeze(1))      # r_i = b_Q^i W_K^i
        return out
