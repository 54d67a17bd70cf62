"""Residual branches scaled by a learned scalar that starts at zero, with no normalisation.

ReZero (Bachlechner et al., 2020, "ReZero is All You Need: Fast Convergence at Large Depth"),
eq. 3:       x_{i+1} = x_i + α_i · F(x_i),   α_i = 0 at initialisation, no LayerNorm.
SkipInit (De & Smith, 2020, "Batch Normalization Biases Residual Blocks Towards the Identity
Function in Deep Networks"), §4: a learnable scalar α at the end of each residual branch,
initialised to 0 (or a small constant), in a network without normalisation.
With α = 0 every block is exactly the identity at initialisation, so signals and gradients
pass through any depth unchanged. Both ignore the ``norm`` option (they have none) and need no
final norm. Complexity: O(n d) on top of the sublayer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import RESIDUALS
from .base import Residual

_TEST = ("tests/papers/test_residuals_rezero.py::"
         "test_rezero_and_skipinit_blocks_are_identity_at_init")


@RESIDUALS.register("rezero", paper="ReZero is All You Need: Fast Convergence at Large Depth "
                                    "(Bachlechner et al., 2020)",
                    equation="eq. 3: x_{i+1} = x_i + α_i·F(x_i), α_i = 0 at init, no norm",
                    complexity=("O(n d)", "O(n d)"), test=_TEST)
class ReZeroResidual(Residual):
    """x + α·F(x) with a learned scalar α initialised to 0; no norm."""

    final_norm = False

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1, alpha_init: float = 0.0):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        return x + self.alpha.to(x.dtype) * self.drop(fn(x))


@RESIDUALS.register("skipinit", paper="Batch Normalization Biases Residual Blocks Towards the "
                                      "Identity Function in Deep Networks (De & Smith, 2020)",
                    equation="§4: x_{i+1} = x_i + α·f_i(x_i), α learned, init 0, no normalisation",
                    complexity=("O(n d)", "O(n d)"), test=_TEST)
class SkipInitResidual(ReZeroResidual):
    """SkipInit: a learned scalar (init 0, or ``alpha_init``) ends each branch; no norm."""
