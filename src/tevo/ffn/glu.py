"""Gated linear unit feed-forward layers: GLU, GEGLU, SwiGLU, ReGLU, Bilinear.

Paper: GLU Variants Improve Transformer (Shazeer, 2020), eqs. 5–6:
    FFN_GLU(x)      = (σ(xW) ⊗ xV) W_2        FFN_GEGLU(x)    = (GELU(xW) ⊗ xV) W_2
    FFN_SwiGLU(x)   = (Swish(xW) ⊗ xV) W_2    FFN_ReGLU(x)    = (ReLU(xW) ⊗ xV) W_2
    FFN_Bilinear(x) = (xW ⊗ xV) W_2
The gated layers have three matrices instead of two, so the paper shrinks the hidden size by 2/3
(d_ff = 2/3 · mult · d) to keep the parameter count and compute of the plain FFN (§2); biases
are omitted as in the paper. ``multiple_of`` rounds d_ff up as LLaMA does (256 there).
Complexity: O(n d d_ff) time (3 matmuls), O(n d_ff) memory.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import FFNS
from .activations import activation as build_activation

_TEST = "tests/papers/test_ffn_glu.py::test_glu_variants_formula_and_param_count_equals_mlp"


def glu_hidden(d_model: int, mult: float = 4.0, d_ff: int | None = None,
               multiple_of: int = 1) -> int:
    """d_ff of a gated FFN: explicit, or 2/3 of the plain FFN's mult·d (GLU Variants §2)."""
    if d_ff is None:
        d_ff = int(2 * mult * d_model / 3)
    if multiple_of < 1:
        raise ConfigError("ffn.multiple_of", multiple_of, why="must be >= 1")
    return multiple_of * ((d_ff + multiple_of - 1) // multiple_of)


class GatedFFN(nn.Module):
    """(act(x W_gate) ⊗ x W_up) W_2 with any registered activation (the GLU family)."""

    default_activation = "sigmoid"

    def __init__(self, d_model: int, mult: float = 4.0, d_ff: int | None = None,
                 activation: str | None = None, bias: bool = False, dropout: float = 0.0,
                 multiple_of: int = 1):
        super().__init__()
        d_ff = glu_hidden(d_model, mult, d_ff, multiple_of)
        self.d_ff = d_ff
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)      # W
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)        # V
        self.act = build_activation(activation or self.default_activation)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)            # W_2 ("fc2": GPT-2 depth scaling)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:                        # (B, n, d) -> (B, n, d)
        h = self.act(self.gate_proj(x)) * self.up_proj(x)          # (B, n, d_ff)
        return self.fc2(self.drop(h))


def _variant(name: str, act: str, formula: str):
    def __init__(self, d_model: int, mult: float = 4.0, d_ff: int | None = None,
                 bias: bool = False, dropout: float = 0.0, multiple_of: int = 1):
        GatedFFN.__init__(self, d_model, mult, d_ff, act, bias, dropout, multiple_of)

    cls = type(f"{name.capitalize()}FFN", (GatedFFN,), {
        "__init__": __init__, "default_activation": act,
        "__doc__": f"{formula}, d_ff = 2/3·mult·d by default (GLU Variants Improve Transformer).",
        "__module__": __name__})
    FFNS.register(name, paper="GLU Variants Improve Transformer (Shazeer, 2020)",
                  equation=f"eq. 6: {formula}; d_ff = 2/3·mult·d keeps the params of `mlp`",
                  complexity=("O(n d d_ff)", "O(n d_ff)"), test=_TEST)(cls)
    return cls


FFNS.register("glu", paper="GLU Variants Improve Transformer (Shazeer, 2020); Language Modeling "
                           "with Gated Convolutional Networks (Dauphin et al., 2017)",
              equation="eq. 5: FFN_GLU(x) = (σ(xW) ⊗ xV) W_2 (any activation via `activation`); "
                       "d_ff = 2/3·mult·d keeps the params of `mlp`",
              complexity=("O(n d d_ff)", "O(n d_ff)"), test=_TEST)(GatedFFN)
GEGLU = _variant("geglu", "gelu", "FFN_GEGLU(x) = (GELU(xW) ⊗ xV) W_2")
SwiGLU = _variant("swiglu", "silu", "FFN_SwiGLU(x) = (Swish_1(xW) ⊗ xV) W_2")
ReGLU = _variant("reglu", "relu", "FFN_ReGLU(x) = (ReLU(xW) ⊗ xV) W_2")
Bilinear = _variant("bilinear", "identity", "FFN_Bilinear(x) = (xW ⊗ xV) W_2")
