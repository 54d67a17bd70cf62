"""sMLP: sparse token mixing along rows and along columns, fused with the identity.

Paper: Sparse MLP for Image Recognition: Is Self-Attention Really Necessary? (Tang et al.,
2022), §3.2 eq. 2–4:
    x_W = MLP_W(x)   (one W×W map mixing each row's tokens, shared by rows and channels)
    x_H = MLP_H(x)   (one H×H map mixing each column's tokens)
    y = Fuse([x_W, x_H, x]) = W_f concat(x_W, x_H, x)         (3d → d)
So token (i, j) reads only row i and column j: 2·(H + W) weights instead of MLP-Mixer's n².
Complexity: O(n (H + W) d + n d²) time, O(n d) memory. Image grids of the size it is built
for (the model passes ``grid``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.grid import check_grid_option, from_grid, grid_shape, to_grid
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "smlp", paper="Sparse MLP for Image Recognition: Is Self-Attention Really Necessary? "
                  "(Tang et al., 2022)",
    equation="§3.2 eq. 2-4: y = W_f [MLP_W(x), MLP_H(x), x] (axial token mixing)",
    complexity=("O(n (H+W) d + n d²)", "O(n d)"),
    test="tests/papers/test_mlp_smlp.py::test_smlp_is_axial_and_matches_formula",
    tiny={"grid": [3, 4]})
class SparseMLP(Mixer):
    """Row-wise and column-wise token MLPs, concatenated with x and fused."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=False)

    def __init__(self, d_model: int, grid=None):
        super().__init__()
        g = check_grid_option(grid, "smlp")
        if g is None:
            raise ConfigError("mixer(smlp).grid", grid,
                              why="sMLP's row and column maps are sized to a token grid; use "
                                  "it in an image model (model.arch=vit / metaformer)")
        self.grid = g
        self.mix_w = nn.Linear(g[1], g[1])                                # along a row
        self.mix_h = nn.Linear(g[0], g[0])                                # along a column
        self.fuse = nn.Linear(3 * d_model, d_model)

    def check_grid(self, h: int, w: int) -> None:
        if (h, w) != self.grid:
            raise ConfigError("mixer(smlp).grid", list(self.grid),
                              why=f"built for {self.grid[0]}×{self.grid[1]}, the grid is {h}×{w}")

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        hw = grid_shape(x, ctx.grid, self.grid, "smlp")
        self.check_grid(*hw)
        g = to_grid(x, hw)                                                # (B, H, W, d)
        xw = self.mix_w(g.transpose(2, 3)).transpose(2, 3)                # mixes W
        xh = self.mix_h(g.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)        # mixes H
        return self.fuse(from_grid(torch.cat([xw, xh, g], -1))), state
