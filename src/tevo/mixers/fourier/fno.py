"""FNO: a spectral convolution with the Fourier modes truncated, plus a pointwise linear path.

Paper: Fourier Neural Operator for Parametric Partial Differential Equations (Li et al., 2021),
eq. 4–5 and §4:
    (K v)(x) = F^{-1}( R ⊙ F(v) )(x),   v' = W v + K v
with R_k ∈ C^{d × d} a learned matrix per kept mode k: the lowest ``modes`` frequencies (1-D:
k = 0..m-1 of the real FFT; 2-D: rows k_1 ∈ {0..m_1-1} ∪ {H-m_1..H-1}, columns 0..m_2-1, as
in the authors' SpectralConv2d); every other mode is set to zero. The paper's activation σ
is left to the block's feed-forward sublayer (a token mixer is linear in v here).
1-D on a text sequence (any length; modes past n/2+1 are absent), 2-D on an image grid (the
model passes ``grid``; the weights are laid out for the one or the other).
Complexity: O(n d log n + m d²) time, O(n d) memory; m·d² complex parameters (m = kept modes).
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
    "fno", paper="Fourier Neural Operator for Parametric Partial Differential Equations "
                 "(Li et al., 2021)",
    equation="eq. 4-5: v' = W v + F⁻¹(R ⊙ F(v)), R zero past the kept modes",
    complexity=("O(n d log n + m d²)", "O(n d)"),
    test="tests/papers/test_fourier_fno.py::test_fno_all_modes_is_full_spectral_conv_and_truncation_zeroes",
    tiny={"modes": 3})
class FourierNeuralOperator(Mixer):
    """Per-mode complex channel mixing of the lowest Fourier modes (1-D or 2-D) + a linear path."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=True)

    def __init__(self, d_model: int, modes: int | list = 16, linear: bool = True, grid=None):
        super().__init__()
        if isinstance(modes, int) and not isinstance(modes, bool):
            modes = [modes, modes]
        if not (isinstance(modes, (list, tuple)) and len(modes) == 2
                and all(isinstance(m, int) and m >= 1 for m in modes)):
            raise ConfigError("mixer(fno).modes", modes, why="expected an int >= 1 or [m1, m2]")
        self.m1, self.m2 = int(modes[0]), int(modes[1])
        self.d = d_model
        self.grid = check_grid_option(grid, "fno")          # given by an image model: 2-D
        if self.grid is not None:         # modes beyond the grid's frequencies can never be used:
            H, W = self.grid              # no weights for them (same function, fewer parameters)
            self.m1, self.m2 = min(self.m1, H), min(self.m2, W // 2 + 1)
        scale = 1.0 / d_model
        # complex as (..., 2); 1-D: m2 modes; 2-D: 2·m1 rows × m2 columns (the authors' layout)
        shape = (self.m2,) if self.grid is None else (2 * self.m1, self.m2)
        self.weight = nn.Parameter(scale * torch.randn(*shape, d_model, d_model, 2))
        self.linear = nn.Linear(d_model, d_model) if linear else None

    def spectral(self, x: Tensor, hw) -> Tensor:
        """K v: (B, n, d) → (B, n, d), the truncated spectral convolution alone."""
        B, n, d = x.shape
        H, W = hw
        g = to_grid(x.float(), hw)                                      # (B, H, W, d)
        if self.grid is None:                                           # 1-D: one row
            X = torch.fft.rfft(g[:, 0], dim=1)                          # (B, W/2+1, d)
            k = min(self.m2, X.shape[1])
            R = torch.view_as_complex(self.weight.float())[:k]          # (k, d, d)
            Y = torch.zeros_like(X)
            Y[:, :k] = torch.einsum("bki,kio->bko", X[:, :k], R)
            return torch.fft.irfft(Y, n=W, dim=1).to(x.dtype)
        X = torch.fft.rfft2(g, dim=(1, 2))                              # (B, H, W/2+1, d)
        R = torch.view_as_complex(self.weight.float())                  # (2 m1, m2, d, d)
        Y = torch.zeros_like(X)
        k2 = min(self.m2, X.shape[2])
        lo = min(self.m1, H)                                            # rows 0..m1-1
        hi = min(self.m1, H - lo)                                       # rows H-m1..H-1
        Y[:, :lo, :k2] = torch.einsum("bxyi,xyio->bxyo", X[:, :lo, :k2], R[:lo, :k2])
        if hi:
            Y[:, H - hi:, :k2] = torch.einsum("bxyi,xyio->bxyo", X[:, H - hi:, :k2],
                                              R[2 * self.m1 - hi:, :k2])
        return from_grid(torch.fft.irfft2(Y, s=hw, dim=(1, 2))).to(x.dtype)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if (ctx.grid is None) != (self.grid is None):
            raise ConfigError("mixer(fno).grid", self.grid,
                              why="built for a " + ("1-D sequence" if self.grid is None else
                                                    "2-D grid") + ", run on the other")
        hw = grid_shape(x, ctx.grid, "1d", "fno")
        y = self.spectral(x, hw)
        if self.linear is not None:
            y = y + self.linear(x)
        return y, state
