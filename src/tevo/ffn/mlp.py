"""Position-wise feed-forward network.

Paper: Attention Is All You Need (Vaswani et al., 2017), §3.3, eq. 2:
    FFN(x) = act(x W_1 + b_1) W_2 + b_2,   d_ff = mult · d.
Complexity: O(n d d_ff) time, O(n d_ff) memory.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import FFNS
from .activations import activation as build_activation


@FFNS.register(
    "mlp", paper="Attention Is All You Need (Vaswani et al., 2017)",
    equation="§3.3 eq. 2: FFN(x) = act(xW_1 + b_1)W_2 + b_2", complexity=("O(n d d_ff)", "O(n d_ff)"),
    test="tests/papers/test_ffn_mlp.py::test_mlp_matches_formula")
class MLP(nn.Module):
    """Two-layer feed-forward block with any registered activation."""

    def __init__(self, d_model: int, mult: float = 4.0, d_ff: int | None = None,
                 activation: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        d_ff = d_ff or int(mult * d_model)
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.act = build_activation(activation)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))

