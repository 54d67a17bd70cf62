"""ChunkFormer: multi-stage chunked attention for long sequences.

Paper: ChunkFormer: Learning Long Time Series with Multi-stage Chunked Transformer (Ju et al.,
2021): the sequence is split into non-overlapping chunks and attention runs inside each chunk;
successive stages of the network use growing chunk sizes (s_1 < s_2 < …), so early layers learn
local patterns and later ones wider context, without changing the sequence length.
Here ``chunks = (s_1, …, s_S)`` lists the stage chunk sizes and layer l of L uses stage
⌊l·S/L⌋ (equal groups of layers per stage). Within a chunk attention is full (bidirectional) or
causal. Chunks start at the first real token (left padding is packed away), decode steps attend
within the current chunk of the KV cache.
Complexity: time O(n s d) per layer with chunk size s; memory O(n s).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import left_pack, take, unpack
from ...registry import MIXERS
from ..base import Supports
from .positional import PositionalAttention, dense_masked_attention


@MIXERS.register(
    "chunkformer", paper="ChunkFormer: Learning Long Time Series with Multi-stage Chunked "
                         "Transformer (Ju et al., 2021)",
    equation="stage s: y = Concat_c softmax(Q_c K_cᵀ/√d) V_c over chunks c of size s_s; "
             "layer l of L runs stage ⌊l·S/L⌋ (chunk sizes grow with depth)",
    complexity=("O(n s d)", "O(n s)"),
    test="tests/papers/test_attention_chunkformer.py::test_chunkformer_one_stage_matches_block_diagonal_reference",
    tiny={"heads": 2, "chunks": [4, 8]})
class ChunkFormerAttention(PositionalAttention):
    """Attention inside non-overlapping chunks whose size grows stage by stage with depth."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, chunks: list | tuple = (64, 256),
                 layer: int = 0, n_layers: int = 1):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        chunks = [chunks] if isinstance(chunks, int) else list(chunks)
        if not chunks or any(int(c) < 1 for c in chunks):
            raise ConfigError("mixer.chunks", chunks, why="need a list of chunk sizes >= 1")
        self.stage = min(layer * len(chunks) // max(n_layers, 1), len(chunks) - 1)
        self.chunk = int(chunks[self.stage])

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        B, h, n, e = q.shape
        c = self.chunk
        order = left_pack(valid)                          # real tokens first: chunks start at 0
        q, k, v = (take(t, order, 2) for t in (q, k, v))
        valid = take(valid, order, 1)
        pad = (-n) % c
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        valid = F.pad(valid, (0, pad), value=False)
        N = (n + pad) // c
        blk = lambda t: t.reshape(B, h, N, c, e)          # (B, h, chunks, c, e)
        allowed = valid.view(B, 1, N, 1, c)
        if ctx.causal:
            allowed = allowed & torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        y = dense_masked_attention(blk(q), blk(k), blk(v), allowed, 1 / math.sqrt(e))
        return unpack(y.reshape(B, h, N * c, e)[:, :, :n], order, 2)

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        same = (q_pos[:, :, None] // self.chunk) == (k_pos[:, None, :] // self.chunk)
        allowed = same & valid[:, None, :]
        if ctx.causal:
            allowed &= k_pos[:, None, :] <= q_pos[:, :, None]
        return dense_masked_attention(q, k, v, allowed[:, None], 1 / math.sqrt(q.shape[-1]))
