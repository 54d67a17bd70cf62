"""xPos: RoPE with an exponential decay that makes far-away scores smaller.

Paper: A Length-Extrapolatable Transformer (Sun et al., 2022) (the "length
extrapolation" posts discuss it as RoPE + decay):
    f_q(q, n) = ζ^{n/γ_s} ⊙ R_{Θ,n} q,   f_k(k, m) = ζ^{-m/γ_s} ⊙ R_{Θ,m} k,
    ζ_i = (2i/d + γ) / (1 + γ),  γ = 0.4,  γ_s = scale_base = 512,
so that  f_q(q, n)·f_k(k, m) = Σ_i ζ_i^{(n-m)/γ_s} (…)  depends only on n - m and decays with it.
The reference (torchscale ``XPOS``) uses the interleaved layout and centres the exponents on the
middle of the current sequence to avoid overflow; here keys are cached already encoded, so the
centre must not move between calls: exponents are taken relative to a fixed ``center``
(default max_len/2). The product q·k is unchanged by the centre (it cancels).
Complexity: time O(n d), memory O(n d); no parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import POSITIONS
from .rope import RotaryPosition


@POSITIONS.register(
    "xpos", paper="A Length-Extrapolatable Transformer (Sun et al., 2022)",
    equation="q_n -> ζ^{n/γ_s} R_n q_n, k_m -> ζ^{-m/γ_s} R_m k_m, "
             "ζ_i = (2i/d + 0.4)/1.4",
    complexity=("O(n d)", "O(n d)"),
    test="tests/papers/test_positions_xpos.py::test_xpos_scores_match_torchscale_reference",
    tiny={})
class XPosPosition(RotaryPosition):
    """RoPE whose q/k are scaled by ζ^{±pos/scale_base}: scores decay with distance."""

    hooks = frozenset({"qk"})
    translation_invariant = True

    def __init__(self, head_dim: int, max_len: int = 1024, base: float = 10000.0,
                 scale_base: float = 512.0, gamma: float = 0.4, layout: str = "interleaved",
                 rotary_dim: int | float | None = None, center: int | None = None):
        super().__init__(head_dim, base=base, rotary_dim=rotary_dim, layout=layout)
        if float(scale_base) <= 0:
            raise ConfigError("position.scale_base", scale_base, why="must be > 0")
        if float(gamma) < 0:
            raise ConfigError("position.gamma", gamma, why="must be >= 0")
        self.gamma = float(gamma)
        self.scale_base = float(scale_base)
        self.center = max_len // 2 if center is None else int(center)

    def decay(self, positions: Tensor, sign: float):
        """rotary_dim d -> ζ^{sign·(pos - center)/scale_base}: (B, n, d/2), fp32, with
        ζ_i = (2i/d + γ)/(1 + γ)."""
        def scale(d: int) -> Tensor:
            i2 = torch.arange(0, d, 2, dtype=torch.float32, device=positions.device)
            log_zeta = torch.log((i2 + self.gamma * d) / ((1.0 + self.gamma) * d))   # < 0
            p = (positions.float() - self.center).unsqueeze(-1) / self.scale_base
            return torch.exp(sign * p * log_zeta)
        return scale

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return (self.apply(q, q_pos, self.decay(q_pos, 1.0)),
                self.apply(k, k_pos, self.decay(k_pos, -1.0)))
