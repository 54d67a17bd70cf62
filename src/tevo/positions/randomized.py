"""Randomized positional encodings: train on positions sampled from a longer range.

Paper: Randomized Positional Encodings Boost Length Generalization of Transformers (Ruoss et
al., 2023): for a training sequence of length n, draw n distinct positions uniformly from
{0, …, L-1} (L ≫ n, larger than any test length), sort them, and give them to any position
encoding in place of 0..n-1. The paper (§3, and the authors' code) samples at evaluation too:
a test sequence of length M gets a sorted sample of M positions from [0, L), so the model never
sees positions it was not trained on; that is the default (``eval="sample"``). Incremental
decoding cannot follow it (the sample of a length-M sequence is not known before M is), so a
cached decode step whose positions lie past its prefill's sample is an InputError naming
``eval="plain"``: the deterministic alternative that evaluates at 0..n-1 (what the base encoding
alone would do), for KV-cached generation. The encoding that receives the positions is ``base``
(sinusoidal, rope, alibi, learned, …).
One sample serves a whole forward pass: it is drawn when the model calls ``embed`` (before any
layer; in evaluation, for a pass that starts a sequence, i.e. whose first position is 0) and every ``rotate``/``bias`` call of that pass maps its positions through it, so all
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

EVAL_MODES = ("sample", "plain")


@POSITIONS.register(
    "randomized", paper="Randomized Positional Encodings Boost Length Generalization of "
                        "Transformers (Ruoss et al., 2023)",
    equation="positions = sort(sample_without_replacement({0..L-1}, n)) in training and "
             "evaluation (eval=plain: 0..n-1 at evaluation)",
    complexity=("O(L log L) + base", "O(L) + base"),
    test="tests/papers/test_positions_randomized.py::"
         "test_randomized_samples_sorted_positions_in_training_and_evaluation",
    # the conformance suite checks cached == full decoding, which needs deterministic positions
    tiny={"base": "rope", "max_position": 256, "eval": "plain"})
class RandomizedPosition(PositionEncoding):
    """Wraps a base encoding; training positions are a sorted random subset of [0, L)."""

    hooks = frozenset({"input", "qk", "bias"})

    def __init__(self, d_model: int, max_len: int = 1024, heads: int = 4,
                 head_dim: int | None = None, base="sinusoidal", max_position: int | None = None,
                 eval: str = "sample"):
        super().__init__()
        if eval not in EVAL_MODES:
            raise ConfigError("position.eval", eval, EVAL_MODES)
        self.eval_mode = eval
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

    @property
    def sampling(self) -> bool:
        return self.training or self.eval_mode == "sample"

    def map(self, positions: Tensor) -> Tensor:
        """Positions through this pass's sample (evaluation with eval="plain": unchanged)."""
        if not self.sampling:
            return positions
        if self._sample is None:
            raise RuntimeError("randomized: embed() draws the positions of a forward pass; call "
                               "it before the mixers (the models do)")
        s = self._sample
        if positions.numel() and int(positions.max()) >= s.shape[1]:
            raise RuntimeError("randomized: positions beyond this pass's sample")
        if s.shape[0] != positions.shape[0]:
            s = s[:1].expand(positions.shape[0], -1)
        return torch.gather(s, 1, positions)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if not self.sampling:
            self._sample = None
        elif self.training or not positions.numel() or int(positions.min()) == 0 \
                or self._sample is None:
            self._sample = self.draw(positions)          # a new pass / a new sequence
        elif int(positions.max()) >= self._sample.shape[1]:
            raise InputError(f"randomized positions: a cached decode step at position "
                             f"{int(positions.max())} lies past the sample drawn for its prefill "
                             f"({self._sample.shape[1]} positions); the paper's evaluation draws "
                             f"one sample per whole sequence, so decode without a cache or set "
                             f"position.eval=plain")
        if "input" in self.base.hooks:
            return self.base.embed(x, self.map(positions))
        return x

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return self.base.rotate(q, k, self.map(q_pos), self.map(k_pos))

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return self.base.bias(q, k, self.map(q_pos), self.map(k_pos))
