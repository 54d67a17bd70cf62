"""The residual-scheme contract.

A scheme wraps one sublayer F (mixer or FFN): ``y = scheme(x, F, block_input=x_0)`` where F is
a callable on (B, n, d). ``block_input`` is the input of the whole block, for schemes that
connect across sublayers (B2T). ``final_norm`` says whether the stack ends with a norm.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import NORMS


class Residual(nn.Module):
    final_norm: bool = True

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1):
        super().__init__()
        self.d_model, self.layer, self.n_layers = d_model, layer, n_layers
        self.drop = nn.Dropout(dropout)
        self.norm_spec = norm

    def make_norm(self, norm=None) -> nn.Module:
        return NORMS.build(norm if norm is not None else self.norm_spec, "model.norm",
                           d_model=self.d_model)

    def forward(self, x: Tensor, fn, block_input: Tensor | None = None) -> Tensor:
        raise NotImplementedError
