"""HyperMixer: a token-mixing MLP whose weights a hypernetwork generates from the tokens.

Paper: HyperMixer: An MLP-based Low Cost Alternative to Transformers (Mai et al., 2023), eq. 2–3:
    W_1 = h_1(X),  W_2 = h_2(X)   ∈ R^{n × d'}   (h_k: the same small MLP on every token)
    TM-MLP(X) = W_2 σ(W_1ᵀ X)                    (W_1ᵀ X ∈ R^{d' × d}, σ = GELU)
Unlike MLP-Mixer's fixed n × n weights, any length works and the mixer is permutation
equivariant (permuting the tokens permutes the output), like attention without positions; the
order comes from the model's position encoding, added to X before h_k as in the paper.
Padding tokens get zero rows in W_1, so they contribute nothing to W_1ᵀ X.
Complexity: O(n d d') time, O(n d' + d d') memory.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "hypermixer", paper="HyperMixer: An MLP-based Low Cost Alternative to Transformers "
                        "(Mai et al., 2023)",
    equation="eq. 2-3: W_k = h_k(X); y = W_2 GELU(W_1ᵀ X)", complexity=("O(n d d')", "O(n d')"),
    test="tests/papers/test_mlp_hypermixer.py::test_hypermixer_formula_and_permutation_equivariance",
    tiny={"hidden": 8})
class HyperMixer(Mixer):
    """Token mixing by an MLP whose n × d' weights are generated per token."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=True, flat_grid=True, text=True)

    def __init__(self, d_model: int, hidden: int = 64, tied: bool = False):
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError("mixer(hypermixer).hidden", hidden, why="an integer >= 1 (d')")
        self.h1 = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.h2 = self.h1 if tied else nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(),
                                                     nn.Linear(hidden, hidden))

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        w1, w2 = self.h1(x), self.h2(x)                                 # (B, n, d')
        mask = ctx.query_mask(x.shape[1])
        if mask is not None:
            w1 = w1 * mask.unsqueeze(-1).to(w1.dtype)
        hidden = F.gelu(w1.transpose(1, 2) @ x)                         # (B, d', d)
        return w2 @ hidden, state                                       # (B, n, d)
