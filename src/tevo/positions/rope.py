"""Rotary position embedding (RoPE) and its context-extension scalings.

Paper: RoFormer: Enhanced Transformer with Rotary Position Embedding (Su et al., 2021), §3:
    f(x, m) = R^d_{Θ,m} x,  R = blockdiag over i of [[cos mθ_i, -sin mθ_i], [sin mθ_i, cos mθ_i]],
    θ_i = base^{-2i/d},  so that  f(q, m)·f(k, n) = q^T R_{Θ, n-m} k  depends only on n - m.
Layouts: ``interleaved`` rotates the pairs (x_{2i}, x_{2i+1}) (RoFormer, GPT-J); ``half`` rotates
(x_i, x_{i+d/2}) (GPT-NeoX, Llama ``rotate_half``). Same function up to a fixed permutation of
the channels, so a model trained with one layout needs that layout.
Partial rotary (GPT-NeoX ``rotary_pct``): only the first ``rotary_dim`` channels are rotated.
Scalings for context extension by ``factor`` s (L0 = ``original_max_len``, default the model's
``max_len``; θ_i the unscaled frequencies, λ_i = 2π/θ_i their wavelengths):
  - ``linear`` position interpolation (Chen et al., 2023): m -> m / s;
  - ``ntk`` NTK-aware (bloc97, 2023; "Transformer upgrade" posts): base -> base · s^{d/(d-2)};
  - ``dynamic`` dynamic NTK (emozilla, 2023; transformers' "dynamic"): for a call whose largest
    position is L-1, base -> base · (s·max(L, L0)/L0 − (s − 1))^{d/(d-2)}, i.e. unscaled up to
    L0 and NTK-scaled beyond. As in transformers, keys in a KV cache keep the frequencies of the
    call that encoded them;
  - ``llama3`` (Llama 3.1, Dubey et al., 2024): θ_i unchanged where λ_i < L0/high_freq_factor,
    θ_i/s where λ_i > L0/low_freq_factor, and between them (1−γ)θ_i/s + γθ_i with
    γ = (L0/λ_i − low_freq_factor)/(high_freq_factor − low_freq_factor);
  - ``yarn`` (YaRN, Peng et al., 2023, eqs. 17–21): θ_i' = (1−γ_i)θ_i/s + γ_i θ_i with the ramp
    γ_i = 1 − clamp((i − lo)/(hi − lo), 0, 1) over the rotary dimensions where a wavelength
    completes between beta_slow and beta_fast turns in L0 (lo/hi floored/ceiled unless
    ``truncate`` is false), and q, k both scaled by ``attention_factor`` (default
    √(1/t) = 0.1·ln s + 1), so that logits carry the paper's 1/t temperature.
Complexity: time O(n d) per call, memory O(n d); no parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding

LAYOUTS = ("half", "interleaved")
SCALINGS = ("none", "linear", "ntk", "dynamic", "llama3", "yarn")


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
                  "2021); Position Interpolation (Chen et al., 2023); NTK-aware scaling (2023); "
                  "YaRN (Peng et al., 2023); Llama 3.1 scaling (Dubey et al., 2024)",
    equation="q_m -> R_{Θ,m} q_m, k_n -> R_{Θ,n} k_n, θ_i = base^{-2i/d}; "
             "linear: m -> m/s; ntk: base -> base·s^{d/(d-2)}; dynamic: base·(sL/L0-s+1)^{d/(d-2)}; "
             "llama3: θ_i/s by wavelength band; yarn: ramp-mixed θ_i, θ_i/s and attention factor",
    complexity=("O(n d)", "O(n d)"),
    test="tests/papers/test_positions_rope.py::test_rope_half_matches_hf_llama_rotary",
    tiny={})
class RotaryPosition(PositionEncoding):
    """RoPE: rotate q and k by position-dependent angles; q·k depends only on n - m."""

    hooks = frozenset({"qk"})
    translation_invariant = True

    def __init__(self, head_dim: int, base: float = 10000.0, rotary_dim: int | float | None = None,
                 layout: str = "half", scaling: str | None = None, factor: float = 1.0,
                 max_len: int = 1024, original_max_len: int | None = None,
                 low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                 beta_fast: float = 32.0, beta_slow: float = 1.0,
                 attention_factor: float | None = None, truncate: bool = True):
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
        L0 = int(max_len if original_max_len is None else original_max_len)
        if L0 < 1:
            raise ConfigError("position.original_max_len", original_max_len,
                              why="must be a positive integer (the pre-training context length)")
        if not 0 < float(low_freq_factor) < float(high_freq_factor):
            raise ConfigError("position.low_freq_factor", (low_freq_factor, high_freq_factor),
                              why="need 0 < low_freq_factor < high_freq_factor (llama3)")
        if not 0 < float(beta_slow) < float(beta_fast):
            raise ConfigError("position.beta_slow", (beta_slow, beta_fast),
                              why="need 0 < beta_slow < beta_fast (yarn)")
        if attention_factor is not None and float(attention_factor) <= 0:
            raise ConfigError("position.attention_factor", attention_factor, why="must be > 0")
        self.original_max_len = L0
        self.low_freq_factor, self.high_freq_factor = float(low_freq_factor), float(high_freq_factor)
        self.beta_fast, self.beta_slow, self.truncate = float(beta_fast), float(beta_slow), bool(truncate)
        if scaling == "yarn" and attention_factor is None:
            attention_factor = 0.1 * math.log(float(factor)) + 1.0 if float(factor) > 1 else 1.0
        self.attention_factor = 1.0 if attention_factor is None else float(attention_factor)
        self.head_dim, self.layout, self.scaling = head_dim, layout, scaling
        self.base, self.factor, self.rotary_spec = float(base), float(factor), rotary_dim
        self.rotary_dim = resolve_rotary_dim(head_dim, rotary_dim)
        self.register_buffer("inv_freq", self.frequencies(self.rotary_dim), persistent=False)
        self._other_dims: dict = {}

    def frequencies(self, d: int, seq_len: int | None = None) -> Tensor:
        """θ_i = base'^{-2i/d} for i < d/2, rescaled as ``scaling`` says (``seq_len``: the
        call's length, read by ``dynamic`` only)."""
        base, s, L0 = self.base, self.factor, self.original_max_len
        i2 = torch.arange(0, d, 2, dtype=torch.float64)
        if self.scaling == "ntk" and d > 2:
            base = base * s ** (d / (d - 2))
        if self.scaling == "dynamic" and d > 2:
            L = max(int(seq_len or 0), L0)
            base = base * (s * L / L0 - (s - 1)) ** (d / (d - 2))
        theta = 1.0 / base ** (i2 / d)
        if self.scaling == "llama3":
            wavelen = 2 * math.pi / theta
            lo, hi = self.low_freq_factor, self.high_freq_factor
            scaled = torch.where(wavelen > L0 / lo, theta / s, theta)
            g = (L0 / wavelen - lo) / (hi - lo)
            medium = (wavelen >= L0 / hi) & (wavelen <= L0 / lo)
            theta = torch.where(medium, (1 - g) * scaled / s + g * scaled, scaled)
        if self.scaling == "yarn":
            def corr(turns):       # the dimension whose wavelength makes ``turns`` turns in L0
                return d * math.log(L0 / (turns * 2 * math.pi)) / (2 * math.log(base))
            lo, hi = corr(self.beta_fast), corr(self.beta_slow)
            if self.truncate:
                lo, hi = math.floor(lo), math.ceil(hi)
            lo, hi = max(lo, 0), min(hi, d - 1)
            if lo == hi:
                hi += 0.001
            ramp = ((torch.arange(d // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
            keep = 1 - ramp                                 # 1: extrapolate (keep θ_i)
            theta = theta / s * (1 - keep) + theta * keep
        return theta.float()

    def dims(self, e: int, device, seq_len: int | None = None) -> tuple[int, Tensor]:
        """(rotary_dim, θ) for heads of size e: head_dim as configured; a mixer whose q/k have
        another size (e.g. GAU's shared qk) gets the same settings resolved for that size.
        ``dynamic`` recomputes θ for the call's length ``seq_len``."""
        if self.scaling == "dynamic":
            r = self.rotary_dim if e == self.head_dim else resolve_rotary_dim(e, self.rotary_spec)
            return r, self.frequencies(r, seq_len).to(device)
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

    def apply(self, x: Tensor, positions: Tensor, scale=None, seq_len: int | None = None) -> Tensor:
        """Rotate x (B, h, n, e) at positions (B, n). ``scale``: optional callable
        rotary_dim -> per-frequency factors (B, n, d/2) (xPos); ``seq_len``: the call's length
        (dynamic scaling; default max(positions) + 1)."""
        if self.scaling == "dynamic" and seq_len is None:
            seq_len = int(positions.max()) + 1 if positions.numel() else 0
        d, inv_freq = self.dims(x.shape[-1], x.device, seq_len)
        ang = self.angles(positions, inv_freq)                         # (B, n, d/2)
        cos = self.expand(ang.cos()).unsqueeze(1)                      # (B, 1, n, d)
        sin = self.expand(ang.sin()).unsqueeze(1)
        if self.attention_factor != 1.0:                               # YaRN: q, k each × √(1/t)
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        if scale is not None:
            s = self.expand(scale(d)).unsqueeze(1)
            cos, sin = cos * s, sin * s
        x_rot, x_pass = x[..., :d], x[..., d:]
        xf = x_rot.float()
        out = (xf * cos + self._rot(xf) * sin).to(x.dtype)
        return out if x_pass.shape[-1] == 0 else torch.cat([out, x_pass], dim=-1)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        L = None
        if self.scaling == "dynamic":       # one length for q and k: the call's largest position
            L = max(int(q_pos.max()) if q_pos.numel() else -1,
                    int(k_pos.max()) if k_pos.numel() else -1) + 1
        return self.apply(q, q_pos, seq_len=L), self.apply(k, k_pos, seq_len=L)
