"""LogSparse self-attention with convolutional queries and keys (time-series Transformer).

Paper: Enhancing the Locality and Breaking the Memory Bottleneck of Transformer on Time Series
Forecasting (Li et al., 2019).
- §3.2 convolutional self-attention: Q and K come from a causal 1-D convolution of kernel k over
  the inputs (k = 1 is the usual projection), V from a pointwise projection;
- §3.3 LogSparse pattern: cell l attends to itself and to l − 2^j for j = 0 … ⌊log₂ l⌋, i.e.
  O(log n) cells at exponentially growing distances; ``local`` > 0 adds the paper's local variant
  (every cell within distance < local). The bidirectional form mirrors the pattern (l ± 2^j).
Keys are gathered per query, so scores take O(n log n) memory, never n × n. Padded inputs are
zeroed before the convolution, so a left-padded sequence sees the same zero context as an
unpadded one; decoding keeps the convolution's last k − 1 inputs and the KV cache.
Complexity: time O(n log n · d + n k d²); memory O(n log n).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import gathered_attention
from ...registry import MIXERS
from ..base import Supports
from .positional import PositionalAttention, dense_masked_attention


def logsparse_distances(n: int, local: int = 0) -> list[int]:
    """Distances l − j a cell may attend to in a length-n sequence: 0, 2^j < n, and < local."""
    d = {0} | {1 << j for j in range(max(n - 1, 1).bit_length()) if (1 << j) < n}
    return sorted(d | set(range(min(local, n))))


def logsparse_allowed(dist: Tensor, local: int = 0) -> Tensor:
    """Boolean pattern for non-negative integer distances (any shape)."""
    pow2 = (dist > 0) & ((dist & (dist - 1)) == 0)
    return (dist == 0) | pow2 | ((dist >= 0) & (dist < local))


@MIXERS.register(
    "logsparse", paper="Enhancing the Locality and Breaking the Memory Bottleneck of Transformer "
                       "on Time Series Forecasting (Li et al., 2019)",
    equation="§3.2: Q, K = causal Conv1d_k(X), V = XW^V; §3.3: cell l attends to I_l = {l} ∪ "
             "{l − 2^j : 0 ≤ j ≤ ⌊log₂ l⌋} (+ a local window if local > 0)",
    complexity=("O(n log n d)", "O(n log n)"),
    test="tests/papers/test_attention_logsparse.py::test_logsparse_mask_matches_the_paper_pattern",
    tiny={"heads": 2, "kernel": 3})
class LogSparseAttention(PositionalAttention):
    """Convolutional self-attention over a LogSparse (exponentially spaced) key pattern."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, kernel: int = 3, local: int = 0):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        if kernel < 1 or local < 0:
            raise ConfigError("mixer.kernel", kernel, why="kernel must be >= 1 and local >= 0")
        self.kernel, self.local = kernel, local
        del self.q_proj, self.k_proj                        # replaced by convolutions
        self.q_conv = nn.Conv1d(d_model, heads * self.head_dim, kernel, bias=bias)
        self.k_conv = nn.Conv1d(d_model, heads * self.head_dim, kernel, bias=bias)

    def project(self, x: Tensor, ctx: MixerContext, state):
        B, n, d = x.shape
        qm = ctx.query_mask(n)
        xz = x if qm is None else x * qm.unsqueeze(-1).to(x.dtype)      # padding → zeros
        k1, extra = self.kernel - 1, {}
        if ctx.causal:
            tail = state.get("conv") if state and "conv" in state else x.new_zeros(B, k1, d)
            xp = torch.cat([tail, xz], 1)                                # (B, k-1+n, d)
            if state is not None and k1:
                extra["conv"] = xp[:, xp.shape[1] - k1:]
        else:
            xp = F.pad(xz, (0, 0, k1 // 2, k1 - k1 // 2))               # centred kernel
        conv = lambda c: self._split(c(xp.transpose(1, 2)).transpose(1, 2), self.heads)
        return conv(self.q_conv), conv(self.k_conv), self._split(self.v_proj(x), self.heads), extra

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        n = q.shape[2]
        dist = torch.tensor(logsparse_distances(n, self.local), device=q.device)
        if not ctx.causal:
            dist = torch.cat([-dist.flip(0), dist[1:]])                 # mirrored pattern
        idx = torch.arange(n, device=q.device).unsqueeze(1) - dist       # (n, W) key indices
        inside = (idx >= 0) & (idx < n)
        idx = idx.clamp(0, n - 1)
        ok = inside & valid[:, idx]                                      # (B, n, W)
        return gathered_attention(q, k, v, idx[None, None], ok[:, None], 1 / math.sqrt(q.shape[-1]))

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        dist = q_pos[:, :, None] - k_pos[:, None, :]                     # (B, n_q, n_k)
        if not ctx.causal:
            dist = dist.abs()
        allowed = logsparse_allowed(dist, self.local) & valid[:, None, :]
        return dense_masked_attention(q, k, v, allowed[:, None], 1 / math.sqrt(q.shape[-1]))
