"""The mixer contract: ``y, state = mixer(x, ctx, state=None)``.

x: (B, n, d) → y: (B, n, d). ``state`` is the mixer's own incremental state (KV cache, running
sums, hidden vector, ring buffer); the returned state continues exactly where x ended, so a
prefill followed by single-token steps equals one full pass. ``None`` = no incremental use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from ..nn.context import MixerContext


@dataclass(frozen=True)
class Supports:
    """What a mixer can do; config validation, the conformance suite and the benchmarks read it.

    causal:        has a causal (autoregressive) form.
    bidirectional: has a bidirectional form.
    cross:         can attend to ``ctx.context`` (encoder–decoder cross-attention).
    cache:         has an incremental form (``init_state`` + state in/out), for decoding.
    positions:     position-encoding hooks it accepts: subset of {"input", "qk", "bias"}.
    padding:       honours ``ctx.key_padding_mask`` (real tokens unaffected by padding).
    batch_independent: sample b's output depends only on sample b (False for e.g. batch-norm).
    fixed_length:  needs n <= a length fixed at construction (learned token-mixing matrices).
    grid:          reads the 2-D token grid (``ctx.grid``: height, width, row-major tokens);
                   fits an image model.
    flat_grid:     order-free over its tokens, so it fits an image model's flattened grid as
                   it is (ViT's attention).
    text:          works on a 1-D sequence with no grid (text); False: image models only.
    """

    causal: bool = True
    bidirectional: bool = True
    cross: bool = False
    cache: bool = False
    positions: frozenset = field(default_factory=lambda: frozenset({"input"}))
    padding: bool = True
    batch_independent: bool = True
    fixed_length: bool = False
    grid: bool = False
    flat_grid: bool = False
    text: bool = True

    @property
    def image(self) -> bool:
        """Fits an image model (a 2-D token grid)."""
        return self.grid or self.flat_grid

    def as_dict(self) -> dict:
        d = asdict(self)
        d["positions"] = sorted(self.positions)
        return d


class Mixer(nn.Module):
    """Base class of every token mixer."""

    supports = Supports()

    def forward(self, x: Tensor, ctx: MixerContext, state=None):  # pragma: no cover
        raise NotImplementedError

    def init_state(self, batch: int, device=None, dtype=None):
        """An empty incremental state (mixers with ``supports.cache``)."""
        raise NotImplementedError(f"{type(self).__name__} has no incremental form")
