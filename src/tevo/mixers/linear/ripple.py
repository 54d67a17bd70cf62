"""Ripple attention: linear (kernel) attention whose key contributions are weighted by their
spatial distance to the query on the image grid, ring by ring.

Paper: Ripple Attention for Visual Perception with Sub-quadratic Complexity (Zheng, Pan and
Kong, ICML 2022), §3–4: the keys around a query fall into vicinal groups, the rings at
Chebyshev distance r = max(|Δrow|, |Δcol|); ring r gets the spatial weight α_r, every ring
from r̂ on (``rings``) one shared weight, and
    y_i = Σ_j α_{r(i,j)} φ(q_i)ᵀφ(k_j) v_j / Σ_j α_{r(i,j)} φ(q_i)ᵀφ(k_j).
The ring sums come from a dynamic programme over summed-area tables of φ(k)vᵀ and φ(k): the sum
over the (2r+1)×(2r+1) square around a query is four table lookups, ring r is the difference of
two squares, so the cost is O(n r̂ e²) instead of O(n² e) (the paper's "linear observed time").
Weights here: α_r = γ^min(r, r̂) with a learned per-head decay γ = sigmoid(θ) (a simple
monotone family standing in for the paper's weighting); φ = elu + 1.
Complexity: O(n r̂ h e²) time, O(n h e²) memory. Image grids only, bidirectional.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.grid import grid_shape
from ...registry import FEATURE_MAPS, MIXERS
from ..base import Mixer, Supports


def box_sums(t: Tensor, r: int) -> Tensor:
    """Σ over the (2r+1)² square around every cell (clipped at the borders), via a summed-area
    table. t (B, H, W, ...) → (B, H, W, ...)."""
    B, H, W = t.shape[:3]
    s = t.cumsum(1).cumsum(2)
    s = F.pad(s.movedim(1, -1).movedim(1, -1), (1, 0, 1, 0)).movedim(-1, 1).movedim(-1, 1)
    i = torch.arange(H, device=t.device)
    j = torch.arange(W, device=t.device)
    i0, i1 = (i - r).clamp(min=0), (i + r + 1).clamp(max=H)
    j0, j1 = (j - r).clamp(min=0), (j + r + 1).clamp(max=W)
    return (s[:, i1][:, :, j1] - s[:, i0][:, :, j1] - s[:, i1][:, :, j0] + s[:, i0][:, :, j0])


@MIXERS.register(
    "ripple", paper="Ripple Attention for Visual Perception with Sub-quadratic Complexity "
                    "(Zheng et al., 2022)",
    equation="§3: y_i = Σ_j α_{r(i,j)} φ(q_i)ᵀφ(k_j) v_j / Σ_j α_{r(i,j)} φ(q_i)ᵀφ(k_j), "
             "r = Chebyshev ring",
    complexity=("O(n r̂ h e²)", "O(n h e²)"),
    test="tests/papers/test_linear_ripple.py::test_ripple_equals_dense_ring_weighted_linear_attention",
    tiny={"heads": 2, "rings": 2})
class RippleAttention(Mixer):
    """Kernel attention with per-ring spatial weights, computed from summed-area tables."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=False)

    def __init__(self, d_model: int, heads: int = 4, rings: int = 4, decay: float = 0.5):
        super().__init__()
        if not isinstance(heads, int) or heads < 1 or d_model % heads:
            raise ConfigError("mixer(ripple).heads", heads,
                              why=f"a positive divisor of d_model={d_model}")
        if not isinstance(rings, int) or rings < 1:
            raise ConfigError("mixer(ripple).rings", rings, why="r̂, an integer >= 1")
        if not 0 < float(decay) < 1:
            raise ConfigError("mixer(ripple).decay", decay, why="the initial γ, in (0, 1)")
        self.h, self.e, self.rings = heads, d_model // heads, rings
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.theta = nn.Parameter(torch.full((heads,), float(torch.logit(torch.tensor(decay)))))
        self.phi = FEATURE_MAPS.build("elu+1", head_dim=self.e)

    def ring_weights(self) -> Tensor:
        """(r̂ + 1, h): α_0 … α_{r̂−1} and the shared weight of every further ring."""
        gamma = torch.sigmoid(self.theta.float())
        r = torch.arange(self.rings + 1, device=gamma.device, dtype=torch.float32)
        return gamma[None, :] ** r[:, None]

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        H, W = grid_shape(x, ctx.grid, None, "ripple")
        B, n, d = x.shape
        q, k, v = self.qkv(x).float().view(B, n, 3, self.h, self.e).unbind(2)   # (B, n, h, e)
        q, k = self.phi(q), self.phi(k)
        kv = (k.unsqueeze(-1) * v.unsqueeze(-2)).view(B, H, W, self.h, self.e, self.e)
        ks = k.view(B, H, W, self.h, self.e)
        a = self.ring_weights()                                          # (r̂+1, h)
        num = torch.zeros_like(kv)
        den = torch.zeros_like(ks)
        prev_kv = prev_k = 0.0
        for r in range(self.rings):                 # ring r = square(r) − square(r−1)
            sq_kv, sq_k = box_sums(kv, r), box_sums(ks, r)
            num = num + a[r].view(1, 1, 1, -1, 1, 1) * (sq_kv - prev_kv)
            den = den + a[r].view(1, 1, 1, -1, 1) * (sq_k - prev_k)
            prev_kv, prev_k = sq_kv, sq_k
        num = num + a[-1].view(1, 1, 1, -1, 1, 1) * (kv.sum((1, 2), keepdim=True) - prev_kv)
        den = den + a[-1].view(1, 1, 1, -1, 1) * (ks.sum((1, 2), keepdim=True) - prev_k)
        qg = q.view(B, H, W, self.h, self.e)
        y = torch.einsum("bxyhe,bxyhef->bxyhf", qg, num)
        z = torch.einsum("bxyhe,bxyhe->bxyh", qg, den).clamp(min=1e-6)
        y = (y / z.unsqueeze(-1)).reshape(B, n, d).to(x.dtype)
        return self.o_proj(y), state
