"""Rotary position embedding (RoPE) and its context-extension scalings.

Paper: RoFormer: Enhanced Transformer with Rotary Position Embedding (Su et al., 2021), §3:
    f(x, m) = R^d_{Θ,m} x,  R = blockdiag over i of [[cos mθ_i, -sin mθ_i], [sin mθ_i, cos mθ_i]],
    θ_i = base^{-2i/d},  so that  f(q, m)·f(k, n) = q^T R_{Θ, n-m} k  depends only on n - m.
Layouts: ``interleaved`` rotates the pairs (x_{2i}, x_{2i+1}) (RoFormer, GPT-J); ``half`` rotates
(x_i, x_{i+d/2}) (GPT-NeoX, Llama ``rotate_half``). Same function up to a fixed permutation of
the channels, so a model trained with one layout needs that layout.
Partial rotary (GPT-NeoX ``rotary_pct``): only the first ``rotary_dim`` channels are rotated.
Scalings for context extension by ``factor`` s:
  - ``linear`` position interpolation (Chen et al., 2023): m -> m / s;
  - ``ntk`` NTK-aware (bloc97, 2023; "Transformer upgrade" posts): base -> base · s^{d/(d-2)}.
Complexity: time O(n d) per call, memory O(n d); no parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding

LAYOUTS = ("half", "interleaved")
SCALINGS = ("none", "linear", "ntk")


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (GPT-NeoX / Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_every_two(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) (RoFormer / GPT-J interleaved layout)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def resolve_rotary_dim(head_dim: int, rotary_dim) -> int:
    """None: all of head_dim; a float in (0, 1]: that fraction (GPT-NeoX rotary_pct); an int:
    that many channels. Must be even and at most head_dim."""
    if rotary_dim is None:
        r = head_dim
    elif isinstance(rotary_dim, float):
        if not 0.0 < rotary_dim <= 1.0:
            raise ConfigError("position.rotary_dim", rotary_dim,
                              why="a float rotary_dim is a fraction of head_dim in (0, 1]")
        r = int(head_dim * rotary_dim)
    else:
        r = int(rotary_dim)
    if r < 2 or r > head_dim or r % 2:
        raise ConfigError("position.rotary_dim", rotary_dim,
                          why=f"rotary_dim must be an even number in [2, head_dim={head_dim}], "
                              f"got {r}")
    return r


@POSITIONS.register(
    "rope", paper="RoFormer: Enhanced Transformer with Rotary Position Embedding (Su et al., "
                  "2021); Position Interpolation (Chen et al., 2023); NTK-aware scaling (2023)",
    equation="q_m -> R_{Θ,m} q_m, k_n -> R_{Θ,n} k_n, θ_i = base^{-2i/d}; "
             "linear: m -> m/s; ntk: base -> base·s^{d/(d-2)}",
    complexity=("O(n d)", "O(n d)"),
    test="tests/papers/test_positions_rope.py::test_rope_half_matches_hf_llama_rotary",
    tiny={})
class RotaryPosition(PositionEncoding):
    """RoPE: rotate q and k by position-dependent angles; q·k depends only on n - m."""

    hooks = frozenset({"qk"})
    translation_invariant = True

    def __init__(self, head_dim: int, base: float = 10000.0, rotary_dim: int | float | None = None,
                 layout: str = "half", scaling: str | None = None, factor: float = 1.0):
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError("position.layout", layout, LAYOUTS)
        scaling = "none" if scaling is None else scaling
        if scaling not in SCALINGS:
            raise ConfigError("position.scaling", scaling, SCALINGS)
        if float(factor) < 1.0:
            raise ConfigError("position.factor", factor, why="the scaling factor must be >= 1")
        if float(base) <= 1.0:
            raise ConfigError("position.base", base, why="the RoPE base must be > 1")
        self.head_dim, self.layout, self.scaling = head_dim, layout, scaling
        self.base, self.factor, self.rotary_spec = float(base), float(factor), rotary_dim
        self.rotary_dim = resolve_rotary_dim(head_dim, rotary_dim)
        self.register_buffer("inv_freq", self.frequencies(self.rotary_dim), persistent=False)
        self._other_dims: dict = {}

    def frequencies(self, d: int) -> Tensor:
        """θ_i = base'^{-2i/d} for i < d/2 (base' = base·s^{d/(d-2)} with NTK scaling)."""
        base = self.base
        if self.scaling == "ntk" and d > 2:
            base = base * self.factor ** (d / (d - 2))
        return (1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).float()

    def dims(self, e: int, device) -> tuple[int, Tensor]:
        """(rotary_dim, θ) for heads of size e: head_dim as configured; a mixer whose q/k have
        another size (e.g. GAU's shared qk) gets the same settings resolved for that size."""
        if e == self.head_dim:
            return self.rotary_dim, self.inv_freq.to(device)
        if e not in self._other_dims:
            r = resolve_rotary_dim(e, self.rotary_spec)
            self._other_dims[e] = (r, self.frequencies(r))
        r, f = self._other_dims[e]
        return r, f.to(device)

    # -- pieces reused by xpos / rope_bias ----------------------------------------------------
    def angles(self, positions: Tensor, inv_freq: Tensor | None = None) -> Tensor:
        """(B, n) positions -> (B, n, d/2) rotation angles m·θ_i (fp32)."""
        pos = positions.float()
        if self.scaling == "linear":
            pos = pos / self.factor
        f = self.inv_freq if inv_freq is None else inv_freq
        return pos.unsqueeze(-1) * f.to(positions.device)

    def expand(self, t: Tensor) -> Tensor:
        """(…, d/2) per-frequency values -> (…, d) laid out like the rotated channels."""
        if self.layout == "half":
            return torch.cat([t, t], dim=-1)
        return t.repeat_interleave(2, dim=-1)

    def _rot(self, x: Tensor) -> Tensor:
        return rotate_half(x) if self.layout == "half" else rotate_every_two(x)

    def apply(self, x: Tensor, positions: Tensor, scale=None) -> Tensor:
        """Rotate x (B, h, n, e) at positions (B, n). ``scale``: optional callable
        rotary_dim -> per-frequency factors (B, n, d/2) (xPos)."""
        d, inv_freq = self.dims(x.shape[-1], x.device)
        ang = self.angles(positions, inv_freq)                         # (B, n, d/2)
        cos = self.expand(ang.cos()).unsqueeze(1)                      # (B, 1, n, d)
        sin = self.expand(ang.sin()).unsqueeze(1)
        if scale is not None:
            s = self.expand(scale(d)).unsqueeze(1)
            cos, sin = cos * s, sin * s
        x_rot, x_pass = x[..., :d], x[..., d:]
        xf = x_rot.float()
        out = (xf * cos + self._rot(xf) * sin).to(x.dtype)
        return out if x_pass.shape[-1] == 0 else torch.cat([out, x_pass], dim=-1)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return self.apply(q, q_pos), self.apply(k, k_pos)
