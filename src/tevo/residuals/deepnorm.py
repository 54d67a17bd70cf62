"""DeepNorm: post-LN with the residual up-weighted by α and the branches' init scaled by β.

Paper: DeepNet: Scaling Transformers to 1,000 Layers (Wang et al., 2022), §3, Fig. 2:
    x_{l+1} = LN(α·x_l + G_l(x_l, θ_l))
with, for an N-layer encoder and an M-layer decoder (Fig. 2, table of constants):
    encoder-only / decoder-only:  α = (2N)^{1/4},            β = (8N)^{-1/4}
    encoder–decoder, encoder:     α = 0.81·(N⁴M)^{1/16},     β = 0.87·(N⁴M)^{-1/16}
    encoder–decoder, decoder:     α = (3M)^{1/4},            β = (12M)^{-1/4}
β multiplies the Xavier-normal init of the FFN, value and output projections (q and k keep
gain 1): the ``deepnorm`` init scheme (tevo.residuals.init) applies β and sets the
encoder–decoder α; on its own this residual uses the single-stack α of its stack's depth.
Complexity: O(n d) on top of the sublayer.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import RESIDUALS
from .base import Residual


def deepnorm_constants(n_enc: int = 0, n_dec: int = 0) -> dict:
    """{"encoder": (α, β), "decoder": (α, β)} for the stacks that exist (DeepNet Fig. 2).
    One of the depths may be 0: an encoder-only or decoder-only model."""
    if n_enc < 0 or n_dec < 0 or n_enc + n_dec == 0:
        raise ConfigError("deepnorm", (n_enc, n_dec),
                          why="needs a positive encoder or decoder depth")
    if n_enc and n_dec:
        r = (n_enc ** 4 * n_dec) ** (1 / 16)
        return {"encoder": (0.81 * r, 0.87 / r),
                "decoder": ((3 * n_dec) ** 0.25, (12 * n_dec) ** -0.25)}
    out = {}
    if n_enc:
        out["encoder"] = ((2 * n_enc) ** 0.25, (8 * n_enc) ** -0.25)
    if n_dec:
        out["decoder"] = ((2 * n_dec) ** 0.25, (8 * n_dec) ** -0.25)
    return out


@RESIDUALS.register("deepnorm", paper="DeepNet: Scaling Transformers to 1,000 Layers "
                                      "(Wang et al., 2022)",
                    equation="§3: x_{l+1} = LN(α·x_l + G(x_l)); α = (2N)^{1/4} (one stack), "
                             "enc–dec: α_enc = 0.81(N⁴M)^{1/16}, α_dec = (3M)^{1/4}",
                    complexity=("O(n d)", "O(n d)"),
                    test="tests/papers/test_residuals_deepnorm.py::"
                         "test_deepnorm_alpha_beta_formulas")
class DeepNormResidual(Residual):
    """norm(α·x + F(x)) with α from the DeepNet formula (a buffer, not learned)."""

    final_norm = False

    def __init__(self, d_model: int, norm="layernorm", dropout: float = 0.0, layer: int = 0,
                 n_layers: int = 1, alpha: float | None = None):
        super().__init__(d_model, norm, dropout, layer, n_layers)
        self.norm = self.make_norm()
        a = alpha if alpha is not None else deepnorm_constants(n_dec=max(n_layers, 1))["decoder"][0]
        self.register_buffer("alpha", torch.tensor(float(a)))

    def forward(self, x: Tensor, fn, block_input=None) -> Tensor:
        return self.norm(self.alpha.to(x.dtype) * x + self.drop(fn(x)))
