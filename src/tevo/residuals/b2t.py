"""Bottom-to-top (B2T) residual connection for post-LN Transformers.

Paper: On Layer Normalizations and Residual Connections in Transformers (Takase, Kiyono,
Kobayashi & Suzuki, 2022), §4, eq. 7: post-LN, plus one extra connection that carries the
layer input x over every LayerNorm of the layer into the last one:
    h = LN(x + Attn(x));   y = LN(h + FFN(h) + x)
(in a decoder layer the self- and cross-attention sublayers are post-LN, and x joins the LN of
the FFN). It keeps post-LN's final-layer quality while letting gradients reach lower layers
undiminished, so deep post-LN stacks train. The block tells each residual its position
(``sublayer`` of ``n_sublayers``); a one-sublayer block is plain post-LN.
Complexity: O(n d) on top of the sublayer.
"""
from __future__ import annotations

from torch import Tensor

from ..registry import RESIDUALS
from .base import Residual


@RESIDUALS.register("b2t", paper="On Layer Normalizations and Residual Connections in "
                                 "Transformers (Takase et al., 2022)",
                    equation="eq. 7: h = LN(x + Attn(x)); y = LN(h + FFN(h) + x)",
                    complexity=("O(n d)", "O(n d)"),
                    test="tests/papers/test_residuals_b2t.py::test_b2t_block_formula")
class B2TResidual(Residual):
    """Post-LN whose last sublayer also adds the block input before its LN."""

    final_norm = False

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1, sublayer: int = 0, n_sublayers: int = 1):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm = self.make_norm()
        self.is_last = n_sublayers > 1 and sublayer == n_sublayers - 1

    def forward(self, x: Tensor, fn, block_input: Tensor | None = None) -> Tensor:
        y = x + self.drop(fn(x))
        if self.is_last and block_input is not None:
            y = y + block_input                        # the bottom-to-top connection
        return self.norm(y)
