"""Position encodings act in up to three places, and declare which in ``hooks``:

- ``input``: ``embed(x, positions)`` combines the token embeddings x (B, n, d) with positions;
- ``qk``:    ``rotate(q, k, q_pos, k_pos)`` transforms q (B, h, n_q, e) and k (B, h', n_k, e);
- ``bias``:  ``bias(q, k, q_pos, k_pos)`` returns an additive score term (B|1, h, n_q, n_k);
- ``value``: ``values(weights, q_pos, k_pos)`` returns a term (B, h, n_q, e) added to the
  attention output, Σ_j α_ij a_ij (Shaw's relative values); only score-materialising mixers;
- ``feature``: ``features(fq, fk, q_pos, k_pos)`` transforms the feature-mapped φ(q), φ(k) of
  kernel (linear) attention, for encodings that keep the O(n) form (PermuteFormer, SPE).

One instance is shared by the model and reached by mixers through ``ctx.pos``. Positions are
absolute token positions (B, n), so a decode step at position t is encoded as t.
"""
from __future__ import annotations

from torch import Tensor, nn


class PositionEncoding(nn.Module):
    hooks: frozenset = frozenset()
    causal_only: bool = False          # e.g. NoPE: carries no position in bidirectional models
    max_len: int | None = None         # learned tables: the longest position they hold

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor):
        return q, k

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return None

    def values(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return None

    def features(self, fq: Tensor, fk: Tensor, q_pos: Tensor, k_pos: Tensor):
        return fq, fk
