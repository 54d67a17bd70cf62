"""GFNet: a learned global filter in the 2-D frequency domain.

Paper: Global Filter Networks for Image Classification (Rao et al., 2021), eq. 4–5:
    X = F[x],   X̃ = K ⊙ X,   x ← F^{-1}[X̃]
over the token grid (H × W), with K ∈ C^{H × (W/2+1) × d} a learned filter per channel and
frequency (real FFT, orthonormal on both sides as in the released code). By the convolution
theorem this is a depthwise circular convolution of the grid with the kernel F^{-1}[K] (the
paper's §3.2 reading, checked in the paper test).
Complexity: O(n d log n) time, O(n d) memory; H·(W/2+1)·d complex parameters.
The filter is sized to the grid the model builds it for (``grid``, given by the image model);
a 2-D mixer only: circular convolution over a text sequence of varying length has no fixed
filter (FNet and fno are the 1-D spectral mixers).
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
    "gfnet", paper="Global Filter Networks for Image Classification (Rao et al., 2021)",
    equation="eq. 4-5: x ← F⁻¹[K ⊙ F[x]] (2-D real FFT over the grid, K learned)",
    complexity=("O(n d log n)", "O(n d)"),
    test="tests/papers/test_fourier_gfnet.py::test_gfnet_equals_circular_convolution",
    tiny={"grid": [3, 4]})
class GlobalFilter(Mixer):
    """Depthwise global circular convolution, as a learned filter on the 2-D spectrum."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=False)

    def __init__(self, d_model: int, grid=None):
        super().__init__()
        g = check_grid_option(grid, "gfnet")
        if g is None:
            raise ConfigError("mixer(gfnet).grid", grid,
                              why="gfnet's filter is sized to a token grid; use it in an image "
                                  "model (model.arch=vit / metaformer)")
        self.grid = g
        H, W = g
        # (H, W/2+1, d, 2): real and imaginary parts; the released init, N(0, 0.02)
        self.weight = nn.Parameter(torch.randn(H, W // 2 + 1, d_model, 2) * 0.02)

    def check_grid(self, h: int, w: int) -> None:
        if (h, w) != self.grid:
            raise ConfigError("mixer(gfnet).grid", list(self.grid),
                              why=f"the filter is {self.grid[0]}×{self.grid[1]}, the grid {h}×{w}")

    def filter(self) -> Tensor:
        """K (H, W/2+1, d), complex."""
        return torch.view_as_complex(self.weight.float())

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        hw = grid_shape(x, ctx.grid, self.grid, "gfnet")
        if hw != self.grid:
            self.check_grid(*hw)
        g = to_grid(x.float(), hw)                                       # (B, H, W, d)
        X = torch.fft.rfft2(g, dim=(1, 2), norm="ortho")                 # (B, H, W/2+1, d)
        y = torch.fft.irfft2(X * self.filter(), s=hw, dim=(1, 2), norm="ortho")
        return from_grid(y).to(x.dtype), state
