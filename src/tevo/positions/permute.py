"""PermuteFormer: relative position encoding for linear attention by feature permutation.

Paper: PermuteFormer: Efficient Relative Position Encoding for Long Sequences (Chen, 2021)
(reference cpcp1998/PermuteFormer, ``expand_permutation``):
    φ(q_i) -> P_π^i φ(q_i),   φ(k_j) -> P_π^j φ(k_j),
with π a fixed random permutation of the feature dimension per head. Permutation matrices are
orthogonal, so  (P^i φ(q_i))·(P^j φ(k_j)) = φ(q_i)·P^{j-i} φ(k_j)  depends only on j - i, and
permuting keeps features non-negative, so the linear-attention normaliser stays positive and the
O(n) recurrent form is unchanged: this is why it fits kernel attention (``feature`` hook).
π^p for any position p is read off the cycles of π (no table of max_len powers): an element at
offset o of a cycle of length c goes to the element at offset (o + p) mod c.
Permutations come from a seeded generator (0xdeadbeefdeadbeef as in the reference), one per
key/value head, so they are the same in every layer and are rebuilt, not stored.
The reference's per-head decay (language_model/permute: q_i ·= r_h^i, k_j ·= r_h^{-j} with
r_h = sigmoid(3h/H + 2) ∈ [0.88, 0.99], so scores carry r_h^{i-j}) is ``decay=True``. Written as
factors on φ(q), φ(k) it overflows fp32 past ~700 positions for the smallest r_h (the reference
trains on short windows), so here it is the equivalent decay of the causal kernel-attention
state, S_t = r_h S_{t-1} + φ(k_t) v_tᵀ (``state_log_decay``, read by ``KernelAttention``): exact
at any length and in every form. It is off by default: mixers without a decaying state
(the delta-rule fast weights) and bidirectional attention refuse it in one line.
Complexity: time O(n m) for the gather, memory O(n m); no parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding

SEED = 0xdeadbeefdeadbeef


def random_permutations(heads: int, dim: int, seed: int = SEED) -> Tensor:
    """(heads, dim): one torch.randperm per head from a generator seeded like the reference."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.stack([torch.randperm(dim, generator=g) for _ in range(heads)])


def cycle_tables(perm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For perms (H, m): members (H, m) (each cycle listed in π-order, cycles concatenated), and
    per element f its cycle start, offset in the cycle and cycle length, each (H, m)."""
    H, m = perm.shape
    members = torch.empty(H, m, dtype=torch.long)
    start = torch.empty(H, m, dtype=torch.long)
    offset = torch.empty(H, m, dtype=torch.long)
    length = torch.empty(H, m, dtype=torch.long)
    p = perm.tolist()
    for h in range(H):
        seen, pos = [False] * m, 0
        for f0 in range(m):
            if seen[f0]:
                continue
            cyc, f = [], f0
            while not seen[f]:
                seen[f] = True
                cyc.append(f)
                f = p[h][f]
            for o, f in enumerate(cyc):
                members[h, pos + o] = f
                start[h, f], offset[h, f], length[h, f] = pos, o, len(cyc)
            pos += len(cyc)
    return members, start, offset, length


@POSITIONS.register(
    "permute", paper="PermuteFormer: Efficient Relative Position Encoding for Long Sequences "
                     "(Chen, 2021)",
    equation="φ(q_i) -> P_π^i φ(q_i), φ(k_j) -> P_π^j φ(k_j); "
             "(P^i a)·(P^j b) = a·P^{j-i} b",
    complexity=("O(n m)", "O(n m)"),
    test="tests/papers/test_positions_permute.py::test_permute_matches_reference_and_is_relative",
    tiny={})
class PermutePosition(PositionEncoding):
    """Position-dependent feature permutation π^pos of φ(q), φ(k) for kernel attention."""

    hooks = frozenset({"feature"})
    translation_invariant = True

    def __init__(self, seed: int = SEED, decay: bool = False):
        super().__init__()
        self.seed, self.decay = int(seed), bool(decay)
        self._tables: dict = {}

    def state_log_decay(self, heads: int) -> Tensor | None:
        """log r_h per head (h,), r_h = sigmoid(3h/H + 2) as in the reference; None without
        ``decay``."""
        if not self.decay:
            return None
        return F.logsigmoid(torch.arange(heads, dtype=torch.float32) / heads * 3 + 2)

    def tables(self, heads: int, dim: int, device) -> tuple[Tensor, ...]:
        key = (heads, dim, str(device))
        if key not in self._tables:
            perm = random_permutations(heads, dim, self.seed)
            self._tables[key] = tuple(t.to(device) for t in cycle_tables(perm))
        return self._tables[key]

    def power_index(self, heads: int, dim: int, positions: Tensor) -> Tensor:
        """(B, n) positions -> (B, heads, n, dim) index with idx[..., f] = π^pos(f)."""
        members, start, offset, length = self.tables(heads, dim, positions.device)
        p = positions[:, None, :, None]                                  # (B, 1, n, 1)
        k = start[None, :, None, :] + (offset[None, :, None, :] + p) % length[None, :, None, :]
        B, n = positions.shape
        return torch.gather(members[None, :, None, :].expand(B, -1, n, -1), 3, k)

    def features(self, fq: Tensor, fk: Tensor, q_pos: Tensor, k_pos: Tensor):
        h, h_kv, m = fq.shape[1], fk.shape[1], fq.shape[-1]
        if fk.shape[-1] != m or h % h_kv:
            raise ConfigError("position", "permute",
                              why=f"query/key features must share their size and heads must be a "
                                  f"multiple of key heads, got {tuple(fq.shape)} and "
                                  f"{tuple(fk.shape)}")
        if q_pos.numel() and int(torch.minimum(q_pos.min(), k_pos.min())) < 0:
            raise ConfigError("position", "permute", why="positions must be >= 0")
        ik = self.power_index(h_kv, m, k_pos)                             # (B, h_kv, n_k, m)
        iq = self.power_index(h_kv, m, q_pos).repeat_interleave(h // h_kv, dim=1)
        return torch.gather(fq, 3, iq), torch.gather(fk, 3, ik)
