"""The 2-D token grid of an image model: tokens in row-major order, (B, H·W, d) ↔ (B, H, W, d).

``MixerContext.grid`` = (height, width) is set by the image model; a mixer built for a fixed
grid (a learned filter of that size) receives it at construction as ``grid=(h, w)``.
"""
from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError, InputError


def check_grid_option(grid, name: str) -> tuple[int, int] | None:
    """``grid`` option → (h, w) or None; a one-line ConfigError otherwise."""
    if grid is None:
        return None
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2
            and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
        raise ConfigError(f"mixer({name}).grid", grid, why="expected [height, width] >= 1")
    return int(grid[0]), int(grid[1])


def grid_shape(x: Tensor, ctx_grid, fallback=None, name: str = "mixer") -> tuple[int, int]:
    """(H, W) of x (B, n, d): the context's grid, else ``fallback`` (the grid built for), else
    (1, n) when ``fallback`` is "1d" (a 1-D sequence read as one row)."""
    n = x.shape[1]
    g = ctx_grid if ctx_grid is not None else fallback
    if g == "1d":
        g = (1, n)
    if g is None:
        raise InputError(f"mixer {name!r} needs a 2-D token grid (ctx.grid); it runs in an "
                         f"image model")
    H, W = int(g[0]), int(g[1])
    if H * W != n:
        raise InputError(f"mixer {name!r}: {n} tokens are not a {H}×{W} grid")
    return H, W


def to_grid(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, H·W, d) → (B, H, W, d)."""
    return x.reshape(x.shape[0], hw[0], hw[1], x.shape[-1])


def from_grid(x: Tensor) -> Tensor:
    """(B, H, W, d) → (B, H·W, d)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])
