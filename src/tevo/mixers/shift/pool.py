"""PoolFormer's token mixer: average pooling minus the identity.

Paper: MetaFormer Is Actually What You Need for Vision (Yu et al., 2022), eq. 4:
    T' = AvgPool_{K×K}(T) − T      (stride 1, padding K/2, padding not counted in the mean)
The −T cancels the block's residual, so the block adds only the neighbours' average.
No parameters. Complexity: O(n d K²) time, O(n d) memory.
1-D reading on text: a window of K tokens centred on each token (bidirectional) or the K
tokens ending at it (causal), padding tokens excluded from the mean; causal decoding keeps
the last K−1 inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.grid import from_grid, grid_shape, to_grid
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "pool", paper="MetaFormer Is Actually What You Need for Vision (Yu et al., 2022), PoolFormer",
    equation="eq. 4: T' = AvgPool(T) − T", complexity=("O(n d K²)", "O(n d)"),
    test="tests/papers/test_shift_pool.py::test_pool_is_average_pooling_minus_identity",
    tiny={"pool_size": 3})
class PoolMixer(Mixer):
    """Average of the K×K neighbourhood (K in 1-D text) minus the token itself."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}), padding=True, grid=True, text=True)

    def __init__(self, d_model: int | None = None, pool_size: int = 3, causal: bool = False):
        super().__init__()
        if not isinstance(pool_size, int) or pool_size < 1 or (pool_size % 2 == 0 and not causal):
            raise ConfigError("mixer(pool).pool_size", pool_size,
                              why="an odd integer >= 1 (the window is centred on the token)")
        self.k = pool_size

    def init_state(self, batch: int, device=None, dtype=None):
        return {"x": None, "m": None}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if ctx.grid is not None:
            hw = grid_shape(x, ctx.grid, None, "pool")
            g = to_grid(x, hw).permute(0, 3, 1, 2)                       # (B, d, H, W)
            avg = F.avg_pool2d(g, self.k, 1, self.k // 2, count_include_pad=False)
            return from_grid(avg.permute(0, 2, 3, 1)) - x, state
        B, n, d = x.shape
        mask = ctx.query_mask(n)
        m = (torch.ones(B, n, device=x.device, dtype=x.dtype) if mask is None
             else mask.to(x.dtype))
        xm = x * m.unsqueeze(-1)
        if ctx.causal:                                                  # the last K tokens
            if state is not None and state["x"] is not None:
                xm = torch.cat([state["x"], xm], 1)
                m = torch.cat([state["m"], m], 1)
            p = xm.shape[1] - n
            left = self.k - 1 - p if p < self.k - 1 else 0
            xs = F.pad(xm, (0, 0, max(left, 0), 0))
            ms = F.pad(m, (max(left, 0), 0))
            s = xs.unfold(1, self.k, 1).sum(-1)[:, -n:]                 # (B, n, d)
            c = ms.unfold(1, self.k, 1).sum(-1)[:, -n:]                 # (B, n)
            if state is not None:
                keep = self.k - 1
                state = {"x": xm[:, xm.shape[1] - keep:] if keep else xm[:, :0],
                         "m": m[:, m.shape[1] - keep:] if keep else m[:, :0]}
        else:
            r = self.k // 2
            s = F.pad(xm, (0, 0, r, r)).unfold(1, self.k, 1).sum(-1)
            c = F.pad(m, (r, r)).unfold(1, self.k, 1).sum(-1)
        avg = s / c.clamp(min=1).unsqueeze(-1)
        return avg - x, state
