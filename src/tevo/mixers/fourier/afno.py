"""AFNO: a block-diagonal complex MLP shared across frequencies, with soft shrinkage.

Paper: Adaptive Fourier Neural Operators: Efficient Token Mixers for Transformers
(Guibas et al., 2022), eq. 5–7 (the released AFNO2D layer):
    X = F[x]   (2-D real FFT over the grid, orthonormal)
    Z_k = S_λ( W_2 σ(W_1 X_k + b_1) + b_2 )     per frequency k, W block-diagonal (``blocks``)
    y = F^{-1}[Z] + x                          (the layer's own skip, as in the released code)
with σ = ReLU applied to the real and imaginary parts, S_λ(u) = sign(u)·max(|u| − λ, 0) the
soft shrinkage of the real and imaginary parts (sparsifies the modes; λ = ``shrinkage``), and
``hard_threshold`` < 1 keeping only that fraction of the lowest modes. The weights are shared
by all frequencies (unlike FNO's per-mode R_k), which makes the mixer O(n d²/k) in parameters
independent of the resolution: a token mixer for any grid size.
With λ = 0, one block and the MLP replaced by one complex diagonal product, this is GFNet's
global filter with a frequency-constant K (checked in the paper test, with the MLP itself
checked against a per-frequency loop).
Complexity: O(n d log n + n d²/k) time, O(n d) memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.grid import from_grid, grid_shape, to_grid
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "afno", paper="Adaptive Fourier Neural Operators: Efficient Token Mixers for Transformers "
                  "(Guibas et al., 2022)",
    equation="eq. 5-7: y = F⁻¹[S_λ(W₂ σ(W₁ F[x] + b₁) + b₂)] + x, W block-diagonal",
    complexity=("O(n d log n + n d²/k)", "O(n d)"),
    test="tests/papers/test_fourier_afno.py::test_afno_equals_per_frequency_reference_and_gfnet_form",
    tiny={"blocks": 2})
class AdaptiveFourierNeuralOperator(Mixer):
    """Block-diagonal complex MLP on every Fourier mode of the grid, soft-shrunk."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False, grid=True, text=True)

    def __init__(self, d_model: int, blocks: int = 8, hidden_mult: float = 1.0,
                 shrinkage: float = 0.01, hard_threshold: float = 1.0):
        super().__init__()
        if not isinstance(blocks, int) or blocks < 1 or d_model % blocks:
            raise ConfigError("mixer(afno).blocks", blocks,
                              why=f"must be a positive divisor of d_model={d_model}")
        if not float(hidden_mult) > 0:
            raise ConfigError("mixer(afno).hidden_mult", hidden_mult, why="must be > 0")
        if float(shrinkage) < 0:
            raise ConfigError("mixer(afno).shrinkage", shrinkage, why="must be >= 0")
        if not 0 < float(hard_threshold) <= 1:
            raise ConfigError("mixer(afno).hard_threshold", hard_threshold,
                              why="the kept fraction of modes, in (0, 1]")
        self.k, self.bs = blocks, d_model // blocks
        self.hs = max(1, int(round(self.bs * float(hidden_mult))))
        self.lam, self.keep = float(shrinkage), float(hard_threshold)
        s = 0.02                                                     # the released init scale
        self.w1 = nn.Parameter(s * torch.randn(2, blocks, self.bs, self.hs))
        self.b1 = nn.Parameter(s * torch.randn(2, blocks, self.hs))
        self.w2 = nn.Parameter(s * torch.randn(2, blocks, self.hs, self.bs))
        self.b2 = nn.Parameter(s * torch.randn(2, blocks, self.bs))

    def mlp(self, re: Tensor, im: Tensor) -> tuple[Tensor, Tensor]:
        """The complex block MLP on (..., k, bs) real/imag parts → (..., k, bs)."""
        w1, b1, w2, b2 = self.w1.float(), self.b1.float(), self.w2.float(), self.b2.float()
        e = "...kb,kbh->...kh"
        h_re = F.relu(torch.einsum(e, re, w1[0]) - torch.einsum(e, im, w1[1]) + b1[0])
        h_im = F.relu(torch.einsum(e, im, w1[0]) + torch.einsum(e, re, w1[1]) + b1[1])
        e = "...kh,khb->...kb"
        o_re = torch.einsum(e, h_re, w2[0]) - torch.einsum(e, h_im, w2[1]) + b2[0]
        o_im = torch.einsum(e, h_im, w2[0]) + torch.einsum(e, h_re, w2[1]) + b2[1]
        return o_re, o_im

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        hw = grid_shape(x, ctx.grid, "1d", "afno")                     # text: one row
        H, W = hw
        B, n, d = x.shape
        X = torch.fft.rfft2(to_grid(x.float(), hw), dim=(1, 2), norm="ortho")   # (B,H,W/2+1,d)
        Wf = X.shape[2]
        Xb = X.reshape(B, H, Wf, self.k, self.bs)
        o_re, o_im = self.mlp(Xb.real, Xb.imag)
        Z = torch.complex(F.softshrink(o_re, self.lam) if self.lam else o_re,
                          F.softshrink(o_im, self.lam) if self.lam else o_im)
        if self.keep < 1:                           # hard thresholding: lowest modes only
            kept = torch.zeros(H, Wf, dtype=torch.bool, device=x.device)
            mh, mw = max(1, int(round(H // 2 * self.keep))), max(1, int(round(Wf * self.keep)))
            kept[:mh + 1, :mw] = True
            kept[H - mh:, :mw] = True
            Z = Z * kept[None, :, :, None, None]
        y = torch.fft.irfft2(Z.reshape(B, H, Wf, d), s=hw, dim=(1, 2), norm="ortho")
        return (from_grid(y) + x.float()).to(x.dtype), state
