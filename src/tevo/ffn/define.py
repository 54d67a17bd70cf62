"""DeFINE: deep factorised input token embeddings (registry ``embedding``).

Paper: DeFINE: DEep Factorized INput Token Embeddings for Neural Sequence Modeling (Mehta,
Koncel-Kedziorski, Rastegari & Hajishirzi, 2020), §3, Fig. 2:
    e = E[u] ∈ R^n                        a small embedding table (V × n, n ≪ d_m)
    Y^1 = F(e, W^1, g^1);  Y^l = F(H(e, Y^{l−1}), W^l, g^l)      hierarchical group
                                          transformation (HGT): group linear maps whose number
                                          of groups halves level by level, g^l = g_max/2^{l−1},
                                          while the width grows linearly from n to k
    h = W_o H(e, Y^N) ∈ R^{d_m}           a final linear map to the model width
H is the split-and-mix input connection (each level sees e again); F a group linear map with
GELU. The table costs V·n instead of V·d_m parameters, so most of a large-vocabulary model's
embedding parameters disappear while the deep map keeps the representation rich.
Complexity: time O(n_tok Σ_l d_in^l d_out^l / g^l), parameters V·n + O(k²).

Use: ``tevo.build("embedding", {"name": "define", ...}, vocab_size=V, d_model=d)`` gives a
module ids (B, n) → (B, n, d). The models build their own ``nn.Embedding``; plugging DeFINE in
as a model's input embedding needs a ``model.embedding`` spec in the model config.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import EMBEDDINGS
from .activations import activation as build_activation
from .delight import GroupLinear, input_mixer


def define_schedule(n: int, k: int, depth: int, max_groups: int) -> list[tuple[int, int, int]]:
    """(d_in, d_out, groups) per HGT level: groups g_max, g_max/2, ..., ≥ 1; widths n → k."""
    if depth < 1:
        raise ConfigError("embedding.depth", depth, why="needs at least one level")
    if max_groups < 1 or max_groups & (max_groups - 1):
        raise ConfigError("embedding.max_groups", max_groups, why="must be a power of two")
    groups = [max(max_groups >> l, 1) for l in range(depth)]
    if n % groups[0]:
        raise ConfigError("embedding.d_embed", n,
                          why=f"must be divisible by max_groups={max_groups}")
    sizes = np.linspace(n, k, depth + 1).astype(int).tolist()[1:]
    layers, inp = [], n
    for i in range(depth):
        m = groups[i] if i == depth - 1 else math.lcm(groups[i], groups[i + 1])
        out = k if i == depth - 1 and k % m == 0 else m * math.ceil(sizes[i] / m)
        layers.append((inp, out, groups[i]))
        inp = out + n
    return layers


@EMBEDDINGS.register(
    "define", paper="DeFINE: DEep Factorized INput Token Embeddings for Neural Sequence "
                    "Modeling (Mehta et al., 2020)",
    equation="§3: e = E[u] ∈ R^n; HGT Y^l = F(H(e, Y^{l−1}), W^l, g^l), g^l = g_max/2^{l−1}, "
             "widths n → k; h = W_o H(e, Y^N)",
    complexity=("O(n_tok Σ_l d_in d_out / g)", "V·n + O(k²) params"),
    test="tests/papers/test_ffn_define.py::test_define_embedding_matches_its_equations")
class DefineEmbedding(nn.Module):
    """Factorised token embedding: V×n table → hierarchical group transform → d_model."""

    def __init__(self, vocab_size: int, d_model: int, d_embed: int | None = None,
                 width: int | None = None, depth: int = 3, max_groups: int = 4,
                 activation: str = "gelu", padding_idx: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        n = d_embed or max(d_model // 4, max_groups)
        k = width or d_model
        self.schedule = define_schedule(n, k, depth, max_groups)
        self.table = nn.Embedding(vocab_size, n, padding_idx=padding_idx)
        self.levels = nn.ModuleList(GroupLinear(i, o, g) for i, o, g in self.schedule)
        self.act = build_activation(activation)
        self.out = nn.Linear(self.schedule[-1][1] + n, d_model)
        self.drop = nn.Dropout(dropout)
        self.vocab_size, self.d_model = vocab_size, d_model

    def forward(self, ids: Tensor) -> Tensor:                  # (B, n) -> (B, n, d_model)
        e = self.table(ids)                                    # (B, n, d_embed)
        y = self.act(self.levels[0](e))
        for glt in self.levels[1:]:
            y = self.act(glt(input_mixer(e, y, glt.groups)))
        return self.drop(self.out(torch.cat([e, y], dim=-1)))   # H with one group = concat
