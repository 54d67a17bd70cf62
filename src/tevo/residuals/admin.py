"""Admin: post-LN with the residual shortcut rescaled by ω, set from the model's own output
variances so that no layer depends too heavily on its residual branch.

Paper: Understanding the Difficulty of Training Transformers (Liu, Liu, Gao, Chen & Han, 2020),
§4.3, eq. 8 and Algorithm 1:
    x_i = LN(x_{i−1} ⊙ ω_i + f_i(x_{i−1}))
Initialisation (the ``admin`` init scheme, tevo.residuals.init): one profiling forward pass with
ω = 1 computes ω_i = √(Σ_{j<i} Var[f_j(x_{j−1})]) — in the reference code the running
ratio_{i+1} = √(Var[x_{i−1}·ω_i] + Var[f_i(x_{i−1})]) from ratio_1 = 1 — so the output change
caused by a parameter update is O(log N) rather than O(N). ω is a trainable vector (the
reference's ``*_ratio_change``); with ω = 1 the scheme is post-LN exactly.
Complexity: O(n d) on top of the sublayer.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import RESIDUALS
from .base import Residual


@RESIDUALS.register("admin", paper="Understanding the Difficulty of Training Transformers "
                                   "(Admin, Liu et al., 2020)",
                    equation="eq. 8: x_i = LN(x_{i−1}·ω_i + f_i(x_{i−1})); "
                             "ω_i = √(Σ_{j<i} Var f_j) profiled at init (Algorithm 1)",
                    complexity=("O(n d)", "O(n d)"),
                    test="tests/papers/test_residuals_admin.py::"
                         "test_admin_profiling_bounds_output_change")
class AdminResidual(Residual):
    """norm(x ⊙ ω + F(x)) with ω (init 1) set by the Admin profiling init."""

    final_norm = False

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm = self.make_norm()
        self.omega = nn.Parameter(torch.ones(d_model))
        self.profile: dict | None = None      # set by the admin init for one forward pass

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        fx = self.drop(fn(x))
        if self.profile is not None:                     # Algorithm 1, profiling pass
            with torch.no_grad():
                self.omega.fill_(self.profile["ratio"])
                var = (x * self.omega).float().var() + fx.float().var()
                self.profile["ratio"] = math.sqrt(float(var))
                self.profile.setdefault("omegas", []).append(float(self.omega[0]))
        return self.norm(x * self.omega.to(x.dtype) + fx)
