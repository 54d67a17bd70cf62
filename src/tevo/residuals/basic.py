"""Pre-norm and post-norm residual connections.

Post-LN (Attention Is All You Need, §3.1): x_{l+1} = LN(x_l + F(x_l)).
Pre-LN  (On Layer Normalization in the Transformer Architecture, Xiong et al., 2020; the GPT-2
layout): x_{l+1} = x_l + F(LN(x_l)), with a final LN after the stack.
Complexity: O(n d) on top of the sublayer.
"""
from __future__ import annotations

from torch import Tensor

from ..registry import RESIDUALS
from .base import Residual

_TEST = "tests/papers/test_residuals_basic.py::test_pre_and_post_ln_formulas"


@RESIDUALS.register("pre_ln", paper="On Layer Normalization in the Transformer Architecture "
                                    "(Xiong et al., 2020)",
                    equation="x + F(LN(x)); final LN after the stack",
                    complexity=("O(n d)", "O(n d)"), test=_TEST)
class PreNormResidual(Residual):
    """x + F(norm(x))."""

    final_norm = True

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm = self.make_norm()

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        return x + self.drop(fn(self.norm(x)))


@RESIDUALS.register("post_ln", paper="Attention Is All You Need (Vaswani et al., 2017)",
                    equation="§3.1: LN(x + Sublayer(x))", complexity=("O(n d)", "O(n d)"),
                    test=_TEST)
class PostNormResidual(Residual):
    """norm(x + F(x))."""

    final_norm = False

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm = self.make_norm()

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        return self.norm(x + self.drop(fn(x)))
