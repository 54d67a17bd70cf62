"""TaLK: time-aware large kernel convolution (adaptive windows from a summed-area table).

Paper: Time-aware Large Kernel Convolutions (Lioutas & Guo, ICML 2020), §3 eqs. 3–8; the
authors' code for the layer around it and the output normalisation.

For each token i and head, predicted relative offsets α^l_i, α^r_i = σ(W_o x_i) ∈ (0, 1) give the
window [a_i, b_i] = [i − α^l_i·l_max, i + α^r_i·r_max] (α^r = 0 in the decoder):
    S_j = Σ_{k≤j} x_k / K,  K = l_max + r_max + 1              (summed-area table, normalised
                                                                by the largest window, eq. 8)
    o_i = S_{b_i} − S_{a_i − 1}                                (eq. 4)
with S at a fractional index read by linear interpolation, S_{a} = γ S_{⌊a⌋} + (1 − γ) S_{⌈a⌉},
γ = ⌈a⌉ − a (eq. 6–7). Written out, o_i = (1/K) Σ_j w_ij x_j with edge weights
w_ij = clip(j − a_i + 1, 0, 1) · clip(b_i − j + 1, 0, 1): the window's whole tokens count 1 and
the partial token at each end counts its fractional share — so the window size is learned and
differentiable. Around it, as in the authors' layer: x → GLU(W₁ x) → TaLK → W₂.

Cost: O(n d) for the table and one gather per end — independent of the window size.
Decoding (causal): the last l_max conv inputs are all a window can reach: a fixed buffer,
O(l_max d); each step rebuilds the table over that buffer. Padding: padded inputs are zeroed, so
they add nothing to any window sum (the normalisation is the constant K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import positive, zero_padding


def _read(S0: Tensor, base: Tensor, off: Tensor) -> Tensor:
    """The table at fractional positions base + off, by linear interpolation (eqs. 6–7).

    S0 (B, m + 1, d) with S0[:, k + 1] = S_k and S0[:, 0] = S_{−1} = 0 (S_k = 0 before the start,
    S_{m−1} after the end: zeros there); base (1, n, 1) integer positions, off (B, n, d) real
    offsets — split into floor and fraction on the small offsets alone, so that the fraction
    keeps full precision at any absolute position."""
    m = S0.shape[1] - 1
    fl = off.floor()
    frac = off - fl
    lo = base + fl.long()
    s_lo = S0.gather(1, lo.clamp(-1, m - 1) + 1)
    s_hi = S0.gather(1, (lo + 1).clamp(-1, m - 1) + 1)
    return (1 - frac) * s_lo + frac * s_hi


def talk_window_sum(x: Tensor, left: Tensor, right: Tensor | None, query_start: int,
                    K: int) -> Tensor:
    """o_i = S_{b_i} − S_{a_i − 1} for the n_q positions of x from ``query_start`` on.

    x (B, m, d) conv inputs (zeros where padded); left/right (B, n_q, d) window extents in tokens
    (α·l_max, α·r_max; right None = 0). Returns (B, n_q, d)."""
    B, m, d = x.shape
    n_q = left.shape[1]
    S = torch.cumsum(x / K, 1)
    S0 = torch.cat([S.new_zeros(B, 1, d), S], 1)                       # S_{−1} = 0
    i = torch.arange(query_start, query_start + n_q, device=x.device)[None, :, None]
    end = S0.gather(1, (i + 1).expand(B, n_q, d)) if right is None else _read(S0, i, right)
    return end - _read(S0, i - 1, -left)


@MIXERS.register(
    "talk", paper="Time-aware Large Kernel Convolutions (Lioutas & Guo, 2020)",
    equation="eqs. 3–8: o_i = S_{i+α^r r_max} − S_{i−α^l l_max−1}, S the summed-area table / "
             "(l_max + r_max + 1), fractional ends by linear interpolation",
    complexity=("O(n d)", "O(n d); decode O(l_max d)"),
    test="tests/papers/test_rnn_talk.py::test_summed_area_table_equals_explicit_window_average",
    tiny={"heads": 2, "max_left": 4, "max_right": 3})
class TaLKConvolution(Mixer):
    """TaLK convolution: per-token learned window sizes, averaged with a summed-area table."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, max_left: int = 15, max_right: int = 15,
                 causal: bool = True):
        super().__init__()
        self.heads = positive("mixer.heads", heads)
        if d_model % self.heads:
            raise ConfigError("mixer.heads", heads,
                              why=f"d_model={d_model} is not divisible by heads={heads}")
        self.max_left = positive("mixer.max_left", max_left)
        self.max_right = positive("mixer.max_right", max_right) if not causal else 0
        self.causal, self.d = bool(causal), int(d_model)
        self.K = self.max_left + self.max_right + 1
        self.w1 = nn.Linear(self.d, 2 * self.d)                     # GLU input projection
        self.offsets = nn.Linear(self.d, self.heads * (1 if causal else 2))
        self.w2 = nn.Linear(self.d, self.d)

    def extents(self, u: Tensor) -> tuple[Tensor, Tensor | None]:
        """Window extents (B, n, d) in tokens: α^l l_max and α^r r_max per head, per channel."""
        R = self.d // self.heads
        alpha = torch.sigmoid(self.offsets(u)).repeat_interleave(R, -1)   # (B, n, {1,2}·d)
        left = alpha[..., :self.d] * self.max_left
        right = None if self.causal else alpha[..., self.d:] * self.max_right
        return left, right

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"buf": torch.zeros(batch, self.max_left, self.d, device=device)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        mask = ctx.query_mask(n)
        u = zero_padding(F.glu(self.w1(x), -1), mask)                # (B, n, d)
        with fp32_region(x.device.type):
            u = upcast(u)
            left, right = self.extents(u)
            new_state = None
            if ctx.causal and state is not None:
                full = torch.cat([state["buf"].to(u.dtype), u], 1)   # (B, l_max + n, d)
                o = talk_window_sum(full, left, None, self.max_left, self.K)
                new_state = {"buf": full[:, full.shape[1] - self.max_left:]}
            else:
                o = talk_window_sum(u, left, None if ctx.causal else right, 0, self.K)
        return self.w2(o.to(x.dtype)), new_state
