"""The context a mixer receives besides its input: what the layer does not own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class MixerContext:
    """Everything a token mixer needs from the model around it.

    causal:           the mixer must not let position t see positions > t.
    key_padding_mask: (B, n_past + n) bool, True = real token. Covers the cached keys too, so a
                      decode step sees the padding of its whole history. None = no padding.
    positions:        (B, n) absolute positions of the tokens in ``x`` (decode step t gets t).
    pos:              the model's shared PositionEncoding (or None).
    context, context_mask: encoder output (B, m, d) and its mask (B, m) for cross-attention.
    aux:              auxiliary losses, name -> list of scalar tensors, summed into the loss.
    carry:            values handed from one layer to the next (RealFormer's scores, ...).
    layer:            index of the layer being run.
    attn_mask:        (B|1, n_q, n_k) bool, True = may attend: an explicit pattern ANDed with
                      causality and padding (XLNet's two streams, Transcormer's three streams
                      run as one concatenated sequence). Mixers that honour it say so with
                      ``takes_attn_mask``; None = no extra pattern.
    grid:             (height, width) when the tokens are a 2-D grid in row-major order (an
                      image model's patches): token i sits at (row, col) = divmod(i, width).
                      None for a 1-D sequence.
    """

    causal: bool = False
    key_padding_mask: Tensor | None = None
    positions: Tensor | None = None
    pos: Any = None
    context: Tensor | None = None
    context_mask: Tensor | None = None
    aux: dict = field(default_factory=dict)
    carry: dict = field(default_factory=dict)
    layer: int = 0
    n_layers: int = 1
    attn_mask: Tensor | None = None
    grid: tuple | None = None

    def grid_coords(self, device=None) -> Tensor:
        """(H·W, 2) (row, col) of every grid token, row-major."""
        H, W = self.grid
        i = torch.arange(H * W, device=device)
        return torch.stack([torch.div(i, W, rounding_mode="floor"), i % W], -1)

    def add_aux(self, name: str, value: Tensor, weight: float = 1.0) -> None:
        self.aux.setdefault(name, []).append(value * weight)

    def aux_loss(self) -> Tensor | float:
        total = 0.0
        for vals in self.aux.values():
            for v in vals:
                total = total + v
        return total

    def query_mask(self, n: int) -> Tensor | None:
        """(B, n) mask of the tokens in x (the last n of key_padding_mask)."""
        if self.key_padding_mask is None:
            return None
        return self.key_padding_mask[:, -n:]

    def query_positions(self, x: Tensor) -> Tensor:
        """(B, n) positions of x, defaulting to 0..n-1."""
        if self.positions is not None:
            return self.positions
        B, n = x.shape[:2]
        return torch.arange(n, device=x.device).unsqueeze(0).expand(B, n)

    def replace(self, **kw) -> "MixerContext":
        d = dict(self.__dict__)
        d.update(kw)
        return MixerContext(**d)


def positions_from_mask(mask: Tensor | None, n: int, offset: Tensor | int = 0,
                        device=None) -> Tensor:
    """Positions that skip padding: real token i gets the number of real tokens before it.
    mask: (B, n_total) with the last n columns the current tokens. Returns (B, n)."""
    if mask is None:
        ar = torch.arange(n, device=device)
        if isinstance(offset, Tensor):
            return offset.view(-1, 1) + ar
        return (ar + offset).unsqueeze(0)
    pos = mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -n:]
