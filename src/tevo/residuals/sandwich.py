"""Sandwich norm and res-post-norm: normalising the branch output before the residual add.

Sandwich-LN (CogView, Ding et al., 2021, §2.4; the "LLM details" summary):
    x_{l+1} = x_l + LN_out(F(LN_in(x_l)))        pre-LN plus a second LN on the branch output.
Res-post-norm (Swin Transformer V2, Liu et al., 2022, §3.1, Fig. 1):
    x_{l+1} = x_l + LN(F(x_l))                   the norm moves from the input to the output of
                                                 the branch, so branch outputs cannot grow
                                                 with depth and accumulate on the main path.
Both leave the main path un-normalised and end the stack with a final norm.
Complexity: O(n d) on top of the sublayer.
"""
from __future__ import annotations

from torch import Tensor

from ..registry import RESIDUALS
from .base import Residual

_TEST = "tests/papers/test_residuals_sandwich.py::test_sandwich_and_res_post_norm_formulas"


@RESIDUALS.register("sandwich", paper="CogView: Mastering Text-to-Image Generation via "
                                      "Transformers (Ding et al., 2021), Sandwich-LN",
                    equation="§2.4: x + LN_out(F(LN_in(x))); final LN after the stack",
                    complexity=("O(n d)", "O(n d)"), test=_TEST)
class SandwichResidual(Residual):
    """x + norm_out(F(norm_in(x)))."""

    final_norm = True

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm_in = self.make_norm()
        self.norm_out = self.make_norm()

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        return x + self.drop(self.norm_out(fn(self.norm_in(x))))


@RESIDUALS.register("res_post_norm", paper="Swin Transformer V2: Scaling Up Capacity and "
                                           "Resolution (Liu et al., 2022)",
                    equation="§3.1: x + LN(F(x)) (norm after the branch, before the add)",
                    complexity=("O(n d)", "O(n d)"), test=_TEST)
class ResPostNormResidual(Residual):
    """x + norm(F(x))."""

    final_norm = True

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm = self.make_norm()

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        return x + self.drop(self.norm(fn(x)))
