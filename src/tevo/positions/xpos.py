"""xPos: RoPE with an exponential decay that makes far-away scores smaller.

Paper: A Length-Extrapolatable Transformer (Sun et al., 2022) (the "length
extrapolation" posts discuss it as RoPE + decay):
    f_q(q, n) = ζ^{n/γ_s} ⊙ R_{Θ,n} q,   f_k(k, m) = ζ^{-m/γ_s} ⊙ R_{Θ,m} k,
    ζ_i = (2i/d + γ) / (1 + γ),  γ = 0.4,  γ_s = scale_base = 512,
so that  f_q(q, n)·f_k(k, m) = Σ_i ζ_i^{(n-m)/γ_s} (…)  depends only on n - m and decays with it.
The reference (torchscale ``XPOS``) uses the interleaved layout and centres the exponents on the
current sequence to avoid overflow, re-encoding the cached (raw) keys at every step. The product
q·k is unchanged by the centre c (it cancels), but each factor ζ^{±(pos−c)/γ_s} must stay finite:
with ζ_min = γ/(1+γ) that needs |pos − c| < 88·γ_s/|ln ζ_min| (≈ 36k positions at γ_s = 512).
So, as in torchscale, mixers of the softmax family (``MultiHeadAttentionBase``, where ``attend``
is the plain dot product in which the centre cancels) cache raw keys and call ``rotate_call``, which centres each call on its last query position (per row): past
keys get factors ≤ 1 (far ones underflow to 0, their true decay), so any absolute position works
(tested at 1M+, fp32 and bf16) provided one call spans fewer than ~32k query positions (longer
calls are an InputError: prefill in chunks). RoPE angles are reduced modulo 2π in float64, so
the rotation is exact at large positions too. Other mixers cache encoded keys and call
``rotate``, which keeps a fixed ``center`` (default max_len/2); positions farther from it than
the range above are an InputError, never NaN scores.
Complexity: time O(n d), memory O(n d) (softmax family: O(n_k d) per call to re-encode cached
keys, as torchscale); no parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
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
    encodes_keys_per_call = True     # MultiHeadAttentionBase: cache raw keys, call rotate_call
    MAX_EXPONENT = 80.0              # |ln factor| kept below this (fp32/bf16 overflow at ≈ 88.7)

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

    def max_span(self) -> float:
        """How far from the centre a position may lie before a factor leaves the fp32 range."""
        log_min = abs(math.log(self.gamma / (1.0 + self.gamma))) if self.gamma > 0 else math.inf
        return self.MAX_EXPONENT * self.scale_base / log_min

    def angles(self, positions: Tensor, inv_freq: Tensor | None = None) -> Tensor:
        """m·θ_i reduced modulo 2π in float64: exact rotations at positions of 10^6 and more."""
        f = self.inv_freq if inv_freq is None else inv_freq
        ang = positions.double().unsqueeze(-1) * f.to(positions.device).double()
        return torch.remainder(ang, 2 * math.pi).float()

    def decay(self, positions: Tensor, sign: float, center):
        """rotary_dim d -> ζ^{sign·(pos - center)/scale_base}: (B, n, d/2), fp32, with
        ζ_i = (2i/d + γ)/(1 + γ); ``center`` an int or a (B, 1) tensor."""
        def scale(d: int) -> Tensor:
            i2 = torch.arange(0, d, 2, dtype=torch.float64, device=positions.device)
            log_zeta = torch.log((i2 + self.gamma * d) / ((1.0 + self.gamma) * d))   # < 0
            p = (positions.double() - center).unsqueeze(-1) / self.scale_base
            return torch.exp(sign * p * log_zeta).float()
        return scale

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        """Fixed centre (for mixers that cache encoded keys)."""
        far = max(int((t - self.center).abs().max()) for t in (q_pos, k_pos) if t.numel())
        if far > self.max_span():
            raise InputError(f"xpos: position {self.center + far} is {far} from the fixed "
                             f"centre {self.center}, past the {int(self.max_span())} its factors "
                             f"ζ^(±pos/scale_base) stay finite for; softmax-family mixers have no "
                             f"such limit (they re-encode cached keys), or set position.center")
        return (self.apply(q, q_pos, self.decay(q_pos, 1.0, self.center)),
                self.apply(k, k_pos, self.decay(k_pos, -1.0, self.center)))

    def rotate_call(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        """q (B, h, n, e) against ALL keys k (B, h_kv, n_k, e) of the call (cached ones too,
        unencoded): centred on each row's last query position, so keys behind it get factors
        ≤ 1 and only the span of this call's queries is bounded."""
        c = q_pos.max(dim=1, keepdim=True).values                      # (B, 1)
        span = int((c - q_pos).max()) if q_pos.numel() else 0
        if span > self.max_span():
            raise InputError(f"xpos: one call spans {span} query positions, more than the "
                             f"{int(self.max_span())} its factors stay finite for; run the "
                             f"prefill in chunks (with the KV cache)")
        return (self.apply(q, q_pos, self.decay(q_pos, 1.0, c)),
                self.apply(k, k_pos, self.decay(k_pos, -1.0, c)))
