"""Swin Transformer V2 log-spaced continuous position bias (CPB).

Paper: Swin Transformer V2: Scaling Up Capacity and Resolution (Liu et al., 2022):
    B(Δx, Δy) = G(Δ̂x, Δ̂y),   Δ̂ = sign(Δ) · log2(1 + |8Δ/(W-1)|) / log2(8),
G a 2-layer MLP (2 → hidden → heads, ReLU), and the bias 16·sigmoid(G) (the released model).
The MLP is evaluated once per distinct offset and gathered, so it is continuous in the offset
and defined for offsets never seen in training (the point of the log-spacing: windows grow
between pre-training and fine-tuning).
Token positions p are laid out row-major on a grid of ``width`` columns, (p // width, p % width);
``width=None`` is the 1D case (Δy = 0). ``window`` (the paper's (pre-training) window size,
default: the grid extent max_len // width × width, or max_len in 1D) normalises the offsets.
Complexity: time O(U·hidden·h + n² h) for U distinct offsets, memory O(n² h);
parameters 3·hidden + hidden·h.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding


def log_spaced(delta: Tensor, extent: float) -> Tensor:
    """sign(Δ)·log2(1 + |8Δ/(extent-1)|)/log2(8) (extent ≤ 1: no normalisation)."""
    d = delta.float()
    if extent > 1:
        d = d / (extent - 1)
    d = d * 8
    return torch.sign(d) * torch.log2(d.abs() + 1.0) / math.log2(8)


@POSITIONS.register(
    "swin_cpb", paper="Swin Transformer V2: Scaling Up Capacity and Resolution (Liu et al., 2022)",
    equation="B(Δx,Δy) = 16·σ(MLP(sign(Δ)·log2(1+|8Δ/(W-1)|)/3))",
    complexity=("O(n² h)", "O(n² h)"),
    test="tests/papers/test_positions_swin_cpb.py::test_swin_cpb_matches_hf_swinv2_bias",
    tiny={"hidden": 16})
class SwinContinuousBias(PositionEncoding):
    """Log-spaced (Δy, Δx) offsets through a small MLP: a continuous relative bias per head."""

    hooks = frozenset({"bias"})
    translation_invariant = True    # 1D: any shift; 2D: shifts by whole rows (see the test)

    def __init__(self, max_len: int = 1024, heads: int = 4, width: int | None = None,
                 window: int | list | None = None, hidden: int = 512, scale: float = 16.0):
        super().__init__()
        if width is not None and width < 1:
            raise ConfigError("position.width", width, why="the grid width must be >= 1")
        self.heads, self.width, self.scale = heads, width, float(scale)
        if window is None:
            window = [1, max_len] if width is None else [max(max_len // width, 1), width]
        elif isinstance(window, int):
            window = [1, window] if width is None else [window, window]
        if len(window) != 2:
            raise ConfigError("position.window", window, why="expected an int or [height, width]")
        self.window = [int(w) for w in window]
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(),
                                 nn.Linear(hidden, heads, bias=False))

    def coords(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        if self.width is None:
            return torch.zeros_like(pos), pos
        return torch.div(pos, self.width, rounding_mode="floor"), pos % self.width

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads:
            raise ConfigError("position.heads", self.heads,
                              why=f"swin_cpb has {self.heads} heads, the mixer {q.shape[1]}")
        qy, qx = self.coords(q_pos)
        ky, kx = self.coords(k_pos)
        dy = qy[:, :, None] - ky[:, None, :]                            # (B, n_q, n_k), query - key
        dx = qx[:, :, None] - kx[:, None, :]
        # evaluate the MLP on a fixed grid of offsets (the window, widened only when the input
        # reaches past it), then gather: a decode step and a full pass then read the very same
        # numbers (a grid of another size would round differently in the matmul)
        hy, hx = self.window[0] - 1, self.window[1] - 1
        y0, y1 = min(int(dy.min()), -hy), max(int(dy.max()), hy)
        x0, x1 = min(int(dx.min()), -hx), max(int(dx.max()), hx)
        ys = torch.arange(y0, y1 + 1, device=q.device)
        xs = torch.arange(x0, x1 + 1, device=q.device)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1)     # (Y, X, 2)
        table = torch.stack([log_spaced(grid[..., 0], self.window[0]),
                             log_spaced(grid[..., 1], self.window[1])], -1)
        vals = self.mlp(table.to(self.mlp[0].weight.dtype)).flatten(0, 1)  # (Y·X, h)
        idx = (dy - y0) * (x1 - x0 + 1) + (dx - x0)                      # (B, n_q, n_k)
        out = vals[idx]                                                 # (B, n_q, n_k, h)
        return self.scale * torch.sigmoid(out.float()).permute(0, 3, 1, 2)
