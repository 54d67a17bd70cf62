"""Attention inside groups of an image's token grid: NesT blocks, Swin (shifted) windows and
CrossFormer's short/long-distance groups. One partition-and-attend routine, three groupings.

The grid (H × W, row-major, ``ctx.grid``) is cut into groups of ``window`` = (h, w) tokens, an
inner attention mixer (``inner``, default ``softmax``; Swin V2: ``cosine``) runs on every group
as its own short sequence, and the outputs go back to their places. Each group's tokens keep
their grid positions (row-major index in the full grid), so a relative position encoding such
as ``swin_cpb`` built with the grid's width sees true 2-D offsets.

- ``nest`` — Nested Hierarchical Transformer (Zhang et al., 2022), §3, eq. 1: multi-head
  self-attention within each non-overlapping b×b block, blocks processed independently. The
  paper's block aggregation (3×3 conv + LayerNorm + 3×3 max-pool between hierarchies) is the
  model's stage downsampling here (a 2×2 patch merging): a simplification.
- ``swin_window`` — Swin Transformer (Liu et al., 2021), §3.2: window attention in M×M
  windows; with ``shift`` the odd layers roll the grid by ⌊M/2⌋ first (shifted windows) and
  mask the pairs whose tokens were not neighbours before the roll (the paper's attention mask
  for the cyclic shift), then roll back.
- ``crossformer_lsda`` — CrossFormer (Wang et al., 2022), §3.2: short-distance attention
  (SDA) over adjacent G×G groups on even layers, long-distance attention (LDA) on odd layers
  over the tokens sampled with a fixed interval I = H/G (token (i, j) joins group
  (i mod I, j mod I)). The paper's cross-scale embedding (patches of several kernel sizes
  concatenated) is not built: the model's single patch embedding stands in for it.

Every one equals full attention over the grid with the mask "same group" (the paper tests).
Complexity: O(n · h·w · d) time, O(n · h·w) memory per layer (n = H·W).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.grid import check_grid_option, grid_shape
from ...registry import MIXERS, split_spec
from ..base import Mixer, Supports


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    if not (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in v)):
        raise ConfigError(name, v, why="expected an int >= 1 or [height, width]")
    return int(v[0]), int(v[1])


class GridGroupAttention(Mixer):
    """Base: group the grid, attend within groups with the inner mixer, ungroup."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk", "bias"}), padding=False,
                        grid=True, text=False)
    option = "window"

    def __init__(self, d_model: int, window: int | list = 2, heads: int = 4,
                 inner: str | dict = "softmax", grid=None, layer: int = 0, dropout: float = 0.0):
        super().__init__()
        name = type(self).registry_name
        self.window = _pair(window, f"mixer({name}).{self.option}")
        self.layer = int(layer)
        spec_name, kw = split_spec(inner, f"mixer({name}).inner")
        sup = MIXERS.get(spec_name, f"mixer({name}).inner").supports
        if sup.grid or not sup.bidirectional:
            raise ConfigError(f"mixer({name}).inner", spec_name, ["softmax", "cosine"],
                              why="the attention inside each group runs on a plain sequence")
        kw.setdefault("heads", heads)
        self.inner = MIXERS.build({"name": spec_name, **kw}, f"mixer({name}).inner",
                                  d_model=d_model, causal=False, dropout=dropout)
        self.grid = check_grid_option(grid, name)
        if self.grid is not None:
            self.check_grid(*self.grid)

    def check_grid(self, h: int, w: int) -> None:
        name, (a, b) = type(self).registry_name, self.window
        if a > h or b > w:
            raise ConfigError(f"mixer({name}).{self.option}", list(self.window),
                              why=f"a {a}×{b} {self.option} is larger than the {h}×{w} grid")
        if h % a or w % b:
            raise ConfigError(f"mixer({name}).{self.option}", list(self.window),
                              why=f"a {a}×{b} {self.option} does not tile the {h}×{w} grid")

    # -- the grouping: a permutation of the grid into (groups, tokens per group) ----------------
    def groups(self, H: int, W: int, device) -> Tensor:
        """(G, h·w) row-major grid indices of each group's tokens."""
        raise NotImplementedError

    def pair_mask(self, idx: Tensor, H: int, W: int) -> Tensor | None:
        """(G, t, t) True = may attend (None: every pair within a group)."""
        return None

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        H, W = grid_shape(x, ctx.grid, self.grid, type(self).registry_name)
        self.check_grid(H, W)
        B, n, d = x.shape
        idx = self.groups(H, W, x.device)                                 # (G, t)
        G, t = idx.shape
        xs = x[:, idx.reshape(-1)].reshape(B * G, t, d)                    # (B·G, t, d)
        pos = idx.unsqueeze(0).expand(B, G, t).reshape(B * G, t)          # grid positions
        mask = self.pair_mask(idx, H, W)
        am = None if mask is None else mask.unsqueeze(0).expand(B, G, t, t).reshape(B * G, t, t)
        sub = MixerContext(causal=False, positions=pos, pos=ctx.pos, attn_mask=am,
                           grid=None, aux=ctx.aux, layer=ctx.layer, n_layers=ctx.n_layers)
        ys, _ = self.inner(xs, sub)
        y = ys.new_empty(B, n, d)                                         # (autocast: ys's dtype)
        y[:, idx.reshape(-1)] = ys.reshape(B, G * t, d)
        return y, state


