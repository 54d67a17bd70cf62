"""Transformer with a Mixture of Gaussian Keys (Transformer-MGK).

Paper: Improving Transformers with Probabilistic Attention Keys (Nguyen et al., 2022), §2.2
eq. 9: each key is a mixture of M Gaussians with centres k_jr = W_K^r x_j,
    a_ij ∝ Σ_r π_r exp(−‖q_i − k_jr‖² / (2σ_r²)),   y_i = Σ_j a_ij v_j / Σ_j a_ij,
with per-head learned priors π (softmax of logits) and variances σ_r² (init √d_head, which
makes the M = 1 case the Gaussian-kernel form of scaled dot-product attention:
−‖q−k‖²/(2√d) = q·k/√d − ‖k‖²/(2√d) + const(i)). Computed in the log domain
(logsumexp over r, then a masked softmax over j). KV cache stores the M key centres.
Complexity: time O(M n² d); memory O(M n²).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.masks import attention_mask, fix_empty_rows
from ...registry import MIXERS
from ..base import Supports
from .softmax import MultiHeadAttentionBase


def mgk_logits(q: Tensor, k: Tensor, log_pi: Tensor, log_var: Tensor) -> Tensor:
    """log Σ_r π_r exp(−‖q_i − k_jr‖²/(2σ_r²)).

    q (B, h, n_q, e); k (B, M, h, n_k, e); log_pi, log_var (h, M) → (B, h, n_q, n_k)."""
    q, k = q.float(), k.float()
    d2 = ((q * q).sum(-1)[:, None, :, :, None] + (k * k).sum(-1)[:, :, :, None, :]
          - 2 * torch.einsum("bhqe,bmhke->bmhqk", q, k)).clamp(min=0)   # (B, M, h, n_q, n_k)
    lp = log_pi.t()[None, :, :, None, None].float()                      # (1, M, h, 1, 1)
    var = log_var.t().exp()[None, :, :, None, None].float()
    return torch.logsumexp(lp - d2 / (2 * var), dim=1)


@MIXERS.register(
    "mgk", paper="Improving Transformers with Probabilistic Attention Keys "
                 "(Transformer-MGK, Nguyen et al., 2022)",
    equation="§2.2 eq. 9: a_ij ∝ Σ_r π_r exp(−‖q_i − k_jr‖²/(2σ_r²)), k_jr = W_K^r x_j; "
             "y_i = Σ_j a_ij v_j / Σ_j a_ij",
    complexity=("O(M n² d)", "O(M n²)"),
    test="tests/papers/test_attention_mgk.py::test_mgk_one_component_equals_gaussian_attention",
    tiny={"heads": 2, "components": 2})
class MixtureOfGaussianKeysAttention(MultiHeadAttentionBase):
    """Attention whose keys are per-head mixtures of M Gaussians (learned priors and variances)."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, components: int = 2,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 learn_variance: bool = True):
        super().__init__(d_model, heads, None, head_dim, bias, dropout, "eager")
        if components < 1:
            raise ConfigError("mixer.components", components, why="need at least 1 component")
        self.components = components
        e = self.head_dim
        # M key projections in one matrix: (d) -> (M · h · e)
        self.k_proj = nn.Linear(d_model, components * heads * e, bias=bias)
        self.pi_logits = nn.Parameter(torch.zeros(heads, components))
        self.log_var = nn.Parameter(torch.full((heads, components), 0.5 * math.log(e)),
                                    requires_grad=learn_variance)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        M, h, e = self.components, self.heads, self.head_dim
        q = self._split(self.q_proj(x), h)                                # (B, h, n, e)
        k = self._split(self.k_proj(x), M * h)                            # (B, M·h, n, e)
        v = self._split(self.v_proj(x), h)
        q_pos = k_pos = ctx.query_positions(x)
        pos = ctx.pos
        if pos is not None and "qk" in pos.hooks:
            q, k = pos.rotate(q, k, q_pos, k_pos)
        if state is not None and "k" in state:
            k = torch.cat([state["k"], k], 2)
            v = torch.cat([state["v"], v], 2)
            k_pos = torch.cat([state["pos"], k_pos], 1)
        new_state = None if state is None else {"k": k, "v": v, "pos": k_pos}
        n_k = k.shape[2]
        kc = k.view(B, M, h, n_k, e)                                      # (B, M, h, n_k, e)
        s = mgk_logits(q, kc, F.log_softmax(self.pi_logits, -1), self.log_var)
        if pos is not None and "bias" in pos.hooks:
            s = s + pos.bias(q, kc[:, 0], q_pos, k_pos).float()
        mask = attention_mask(n, n_k, ctx.causal, ctx.key_padding_mask, x.device)
        if mask is not None:
            s = s.masked_fill(~fix_empty_rows(mask), float("-inf"))
        w = s.softmax(-1).to(v.dtype)
        if self.training and self.dropout > 0:
            w = F.dropout(w, self.dropout)
        y = torch.matmul(w, v)                                            # (B, h, n, e)
        return self.o_proj(self._merge(y)), new_state
