"""ShiftViT's token mixer: a partial shift of channels by one token, no parameters.

Paper: When Shift Operation Meets Vision Transformer: An Extremely Simple Alternative to
Attention Mechanism (Wang et al., 2022), §3.1 and the released ``shift_feat``: with
g = ⌊C / n_div⌋ (n_div = 12, i.e. γ = 1/12 per direction),
    channels [0, g)   move left  (token (i, j) takes (i, j+1)),
    channels [g, 2g)  move right (takes (i, j−1)),
    channels [2g, 3g) move up    (takes (i+1, j)),
    channels [3g, 4g) move down  (takes (i−1, j)),
    the remaining C − 4g channels stay; vacated borders are zero.
In ShiftViT the shift replaces attention without its own residual; here it sits in the block's
residual like any mixer (the block computes x + shift(norm(x))).
No parameters. Complexity: O(n d) time and memory.
1-D reading on text: the first two groups only (left, right); bidirectional.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.grid import from_grid, grid_shape, to_grid
from ...registry import MIXERS
from ..base import Mixer, Supports


def shift_grid(x: Tensor, g: int) -> Tensor:
    """The released shift_feat on (B, H, W, C) (channels last)."""
    out = torch.zeros_like(x)
    out[:, :, :-1, 0 * g:1 * g] = x[:, :, 1:, 0 * g:1 * g]          # left
    out[:, :, 1:, 1 * g:2 * g] = x[:, :, :-1, 1 * g:2 * g]          # right
    out[:, :-1, :, 2 * g:3 * g] = x[:, 1:, :, 2 * g:3 * g]          # up
    out[:, 1:, :, 3 * g:4 * g] = x[:, :-1, :, 3 * g:4 * g]          # down
    out[..., 4 * g:] = x[..., 4 * g:]
    return out


@MIXERS.register(
    "shift", paper="When Shift Operation Meets Vision Transformer (Wang et al., 2022), ShiftViT",
    equation="§3.1: 4 groups of C/12 channels shifted left/right/up/down by 1, rest kept",
    complexity=("O(n d)", "O(n d)"),
    test="tests/papers/test_shift_pool.py::test_shift_moves_exactly_the_papers_channels",
    tiny={"n_div": 8})
class ShiftMixer(Mixer):
    """Zero-parameter spatial shift of four channel groups."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=True)

    def __init__(self, d_model: int, n_div: int = 12):
        super().__init__()
        if not isinstance(n_div, int) or n_div < 4 or d_model // n_div < 1:
            raise ConfigError("mixer(shift).n_div", n_div,
                              why=f"an integer >= 4 with d_model // n_div >= 1 (d={d_model})")
        self.g = d_model // n_div

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if ctx.grid is not None:
            hw = grid_shape(x, ctx.grid, None, "shift")
            return from_grid(shift_grid(to_grid(x, hw), self.g)), state
        g = self.g
        out = x.clone()
        out[:, :, :g] = 0
        out[:, :-1, :g] = x[:, 1:, :g]                                   # left: t takes t+1
        out[:, :, g:2 * g] = 0
        out[:, 1:, g:2 * g] = x[:, :-1, g:2 * g]                         # right: t takes t-1
        return out, state
