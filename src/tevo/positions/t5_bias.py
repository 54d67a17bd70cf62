"""T5 relative position bias: a learned scalar per head and log-spaced distance bucket.

Paper: Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer
(Raffel et al., 2020), §2.1; bucket function from Mesh TensorFlow (also LongT5):
    score_h(i, j) += b_h[bucket(j - i)],
half of the buckets hold exact small distances, the rest log-spaced distances up to
``max_distance`` (farther ones share the last bucket). ``bidirectional`` (T5 encoder) gives
separate buckets to keys before and after the query; ``bidirectional=False`` (T5 decoder) spends
every bucket on the past (keys after the query all land in bucket 0, and are masked anyway).
The bias is added to the scores unscaled, as in T5.
Complexity: time O(n²) per head, memory O(n²); parameters num_buckets·h.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding


def t5_bucket(relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32,
              max_distance: int = 128) -> Tensor:
    """Mesh-TF ``_relative_position_bucket``: relative_position = key - query (any int shape)
    -> bucket ids in [0, num_buckets)."""
    ret = torch.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).long() * num_buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # log-spaced buckets between max_exact and max_distance (n >= max_exact here; clamp the
    # argument so that log never sees 0 on the unused branch)
    large = max_exact + (torch.log(n.float().clamp(min=1) / max_exact)
                         / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return ret + torch.where(is_small, n, large)


@POSITIONS.register(
    "t5_bias", paper="T5: Exploring the Limits of Transfer Learning with a Unified Text-to-Text "
                     "Transformer (Raffel et al., 2020); LongT5 (Guo et al., 2022)",
    equation="§2.1: score_h(i,j) += b_h[bucket(j - i)], exact buckets below num_buckets/4 "
             "(bidirectional), log-spaced up to max_distance",
    complexity=("O(n²)", "O(n²)"),
    test="tests/papers/test_positions_t5_bias.py::"
         "test_t5_buckets_match_hf_bidirectional_and_causal",
    tiny={"num_buckets": 8, "max_distance": 16})
class T5RelativeBias(PositionEncoding):
    """Learned per-head scalar bias of the bucketed relative distance (T5)."""

    hooks = frozenset({"bias"})
    translation_invariant = True

    def __init__(self, heads: int = 4, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True):
        super().__init__()
        if num_buckets < 4 or num_buckets % 2:
            raise ConfigError("position.num_buckets", num_buckets,
                              why="needs an even number of buckets >= 4")
        if max_distance <= num_buckets // 2:
            raise ConfigError("position.max_distance", max_distance,
                              why=f"must exceed num_buckets/2 = {num_buckets // 2}")
        self.heads, self.num_buckets, self.max_distance = heads, num_buckets, max_distance
        self.bidirectional = bool(bidirectional)
        self.table = nn.Embedding(num_buckets, heads)

    def buckets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        rel = k_pos[:, None, :] - q_pos[:, :, None]                     # (B, n_q, n_k) = j - i
        return t5_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if q.shape[1] != self.heads:
            raise ConfigError("position.heads", self.heads,
                              why=f"t5_bias has {self.heads} heads, the mixer {q.shape[1]}")
        return self.table(self.buckets(q_pos, k_pos)).permute(0, 3, 1, 2)  # (B, h, n_q, n_k)
