"""IGLOO: random "slices" of a convolved feature map, each weighted and summed.

Paper: IGLOO: Slicing the Features Space to Represent Sequences (Sourkov, 2018), §2, and the
author's Keras layer (PATCHY_LAYER_RETURNFULLSEQ, the return-sequence form used here):
    F = LeakyReLU(Conv1D(X))                        ∈ R^{n × C}
    z_{t,k} = Σ_{j<l} Σ_c W_{k,j,c} · F[t − o_{k,j}, c] + b_k       (k = 1..K patches)
    y_t = LeakyReLU(z_t) · W_out                    ∈ R^{d}        (slope 0.1, as in the code)
Each of the K "patches" gathers l fixed random, non-contiguous slices (whole C-channel rows)
of the feature map, so one patch relates positions that are far apart at O(K l C) cost per
position instead of attention's O(n). The tables are drawn once at construction from a
generator seeded by ``seed + layer`` and kept as buffers (saved in checkpoints). Causal:
o ∈ [0, window), so position t reads only t − o ≤ t; bidirectional: o ∈ (−window, window).
The l offsets of a patch are distinct when the range allows. Slices before the start or past
the end read zero. ``full_rows=False`` gathers single (offset, channel) entries instead of
rows: W_{k,j} · F[t − o_{k,j}, c_{k,j}] with a random channel c_{k,j} per entry.
Simplifications: the offsets are relative and shared by every position (any length works, the
layer is translation equivariant), where the reference draws absolute positions ≤ t and
weights per position (a fixed length); its backbone / local "on top" patches and its 1×1-conv
residual are left out (the block's residual plays that role); a linear map K → d returns to
the model width. Padding tokens are zeroed in X and F, so real tokens read them as zeros.
Complexity: O(n (k C d + K l C + K d)) time, O(n K l C + n C) memory (k = conv kernel size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


def _pos_int(name: str, v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"mixer(igloo).{name}", v, why=f"{what}: an integer >= 1, got {v!r}")
    return v


@MIXERS.register(
    "igloo", paper="IGLOO: Slicing the Features Space to Represent Sequences (Sourkov, 2018)",
    equation="§2: z_{t,k} = Σ_j Σ_c W_{k,j,c} F[t − o_{k,j}, c] + b_k, F = LReLU(Conv1D(X)); "
             "y = LReLU(z) W_out",
    complexity=("O(n (k C d + K l C + K d))", "O(n K l C + n C)"),
    test="tests/papers/test_mlp_igloo.py::test_igloo_equals_slow_loop_of_the_equation",
    tiny={"patches": 6, "patch_size": 3, "channels": 8, "window": 8})
class Igloo(Mixer):
    """Conv1D features, then K fixed random non-contiguous patches weighted and summed."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=True, flat_grid=False,
                        grid=False, text=True)

    def __init__(self, d_model: int, patches: int = 64, patch_size: int = 4,
                 channels: int | None = None, kernel: int = 3, window: int | None = None,
                 full_rows: bool = True, seed: int = 0, causal: bool = False,
                 max_len: int = 256, layer: int = 0):
        super().__init__()
        K = _pos_int("patches", patches, "K, the number of random patches")
        l = _pos_int("patch_size", patch_size, "l, the entries gathered per patch")
        C = _pos_int("channels", d_model if channels is None else channels,
                     "C, the Conv1D feature channels")
        k = _pos_int("kernel", kernel, "the Conv1D kernel size")
        w = _pos_int("window", int(max_len) if window is None else window,
                     "how far (in positions) a patch may reach")
        if not isinstance(full_rows, bool):
            raise ConfigError("mixer(igloo).full_rows", full_rows,
                              why=f"true or false, got {full_rows!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("mixer(igloo).seed", seed, why=f"an integer, got {seed!r}")
        self.K, self.l, self.C, self.kernel, self.window = K, l, C, k, w
        self.causal, self.full_rows = bool(causal), full_rows
        self.conv = nn.Conv1d(d_model, C, k)
        g = torch.Generator().manual_seed(int(seed) + int(layer))
        lo, span = (0, w) if self.causal else (-(w - 1), 2 * w - 1)  # causal: t − o ≤ t
        if l <= span:                                               # distinct slices per patch
            off = torch.stack([torch.randperm(span, generator=g)[:l] for _ in range(K)]) + lo
        else:
            off = torch.randint(0, span, (K, l), generator=g) + lo
        chan = torch.randint(0, C, (K, l), generator=g)
        self.register_buffer("offsets", off)                        # (K, l)
        self.register_buffer("chans", chan)                         # (K, l)
        width = l * C if full_rows else l
        self.weight = nn.Parameter(torch.empty(K, width).uniform_(-1, 1) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(K))
        self.out_proj = nn.Linear(K, d_model)

    def features(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """F = Conv1D(X): (B, n, d) -> (B, n, C); causal pads on the left only."""
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        left = self.kernel - 1 if self.causal else (self.kernel - 1) // 2
        h = F.pad(x.transpose(1, 2), (left, self.kernel - 1 - left))           # (B, d, n + k − 1)
        f = F.leaky_relu(self.conv(h).transpose(1, 2), 0.1)                     # (B, n, C)
        if mask is not None:
            f = f * mask.unsqueeze(-1).to(f.dtype)
        return f

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if ctx.causal and not self.causal:
            raise InputError("igloo was built bidirectional (its patches reach forward); "
                             "build it with causal=True for a causal model")
        B, n, _ = x.shape
        f = self.features(x, ctx.query_mask(n))                                 # (B, n, C)
        f = torch.cat([f, f.new_zeros(B, 1, self.C)], 1)                       # row n = zeros
        idx = torch.arange(n, device=x.device).view(n, 1, 1) - self.offsets     # (n, K, l)
        idx = torch.where((idx >= 0) & (idx < n), idx, torch.full_like(idx, n))
        if self.full_rows:
            g = f[:, idx].flatten(-2)                                           # (B, n, K, l·C)
        else:
            g = f[:, idx, self.chans]                                           # (B, n, K, l)
        z = (g * self.weight.to(g.dtype)).sum(-1) + self.bias.to(g.dtype)       # (B, n, K)
        return self.out_proj(F.leaky_relu(z, 0.1)), state
