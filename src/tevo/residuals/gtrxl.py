"""GTrXL's gated residual: a GRU-style gate replaces the residual add, biased to the identity.

Paper: Stabilizing Transformers for Reinforcement Learning (Parisotto et al., 2019), §3,
eqs. (5)–(8) with the GRU-type gating layer g(x, y), where x is the residual stream and
y = ReLU(F(LN(x))) the sublayer output (LN on the branch input only, "identity map
reordering"; ReLU on its output):
    r = σ(W_r y + U_r x)
    z = σ(W_z y + U_z x − b_g)
    ĥ = tanh(W_g y + U_g (r ⊙ x))
    g(x, y) = (1 − z) ⊙ x + z ⊙ ĥ
With b_g > 0 (2 by default) z ≈ σ(−b_g) at initialisation, so each gate starts close to the
identity map and the agent first learns a reactive (Markov) policy.
Complexity: O(n d²) on top of the sublayer (five d×d matrices).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import RESIDUALS
from .base import Residual


@RESIDUALS.register("gtrxl_gate", paper="Stabilizing Transformers for Reinforcement Learning "
                                        "(GTrXL, Parisotto et al., 2019)",
                    equation="eqs. 5–8: r = σ(W_r y + U_r x), z = σ(W_z y + U_z x − b_g), "
                             "ĥ = tanh(W_g y + U_g(r⊙x)), g = (1−z)⊙x + z⊙ĥ, y = ReLU(F(LN(x)))",
                    complexity=("O(n d²)", "O(n d)"),
                    test="tests/papers/test_residuals_gtrxl.py::"
                         "test_gtrxl_gate_formula_and_identity_at_init")
class GTrXLGateResidual(Residual):
    """GRU-type gating g(x, ReLU(F(LN(x)))) in place of x + F(x), identity-biased (b_g)."""

    final_norm = True

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1, gate_bias: float = 2.0):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        d = d_model
        self.norm = self.make_norm()
        self.w_y = nn.Linear(d, 3 * d, bias=False)        # [W_r; W_z; W_g] y
        self.u_x = nn.Linear(d, 2 * d, bias=False)        # [U_r; U_z] x
        self.u_g = nn.Linear(d, d, bias=False)            # U_g (r ⊙ x)
        self.b_g = nn.Parameter(torch.full((d,), float(gate_bias)))

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        y = torch.relu(self.drop(fn(self.norm(x))))      # (B, n, d)
        wr, wz, wg = self.w_y(y).chunk(3, -1)
        ur, uz = self.u_x(x).chunk(2, -1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.b_g.to(x.dtype))
        h = torch.tanh(wg + self.u_g(r * x))
        return (1 - z) * x + z * h
