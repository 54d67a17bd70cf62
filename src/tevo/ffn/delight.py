"""DExTra: deep, light-weight expand–reduce transformation built from group linear transforms.

Paper: DeLighT: Deep and Light-weight Transformer (Mehta, Ghazvininejad, Iyer, Zettlemoyer &
Hajishirzi, 2021), §3.1, eqs. 1–2 and Fig. 1(c):
    Y^1 = F(X, W^1, b^1, g^1);   Y^l = F(H(X, Y^{l−1}), W^l, b^l, g^l)   (l = 2..N)
F is a group linear transformation (GLT): the input is split into g^l groups, each mapped by
its own matrix (parameters Σ d_in·d_out/g instead of d_in·d_out), with feature shuffling
across groups; H is the input mixer: X and Y^{l−1} are each split into g^l groups and the
matching groups are concatenated, so every layer sees the input again. The first ⌈N/2⌉ layers
expand linearly from d_m to w_m·d_m with groups g^l = min(2^l, g_max) (the reference code's
schedule), the rest mirror them back to d_o. Each GLT but the last is followed by GELU.
Here DExTra is an FFN (d_o = d_model by default): in the DeLighT block it precedes a
single-head attention, whose light FFN is then a plain ``mlp`` with ``mult: 0.25``.
Complexity: O(n Σ_l d_in^l d_out^l / g^l) time, O(n w_m d_m) memory.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import FFNS, Option
from .activations import activation as build_activation


class GroupLinear(nn.Module):
    """y = concat_g(x_g W_g + b_g): g independent (d_in/g → d_out/g) maps, optional shuffle."""

    def __init__(self, d_in: int, d_out: int, groups: int, bias: bool = True,
                 shuffle: bool = False):
        super().__init__()
        if d_in % groups or d_out % groups:
            raise ConfigError("ffn.groups", groups,
                              why=f"dimensions {d_in}→{d_out} are not divisible by {groups} groups")
        self.groups, self.d_in, self.d_out, self.shuffle = groups, d_in, d_out, shuffle
        self.weight = nn.Parameter(torch.empty(groups, d_in // groups, d_out // groups))
        self.bias = nn.Parameter(torch.zeros(groups, d_out // groups)) if bias else None
        self.init_weights()

    def init_weights(self) -> None:
        for g in range(self.groups):                           # Xavier per group (reference)
            nn.init.xavier_uniform_(self.weight.data[g])
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:                    # (..., d_in) -> (..., d_out)
        lead = x.shape[:-1]
        xg = x.reshape(-1, self.groups, self.d_in // self.groups)          # (T, g, d_in/g)
        y = torch.einsum("tgi,gio->tgo", xg, self.weight.to(x.dtype))     # (T, g, d_out/g)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if self.shuffle and self.groups > 1:                  # feature shuffle (ShuffleNet)
            y = y.transpose(1, 2)                              # (T, d_out/g, g)
        return y.reshape(*lead, self.d_out)


def input_mixer(x: Tensor, y: Tensor, groups: int) -> Tensor:
    """H(X, Y): split X and Y into ``groups`` groups each and concatenate matching groups."""
    lead = x.shape[:-1]
    xg = x.reshape(*lead, groups, -1)
    yg = y.reshape(*lead, groups, -1)
    return torch.cat([xg, yg], dim=-1).reshape(*lead, -1)     # (..., d_x + d_y)


def dextra_schedule(d_in: int, d_out: int, width_mult: float, depth: int,
                    max_groups: int) -> list[tuple[int, int, int]]:
    """(d_in, d_out, groups) of each GLT layer: expand d_in → w_m·d_in in ⌈N/2⌉ layers with
    groups min(2^l, g_max), then mirror back to d_out (DeLighT §3.1, reference config)."""
    if depth < 2:
        raise ConfigError("ffn.depth", depth, why="DExTra needs at least 2 layers")
    if d_in % max_groups:
        raise ConfigError("ffn.max_groups", max_groups,
                          why=f"d_model={d_in} is not divisible by max_groups={max_groups}")
    mid = math.ceil(depth / 2)
    groups = [min(2 ** (i + 1), max_groups) for i in range(mid)]
    sizes = np.linspace(d_in, width_mult * d_in, mid).astype(int).tolist()
    if depth % 2 == 0:
        groups, sizes = groups + groups[::-1], sizes + sizes[::-1]
    else:
        groups, sizes = groups + groups[::-1][1:], sizes + sizes[::-1][1:]
    layers, inp = [], d_in
    for i in range(depth):
        if i == depth - 1:
            out = d_out
        else:                                # divisible by this and the next layer's groups
            m = math.lcm(groups[i], groups[i + 1])
            out = m * math.ceil(sizes[i] / m)
        if out % groups[i]:
            raise ConfigError("ffn.max_groups", max_groups,
                              why=f"output size {out} is not divisible by {groups[i]} groups")
        layers.append((inp, out, groups[i]))
        inp = out + d_in                     # the input mixer concatenates X back in
    return layers


@FFNS.register(
    "delight", paper="DeLighT: Deep and Light-weight Transformer (Mehta et al., 2021)",
    equation="eqs. 1–2: Y^1 = F(X, W^1, b^1, g^1); Y^l = F(H(X, Y^{l−1}), W^l, b^l, g^l), "
             "F = group linear + shuffle, H = input mixer, expand d_m → w_m d_m → d_o",
    complexity=("O(n Σ_l d_in d_out / g)", "O(n w_m d)"),
    test="tests/papers/test_ffn_delight.py::test_dextra_matches_its_equations",
    tiny={"depth": 4, "max_groups": 4})
class DExTra(nn.Module):
    """DExTra expand–reduce stack of group linear transforms with input mixing."""

    options = {"width_mult": Option(gt=0), "depth": Option(ge=1), "max_groups": Option(ge=1)}

    def __init__(self, d_model: int, width_mult: float = 2.0, depth: int = 4,
                 max_groups: int = 8, d_out: int | None = None, activation: str = "gelu",
                 shuffle: bool = True, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.schedule = dextra_schedule(d_model, d_out or d_model, width_mult, depth, max_groups)
        self.layers = nn.ModuleList(GroupLinear(i, o, g, bias, shuffle)
                                    for i, o, g in self.schedule)
        self.act = build_activation(activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:                    # (B, n, d) -> (B, n, d_o)
        y = self.layers[0](x)
        for glt in self.layers[1:]:
            y = self.drop(self.act(y))
            y = glt(input_mixer(x, y, glt.groups))
        return y
