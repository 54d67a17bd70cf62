"""IGLOO: random "slices" of a convolved feature map, each weighted and summed.

Paper: IGLOO: Slicing the Features Space to Represent Sequences (Sourkov, 2018), §2:
    F = Conv1D(X)                                   ∈ R^{n × C}
    z_{t,k} = Σ_{j<l} W_{k,j} · F[t − o_{k,j}, c_{k,j}] + b_k     (k = 1..K patches)
    y_t = ReLU(z_t) · W_out                         ∈ R^{d}
Each of the K "patches" is a fixed random set of l (offset, channel) entries of the feature
map, so one patch relates positions that are far apart (non-contiguous slices of the feature
space) at O(K l) cost per position instead of attention's O(n). The tables o, c are drawn once
at construction from a generator seeded by ``seed + layer`` and kept as buffers (saved in
checkpoints). Causal: o ∈ [0, window), so position t reads only t − o ≤ t; bidirectional:
o ∈ (−window, window). Entries before the start or past the end read zero.
Simplifications: the paper's layer summarises a whole sequence (one K-vector, for
classification); its return-sequence form, used here, gathers relative to every position t.
The paper's slices take whole rows (all C channels of a position); here each gathered entry has
its own random channel, as in its "slicing the feature space" (set ``full_rows`` to gather all
C channels of each chosen position instead). A linear map K → d returns to the model width.
Padding tokens are zeroed in X and F, so real tokens read them as the zeros before the start.
Complexity: O(n (k C d + K l + K d)) time, O(n K l + n C) memory (k = conv kernel size).
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
    equation="§2: z_{t,k} = Σ_j W_{k,j} F[t − o_{k,j}, c_{k,j}] + b_k, F = Conv1D(X); "
             "y = ReLU(z) W_out",
    complexity=("O(n (k C d + K l + K d))", "O(n K l + n C)"),
    test="tests/papers/test_mlp_igloo.py::test_igloo_equals_slow_loop_of_the_equation",
    tiny={"patches": 6, "patch_size": 3, "channels": 8, "window": 8})
class Igloo(Mixer):
    """Conv1D features, then K fixed random non-contiguous patches weighted and summed."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=True, flat_grid=False,
                        grid=False, text=True)

    def __init__(self, d_model: int, patches: int = 64, patch_size: int = 4,
                 channels: int | None = None, kernel: int = 3, window: int | None = None,
                 full_rows: bool = False, seed: int = 0, causal: bool = False,
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
        if self.causal:                                             # t − o ≤ t
            off = torch.randint(0, w, (K, l), generator=g)
        else:                                                       # o ∈ (−w, w)
            off = torch.randint(-(w - 1), w, (K, l), generator=g)
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
        f = self.conv(h).transpose(1, 2)                                        # (B, n, C)
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
        return self.out_proj(F.relu(z)), state
