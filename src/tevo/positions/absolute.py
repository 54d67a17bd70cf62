"""Absolute position encodings added to the token embeddings (the ``input`` hook)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..registry import POSITIONS
from .base import PositionEncoding


def sinusoid_table(positions: Tensor, d: int, base: float = 10000.0) -> Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)).
    positions: (...,) → (..., d), even and odd channels interleaved as in the paper."""
    i = torch.arange(0, d, 2, device=positions.device, dtype=torch.float32)
    inv = torch.exp(-math.log(base) * i / d)                        # (d/2,)
    ang = positions.float().unsqueeze(-1) * inv                     # (..., d/2)
    out = torch.stack([ang.sin(), ang.cos()], -1).flatten(-2)       # (..., d) interleaved
    return out[..., :d]


@POSITIONS.register(
    "sinusoidal", paper="Attention Is All You Need (Vaswani et al., 2017)",
    equation="§3.5: PE(pos,2i)=sin(pos/10000^{2i/d}), PE(pos,2i+1)=cos(pos/10000^{2i/d})",
    complexity=("O(n d)", "O(n d)"),
    test="tests/papers/test_positions_absolute.py::test_sinusoidal_matches_formula")
class SinusoidalPosition(PositionEncoding):
    """Fixed sinusoidal encoding added to the token embeddings; defined at every length.

    ``scale_input`` (default, as in the paper) multiplies the embeddings by √d first, and the
    model then initialises its token embeddings with N(0, d^-1/2) (``token_init_std``, the
    tensor2tensor/fairseq convention), so scaled tokens have unit variance like the table. With
    GPT-2's N(0, 0.02) embeddings the table of unit amplitude drowns the tokens: unscaled, a
    2×64 byte LM stays at the unigram rate (4.84 bits/char after 640k tokens, learned positions
    3.28); scaled but N(0, 0.02), 4.66 after 160k tokens; scaled with N(0, d^-1/2), 3.97
    (learned 3.76).
    """

    hooks = frozenset({"input"})

    def __init__(self, d_model: int, base: float = 10000.0, scale_input: bool = True):
        super().__init__()
        self.d_model, self.base, self.scale_input = d_model, base, scale_input
        # read by the model's init (models/common.py::init_weights)
        self.token_init_std = d_model ** -0.5 if scale_input else None

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.scale_input:                     # the paper multiplies embeddings by √d (§3.4)
            x = x * math.sqrt(self.d_model)
        return x + sinusoid_table(positions, self.d_model, self.base).to(x.dtype)


@POSITIONS.register(
    "learned", paper="BERT (Devlin et al., 2019); GPT (Radford et al., 2018)",
    equation="h_0 = W_e[token] + W_p[position]", complexity=("O(n d)", "O(L_max d)"),
    test="tests/papers/test_positions_absolute.py::test_learned_rejects_positions_past_table")
class LearnedPosition(PositionEncoding):
    """A learned table of ``max_len`` position vectors added to the embeddings."""

    hooks = frozenset({"input"})

    def __init__(self, d_model: int, max_len: int = 1024, init_std: float = 0.02):
        super().__init__()
        self.max_len = max_len
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=init_std)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if positions.numel() and int(positions.max()) >= self.max_len:
            raise InputError(f"position {int(positions.max())} is past the learned position "
                             f"table (max_len={self.max_len}); use a shorter input or a "
                             f"relative/sinusoidal position encoding")
        return x + self.table(positions)


@POSITIONS.register(
    "none", paper="Transformer Language Models without Positional Encodings Still Learn "
                  "Positional Information (Haviv et al., 2022)",
    equation="h_0 = W_e[token]; order is recovered from the causal mask alone",
    complexity=("O(1)", "O(1)"),
    test="tests/papers/test_positions_absolute.py::test_nope_bidirectional_is_permutation_equivariant")
class NoPosition(PositionEncoding):
    """NoPE: no position information; only meaningful in causal models."""

    hooks = frozenset({"input"})
    causal_only = True

    def __init__(self, d_model: int | None = None):
        super().__init__()
