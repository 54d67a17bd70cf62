"""Gated Attention Unit (GAU): one head of cheap attention gating a GLU.

Paper: Transformer Quality in Linear Time (Hua, Dai, Liu & Le, ICML 2022), §2 eq. 1–5 and Code 1;
"Supplementary Material: Implementation and Experiments for GAU-based Model" and the FLASH post
of the survey (Su, 2022), which writes the relu² scoring as A = relu²(QKᵀ/√s)/n.

    U = silu(X W_u),  V = silu(X W_v)  (e = expansion·d),   Z = silu(X W_z)  (s dims, shared)
    Q = γ_q ⊙ Z + β_q,  K = γ_k ⊙ Z + β_k                     (per-dimension scales and offsets)
    A = relu²(Q Kᵀ/√s + bias)/n_i   or   A = softmax(Q Kᵀ/√s + bias)
    O = (U ⊙ A V) W_o

s is ``head_dim`` (with ``heads: 1`` in the spec, so position encodings are built for one head
of s dims). n_i is the number of real keys query i sees (n bidirectionally, i + 1 causally: the
per-row count keeps the layer causal and decodable; the paper divides by the full length). Position hooks:
``qk`` (RoPE on Q, K) and ``bias`` (e.g. T5 buckets, added before relu²/softmax). The cache holds
K, V of past tokens. Complexity: time O(n² s + n² e + n d e), memory O(n²) for A.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.masks import attention_mask, fix_empty_rows
from ...nn.context import MixerContext
from ...nn.chunked import upcast
from ...registry import MIXERS
from ..base import Mixer, Supports

SCORING = ("relu2", "softmax")


def check_single_head(heads) -> None:
    """GAU/FLASH have one attention head (the paper's finding); ``heads`` and ``head_dim`` (= s)
    are named so, so that position encodings size themselves from the mixer spec."""
    if int(heads) != 1:
        raise ConfigError("mixer.heads", heads, [1], why="GAU/FLASH use a single head")


class GAUProjections(nn.Module):
    """U, V (e dims) and the shared base Z (s dims) with ``heads`` per-dim scale/offset pairs."""

    def __init__(self, d_model: int, expansion: float, s: int, n_qk: int, qk_init_std: float,
                 bias: bool):
        super().__init__()
        self.e = int(round(d_model * expansion))
        self.s = int(s)
        if self.e < 1 or self.s < 1:
            raise ConfigError("mixer.expansion", expansion, why="expansion·d and s must be >= 1")
        self.uvz = nn.Linear(d_model, 2 * self.e + self.s, bias=bias)
        self.gamma = nn.Parameter(torch.randn(n_qk, self.s) * qk_init_std)
        self.beta = nn.Parameter(torch.zeros(n_qk, self.s))

    def forward(self, x: Tensor):
        u, v, z = F.silu(self.uvz(x)).split([self.e, self.e, self.s], -1)
        qk = z.unsqueeze(-2) * self.gamma + self.beta                    # (B, n, n_qk, s)
        return u, v, qk.unbind(-2)


@MIXERS.register(
    "gau", paper="Transformer Quality in Linear Time (Hua et al., ICML 2022) + GAU supplementary",
    equation="eq. 1–5: O = (U ⊙ AV)W_o, A = relu²(QKᵀ/√s)/n (or softmax), Q,K = γ⊙Z + β",
    complexity=("O(n² (s + e) + n d e)", "O(n² + n e)"),
    test="tests/papers/test_linear_gau.py::test_gau_equals_its_equations",
    tiny={"heads": 1, "head_dim": 8, "expansion": 2, "qk_init_std": 1.0})
class GatedAttentionUnit(Mixer):
    """Single-head attention with shared Q/K base, per-dim offsets, relu² or softmax scoring,
    gating an expanded GLU."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 1, head_dim: int = 128, expansion: float = 2.0,
                 scoring: str = "relu2", qk_init_std: float = 0.02, bias: bool = True):
        super().__init__()
        check_single_head(heads)
        if scoring not in SCORING:
            raise ConfigError("mixer.scoring", scoring, SCORING)
        self.scoring = scoring
        self.proj = GAUProjections(d_model, expansion, head_dim, 2, qk_init_std, bias)
        self.s = self.proj.s
        self.o_proj = nn.Linear(self.proj.e, d_model, bias=bias)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        u, v, (q, k) = self.proj(x)
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)         # (B, 1, n, ·): one head
        q_pos = ctx.query_positions(x)
        k_pos = q_pos
        pos = ctx.pos
        if pos is not None and "qk" in pos.hooks:
            q, k = pos.rotate(q, k, q_pos, k_pos)
        if state is not None and "k" in state:                            # KV cache
            k = torch.cat([state["k"], k], 2)
            v = torch.cat([state["v"], v], 2)
            k_pos = torch.cat([state["pos"], k_pos], 1)
        new_state = None if state is None else {"k": k, "v": v, "pos": k_pos}
        mask = attention_mask(n, k.shape[2], ctx.causal, ctx.key_padding_mask, x.device)
        bias = pos.bias(q, k, q_pos, k_pos) if pos is not None and "bias" in pos.hooks else None
        y = self.attend(q, k, v, mask, bias)                              # (B, 1, n, e)
        return self.o_proj(u * y.squeeze(1)), new_state

    def attend(self, q, k, v, mask, bias):
        scores = upcast(q @ k.transpose(-1, -2)) / math.sqrt(self.s)    # (B, 1, n, n_k)
        if bias is not None:
            scores = scores + upcast(bias)
        if self.scoring == "softmax":
            if mask is not None:
                scores = scores.masked_fill(~fix_empty_rows(mask), float("-inf"))
            return scores.softmax(-1).to(v.dtype) @ v
        A = F.relu(scores) ** 2
        if mask is None:
            cnt = torch.full_like(A[..., :1], A.shape[-1])
        else:
            A = A * mask
            cnt = mask.sum(-1, keepdim=True).to(A.dtype).clamp_min(1.0)   # real keys seen: n_i
        return (A / cnt).to(v.dtype) @ v
