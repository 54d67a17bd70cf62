"""Randomized positional encodings: train on positions sampled from a longer range.

Paper: Randomized Positional Encodings Boost Length Generalization of Transformers (Ruoss et
al., 2023): for a training sequence of length n, draw n distinct positions uniformly from
{0, …, L-1} (L ≫ n, larger than any test length), sort them, and give them to any position
encoding in place of 0..n-1; at evaluation use the plain positions 0..n-1 (as specified for
tevo) so decoding stays deterministic. The encoding that receives the positions is ``base``
(sinusoidal, rope, alibi, learned, …).
One sample serves a whole forward pass: it is drawn when the model calls ``embed`` (before any
layer) and every ``rotate``/``bias`` call of that pass maps its positions through it, so all
layers and all hooks see the same random positions. Each batch row gets its own sample.
Declared hooks: the class accepts {input, qk, bias} so that config validation checks the
widest case; an instance uses ``input`` plus its base's hooks.
Complexity: O(B·L log L) per training forward for the sample, plus the base's cost.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..registry import POSITIONS, split_spec
from .base import PositionEncoding


@POSITIONS.register(
    "randomized", paper="Randomized Positional Encodings Boost Length Generalization of "
                        "Transformers (Ruoss et al., 2023)",
    equation="training positions = sort(sample_without_replacement({0..L-1}, n)); "
             "evaluation positions = 0..n-1",
    complexity=("O(L log L) + base", "O(L) + base"),
    test="tests/papers/test_positions_randomized.py::"
         "test_randomized_samples_sorted_positions_in_training_plain_in_eval",
    tiny={"base": "rope", "max_position": 256})
class RandomizedPosition(PositionEncoding):
    """Wraps a base encoding; training positions are a sorted random subset of [0, L)."""

    hooks = frozenset({"input", "qk", "bias"})

    def __init__(self, d_model: int, max_len: int = 1024, heads: int = 4,
                 head_dim: int | None = None, base="sinusoidal", max_position: int | None = None):
        super().__init__()
        name, _ = split_spec(base, "position.base")
        if name == "randomized":
            raise ConfigError("position.base", name, why="randomized cannot wrap itself")
        self.max_position = 4 * max_len if max_position is None else int(max_position)
        if self.max_position < max_len:
            raise ConfigError("position.max_position", max_position,
                              why=f"must be >= max_len={max_len} (the range positions are "
                                  f"drawn from)")
        head_dim = d_model // heads if head_dim is None else head_dim
        self.base = POSITIONS.build(base, "position.base", d_model=d_model,
                                    max_len=self.max_position, heads=heads, head_dim=head_dim)
        extra = set(self.base.hooks) - {"input", "qk", "bias"}
        if extra:
            raise ConfigError("position.base", name, why=f"randomized cannot wrap hooks "
                                                         f"{sorted(extra)}")
        self.hooks = frozenset({"input"}) | self.base.hooks
        self.translation_invariant = getattr(self.base, "translation_invariant", False)
        self.max_len = getattr(self.base, "max_len", None)     # a table limit, if the base has one
        self.token_init_std = getattr(self.base, "token_init_std", None)   # sinusoidal's d^-1/2
        self._sample: Tensor | None = None

    def draw(self, positions: Tensor) -> Tensor:
        """A sorted sample of distinct positions per batch row: (B, max(positions) + 1)."""
        B = positions.shape[0]
        m = int(positions.max()) + 1 if positions.numel() else 1
        if m > self.max_position:
            raise InputError(f"position {m - 1} is past randomized's range "
                             f"(max_position={self.max_position})")
        keys = torch.rand(B, self.max_position, device=positions.device)
        return keys.topk(m, dim=-1).indices.sort(-1).values          # (B, m)

    def map(self, positions: Tensor) -> Tensor:
        """Training: positions through this pass's sample; evaluation: unchanged."""
        if not self.training:
            return positions
        if self._sample is None:
            raise RuntimeError("randomized: embed() draws the positions of a forward pass; call "
                               "it before the mixers (the models do)")
        s = self._sample
        if int(positions.max()) >= s.shape[1]:
            raise RuntimeError("randomized: positions beyond this pass's sample")
        if s.shape[0] != positions.shape[0]:
            s = s[:1].expand(positions.shape[0], -1)
        return torch.gather(s, 1, positions)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        self._sample = self.draw(positions) if self.training else None
        if "input" in self.base.hooks:
            return self.base.embed(x, self.map(positions))
        return x

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return self.base.rotate(q, k, self.map(q_pos), self.map(k_pos))

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return self.base.bias(q, k, self.map(q_pos), self.map(k_pos))
