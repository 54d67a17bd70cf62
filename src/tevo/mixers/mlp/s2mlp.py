"""S²-MLP and S²-MLPv2: token mixing by shifting channel groups to the four neighbours,
between two per-token MLPs (v2: two shift patterns and an identity, fused by split attention).

Papers: S²-MLP: Spatial-Shift MLP Architecture for Vision (Yu et al., 2022), §3.2 eq. 2–3 and
the released ``spatial_shift``; S²-MLPv2: Improved Spatial-Shift MLP Architecture for Vision
(Yu et al., 2021), §3.1, eq. 1–4.
    S²-MLP:   y = W₂ · shift(GELU(W₁ x))            (per-token FC → GELU → shift → FC)
    shift:    channels [0,c/4) move one column right, [c/4,c/2) one column left,
              [c/2,3c/4) one row down, [3c/4,c) one row up; the border keeps its own values
              (the authors' in-place copy, not zeros)
    S²-MLPv2: [a, b, e] = split(W₁ x, 3) (c → 3c);  x₁ = shift(a), x₂ = shift'(b) (the other
              pattern: rows first, then columns), x₃ = e;  split attention:
              s = mean_tokens(x₁ + x₂ + x₃), [α₁, α₂, α₃] = softmax_k(MLP(s)),
              y = W₂ Σ_k α_k x_k
Complexity: O(n d²) time, O(n d) memory; S²-MLP 2d², v2 ≈ 6d² parameters. Image grids only
(the shift pattern is 2-D); v2's split attention pools over the whole image, so padding would
change it (not supported).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.context import MixerContext
from ...nn.grid import from_grid, grid_shape, to_grid
from ...registry import MIXERS
from ..base import Mixer, Supports


def spatial_shift1(x: Tensor) -> Tensor:
    """The released spatial_shift on (B, H, W, c): groups right, left, down, up; borders kept."""
    c = x.shape[-1]
    q = c // 4
    y = x.clone()
    y[:, :, 1:, :q] = x[:, :, :-1, :q]
    y[:, :, :-1, q:2 * q] = x[:, :, 1:, q:2 * q]
    y[:, 1:, :, 2 * q:3 * q] = x[:, :-1, :, 2 * q:3 * q]
    y[:, :-1, :, 3 * q:] = x[:, 1:, :, 3 * q:]
    return y


def spatial_shift2(x: Tensor) -> Tensor:
    """S²-MLPv2's second pattern: groups down, up, right, left."""
    c = x.shape[-1]
    q = c // 4
    y = x.clone()
    y[:, 1:, :, :q] = x[:, :-1, :, :q]
    y[:, :-1, :, q:2 * q] = x[:, 1:, :, q:2 * q]
    y[:, :, 1:, 2 * q:3 * q] = x[:, :, :-1, 2 * q:3 * q]
    y[:, :, :-1, 3 * q:] = x[:, :, 1:, 3 * q:]
    return y


@MIXERS.register(
    "s2mlp", paper="S²-MLP: Spatial-Shift MLP Architecture for Vision (Yu et al., 2022)",
    equation="§3.2: y = W₂ shift(GELU(W₁ x)), four channel groups shifted to the neighbours",
    complexity=("O(n d²)", "O(n d)"),
    test="tests/papers/test_mlp_s2mlp.py::test_s2mlp_and_v2_match_the_released_shifts",
    tiny={"grid": [3, 4]})
class S2MLP(Mixer):
    """Per-token FC, spatial shift of four channel groups, per-token FC."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=False)

    def __init__(self, d_model: int, grid=None):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        hw = grid_shape(x, ctx.grid, None, "s2mlp")
        h = spatial_shift1(to_grid(F.gelu(self.fc1(x)), hw))
        return self.fc2(from_grid(h)), state


@MIXERS.register(
    "s2mlpv2", paper="S²-MLPv2: Improved Spatial-Shift MLP Architecture for Vision "
                     "(Yu et al., 2021)",
    equation="§3.1 eq. 1-4: x₁=shift(a), x₂=shift'(b), x₃=e; y = W₂ Σ_k softmax_k(MLP(mean(Σx)))x_k",
    complexity=("O(n d²)", "O(n d)"),
    test="tests/papers/test_mlp_s2mlp.py::test_s2mlp_and_v2_match_the_released_shifts",
    tiny={"grid": [3, 4]})
class S2MLPv2(Mixer):
    """Three branches (two shift patterns, identity) fused by split attention."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=False)

    def __init__(self, d_model: int, grid=None):
        super().__init__()
        d = d_model
        self.fc1, self.fc2 = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.attn = nn.Sequential(nn.Linear(d, d, bias=False), nn.GELU(),
                                  nn.Linear(d, 3 * d, bias=False))

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        hw = grid_shape(x, ctx.grid, None, "s2mlpv2")
        B, n, d = x.shape
        a, b, e = self.fc1(x).chunk(3, -1)                                # (B, n, d) each
        xs = torch.stack([from_grid(spatial_shift1(to_grid(a, hw))),
                          from_grid(spatial_shift2(to_grid(b, hw))), e], 1)  # (B, 3, n, d)
        s = xs.sum(1).mean(1)                                             # (B, d)
        alpha = self.attn(s).view(B, 3, d).softmax(1)                     # (B, 3, d)
        return self.fc2((alpha.unsqueeze(2) * xs).sum(1)), state
