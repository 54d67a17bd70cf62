"""Blockwise self-attention (BlockBERT).

Paper: Blockwise Self-Attention for Long Document Understanding (Qiu et al., 2020), §3, eq. 3–4:
the sequence is split into N_b blocks; a permutation π of {0..N_b−1} makes query block i attend
only to key block π(i):
    M_π[i, j] = 1 iff π(⌊i / (L/N_b)⌋) = ⌊j / (L/N_b)⌋,
    Blockwise-Attention(Q, K, V, M_π) = softmax(QK^T/√e ⊙ M_π) V,
and different heads use different permutations (e.g. N_b = 2: the identity for some heads, the
swap (1, 0) for the others), so that the layer still sees the whole sequence.
The block length L/N_b uses each sample's real length L (padding skipped), rounded up.
Complexity: time O(n²d/N_b), memory O(n²/N_b): every block is one dense (n/N_b)² tile.
Bidirectional only (an encoder: a permuted block may lie in the future).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.blocksparse import cat_partials, index_offset, merge_partials, tile_attention
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Supports
from .pattern import PatternAttention


@MIXERS.register(
    "blockwise",
    paper="Blockwise Self-Attention for Long Document Understanding (BlockBERT; Qiu et al., 2020)",
    equation="eq. 3–4: softmax(QK^T/√e ⊙ M_π)V, M_π[i,j] = 1 iff π(⌊i/(L/N_b)⌋) = ⌊j/(L/N_b)⌋, "
             "one permutation π per group of heads",
    complexity=("O(n² d / N_b)", "O(n² / N_b)"),
    test="tests/papers/test_attention_blockwise.py::"
         "test_matches_dense_attention_with_equivalent_mask",
    tiny={"heads": 2, "n_blocks": 2})
class BlockwiseAttention(PatternAttention):
    """Block-sparse attention: head group g maps query block i to key block π_g(i)."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, n_blocks: int = 2,
                 permutations: list | None = None, head_split: list | None = None,
                 kv_heads: int | None = None, head_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, scale: float | None = None, causal: bool = False):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, scale, causal)
        nb = int(n_blocks)
        if nb < 1:
            raise ConfigError("mixer.n_blocks", n_blocks, why="n_blocks must be >= 1")
        if permutations is None:       # cyclic shifts: π_s(i) = (i + s) mod N_b, s < min(N_b, h)
            permutations = [[(i + s) % nb for i in range(nb)] for s in range(min(nb, heads))]
        perms = [list(map(int, p)) for p in permutations]
        for p in perms:
            if sorted(p) != list(range(nb)):
                raise ConfigError("mixer.permutations", p,
                                  why=f"each permutation must reorder 0..{nb - 1}")
        if head_split is None:         # heads split as evenly as possible, in order
            base, extra = divmod(heads, len(perms))
            head_split = [base + (i < extra) for i in range(len(perms))]
        head_split = [int(s) for s in head_split]
        if len(head_split) != len(perms) or sum(head_split) != heads or min(head_split) < 1:
            raise ConfigError("mixer.head_split", head_split,
                              why=f"give one positive head count per permutation "
                                  f"({len(perms)}), summing to heads={heads}")
        self.n_blocks, self.perms, self.head_split = nb, perms, head_split

    def block_of(self, p: Tensor, p0: Tensor, length: Tensor) -> Tensor:
        """Block index ⌊(p − p0) / ⌈L / N_b⌉⌋ of position p in a sample of real length L."""
        bs = (length + self.n_blocks - 1).div(self.n_blocks, rounding_mode="floor").clamp(min=1)
        return (p - p0).div(bs, rounding_mode="floor")

    def allowed(self, qp, kp, p0, length, perm: Tensor) -> Tensor:
        qb = self.block_of(qp, p0, length).clamp(0, self.n_blocks - 1)
        return perm[qb] == self.block_of(kp, p0, length)

    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        B, h, n, e = q.shape
        m, nb = k.shape[2], self.n_blocks
        length = k_valid.sum(-1)
        c = index_offset(q_pos, ctx.query_mask(n), key_offset)     # position = key index + c
        first = k_valid.long().argmax(-1)                          # first real key index
        bs = (length + nb - 1).div(nb, rounding_mode="floor").clamp(min=1)   # (B,)
        Q = -(-n // nb)                                           # ≥ every sample's block length
        slot = torch.arange(Q, device=q.device)
        blk = torch.arange(nb, device=q.device)
        # query block u of sample b: key indices first + u·bs + s, s < bs  → (B, N_b, Q)
        start = first.view(B, 1, 1) + blk.view(1, nb, 1) * bs.view(B, 1, 1)
        idx = start + slot
        inside = (slot < bs.view(B, 1, 1)) & (idx < (first + length).view(B, 1, 1))
        q_idx = torch.where(inside, idx - key_offset, -1)
        shape = (B, 1, 1, 1, 1)
        p0, lb = (first + c).view(shape), length.view(shape)
        parts, h0 = [], 0
        for perm, hs in zip(self.perms, self.head_split):
            k_idx = torch.where(inside[:, perm], idx[:, perm], -1)  # key block π(u) for block u
            sl = slice(h0, h0 + hs)
            pt = torch.tensor(perm, device=q.device)
            parts.append(tile_attention(
                q[:, sl], k[:, sl], v[:, sl], q_idx, k_idx, q_pos, k_pos, k_valid,
                allow=lambda qp, kp, pt=pt: self.allowed(qp, kp, p0, lb, pt),
                bias=self.bias_fn(ctx, heads=sl, full=(q, k, q_idx, k_idx)),
                scale=self.scale, dropout=self.attn_dropout))
            h0 += hs
        return merge_partials([cat_partials(parts)], q.dtype)