def _blocks(H: int, W: int, a: int, b: int, device) -> Tensor:
    """Adjacent a×b blocks: (H/a · W/b, a·b) indices."""
    g = torch.arange(H * W, device=device).view(H // a, a, W // b, b)
    return g.permute(0, 2, 1, 3).reshape(-1, a * b)


@MIXERS.register(
    "nest", paper="Nested Hierarchical Transformer: Towards Accurate, Data-Efficient and "
                  "Interpretable Visual Understanding (Zhang et al., 2022)",
    equation="§3 eq. 1: MSA within each non-overlapping block; blocks independent",
    complexity=("O(n b² d)", "O(n b²)"),
    test="tests/papers/test_attention_grid_window.py::test_groups_equal_masked_full_attention",
    tiny={"window": [3, 2], "heads": 2})
class NestBlockAttention(GridGroupAttention):
    """Self-attention within non-overlapping blocks of the grid (NesT's local attention)."""

    def groups(self, H, W, device):
        return _blocks(H, W, *self.window, device)


@MIXERS.register(
    "swin_window", paper="Swin Transformer: Hierarchical Vision Transformer using Shifted "
                         "Windows (Liu et al., 2021)",
    equation="§3.2: W-MSA in M×M windows; odd layers SW-MSA: roll by M/2, mask, roll back",
    complexity=("O(n M² d)", "O(n M²)"),
    test="tests/papers/test_attention_grid_window.py::test_groups_equal_masked_full_attention",
    tiny={"window": [3, 2], "heads": 2})
class SwinWindowAttention(GridGroupAttention):
    """(Shifted) window attention: W-MSA on even layers, SW-MSA on odd ones when ``shift``."""

    def __init__(self, d_model: int, window: int | list = 2, heads: int = 4,
                 inner: str | dict = "softmax", grid=None, layer: int = 0, dropout: float = 0.0,
                 shift: bool = True):
        super().__init__(d_model, window, heads, inner, grid, layer, dropout)
        if not isinstance(shift, bool):
            raise ConfigError("mixer(swin_window).shift", shift, why="expected true or false")
        self.shifted = shift and self.layer % 2 == 1

    def offset(self, H: int, W: int) -> tuple[int, int]:
        a, b = self.window
        if not self.shifted or (a == H and b == W):     # one window: nothing to shift (Swin)
            return 0, 0
        return a // 2, b // 2

    def groups(self, H, W, device):
        sa, sb = self.offset(H, W)
        g = torch.arange(H * W, device=device).view(H, W)
        g = torch.roll(g, (-sa, -sb), (0, 1))             # the rolled grid's original indices
        a, b = self.window
        return g.view(H // a, a, W // b, b).permute(0, 2, 1, 3).reshape(-1, a * b)

    def pair_mask(self, idx, H, W):
        sa, sb = self.offset(H, W)
        if not (sa or sb):
            return None
        a, b = self.window
        # the paper's regions: rows [0, H−a), [H−a, H−sa), [H−sa, H) in rolled coordinates,
        # the same for columns; a pair may attend when both tokens lie in one region
        rows = torch.zeros(H, dtype=torch.long, device=idx.device)
        rows[H - a:] = 1
        rows[H - sa:] = 2
        cols = torch.zeros(W, dtype=torch.long, device=idx.device)
        cols[W - b:] = 1
        cols[W - sb:] = 2
        region = (rows[:, None] * 3 + cols[None, :])                   # rolled coordinates
        region = torch.roll(region, (sa, sb), (0, 1)).reshape(-1)      # at original indices
        r = region[idx]                                                # (G, t)
        return r[:, :, None] == r[:, None, :]


@MIXERS.register(
    "crossformer_lsda", paper="CrossFormer: A Versatile Vision Transformer Hinging on "
                              "Cross-scale Attention (Wang et al., 2022)",
    equation="§3.2: SDA over adjacent G×G groups (even layers), LDA over tokens at interval "
             "I = H/G (odd layers)",
    complexity=("O(n G² d)", "O(n G²)"),
    test="tests/papers/test_attention_grid_window.py::test_groups_equal_masked_full_attention",
    tiny={"group": [3, 2], "heads": 2})
class LongShortDistanceAttention(GridGroupAttention):
    """CrossFormer's LSDA: adjacent groups, then groups of tokens a fixed interval apart."""

    option = "group"

    def __init__(self, d_model: int, group: int | list = 2, heads: int = 4,
                 inner: str | dict = "softmax", grid=None, layer: int = 0, dropout: float = 0.0,
                 long: bool | None = None):
        super().__init__(d_model, group, heads, inner, grid, layer, dropout)
        if long is not None and not isinstance(long, bool):
            raise ConfigError("mixer(crossformer_lsda).long", long,
                              why="true (LDA), false (SDA) or null (alternate by layer)")
        self.long = (self.layer % 2 == 1) if long is None else long

    def groups(self, H, W, device):
        a, b = self.window
        if not self.long:
            return _blocks(H, W, a, b, device)
        Ia, Ib = H // a, W // b                              # the sampling interval
        g = torch.arange(H * W, device=device).view(a, Ia, b, Ib)   # i = p·Ia + r
        return g.permute(1, 3, 0, 2).reshape(Ia * Ib, a * b)        # group (r_i, r_j)
