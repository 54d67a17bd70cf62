"""Complex-order embeddings: each word is a wave whose phase advances with its position.

Paper: Encoding Word Order in Complex Embeddings (Wang, Zhao, Lioma, Li, Zhang & Simonsen,
ICLR 2020):
    f(j, pos) = r_j ⊙ exp(i (ω_j · pos + θ_j)),
amplitude r_j, frequency ω_j and initial phase θ_j are word-dependent vectors. A shift by k is a
position-independent linear map, f(j, pos + k) = f(j, pos) ⊙ exp(i ω_j k) (the paper's
"position-free offset transformation"), and |f(j, pos)| = r_j whatever the position.
tevo's input hook receives the token embedding x_j (not the ids), so the three word tables are
realised as linear maps of it, r = x W_r, ω = x̂ W_ω, θ = x̂ W_θ with x̂ = x/rms(x)
(per-word by construction: a factorised version of the paper's three embedding tables), with
D = d/2 complex channels returned as the real vector [Re f, Im f] of size d (the real view of the complex embedding).
Complexity: time O(n d²), memory O(n d); parameters 3·d·d/2.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding


@POSITIONS.register(
    "complex_order", paper="Encoding Word Order in Complex Embeddings (Wang et al., 2020)",
    equation="f(j, pos) = r_j ⊙ exp(i(ω_j pos + θ_j)), returned as [Re f, Im f]",
    complexity=("O(n d²)", "O(n d)"),
    test="tests/papers/test_positions_complex_order.py::"
         "test_complex_order_shift_is_a_position_free_rotation",
    tiny={})
class ComplexOrderPosition(PositionEncoding):
    """Word-dependent amplitude, frequency and phase: x -> r·[cos(ω·pos+θ), sin(ω·pos+θ)]."""

    hooks = frozenset({"input"})

    def __init__(self, d_model: int, freq_std: float = 0.1):
        super().__init__()
        if d_model % 2:
            raise ConfigError("position.d_model", d_model,
                              why="complex_order needs an even d_model (d/2 complex channels)")
        self.d_model, self.freq_std = d_model, float(freq_std)
        half = d_model // 2
        self.amplitude = nn.Linear(d_model, half, bias=False)     # W_r
        self.frequency = nn.Linear(d_model, half, bias=False)     # W_ω
        self.phase = nn.Linear(d_model, half, bias=False)         # W_θ
        self.init_weights()

    def init_weights(self) -> None:
        # r keeps the embedding's scale; ω and θ read the RMS-normalised embedding so that their
        # spread does not depend on the embedding init: |ω| ~ freq_std (well below π, so nearby
        # positions stay distinct), θ spread over about a turn
        d = self.d_model
        nn.init.normal_(self.amplitude.weight, std=(2.0 / d) ** 0.5)
        nn.init.normal_(self.frequency.weight, std=self.freq_std / d ** 0.5)
        nn.init.normal_(self.phase.weight, std=math.pi / d ** 0.5)

    def parts(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Amplitude r (B, n, d/2) and phase ω·pos + θ (B, n, d/2), fp32."""
        xf = x.float()
        xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-12)
        r = self.amplitude(xf)
        ang = self.frequency(xn) * positions.float().unsqueeze(-1) + self.phase(xn)
        return r, ang

    def complex(self, x: Tensor, positions: Tensor) -> Tensor:
        """f(x, pos) as a complex tensor (B, n, d/2)."""
        r, ang = self.parts(x, positions)
        return r * torch.exp(1j * ang)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        r, ang = self.parts(x, positions)
        return torch.cat([r * ang.cos(), r * ang.sin()], dim=-1).to(x.dtype)   # (B, n, d)
