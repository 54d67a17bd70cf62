"""Multi-query and grouped-query attention: fewer K/V heads than query heads.

Papers: Fast Transformer Decoding: One Write-Head is All You Need (Shazeer, 2019), §3 (MQA: every
query head shares one key head and one value head); GQA: Training Generalized Multi-Query
Transformer Models from Multi-Head Checkpoints (Ainslie et al., 2023), §2.2 (G groups of query
heads, one K/V head per group; G = 1 is MQA, G = h is multi-head attention).
    head_i = softmax(Q_i K_{g(i)}^T / √e) V_{g(i)},   g(i) = ⌊i·G / h⌋.
Complexity: time O(n² d) as softmax; the KV cache holds 2·n·G·e numbers instead of 2·n·h·e
(h/G times smaller), which is what makes decoding memory-bandwidth cheaper.

Both are thin subclasses of ``SoftmaxAttention``: the projections, hooks, KV cache and
``repeat_kv`` already live in ``MultiHeadAttentionBase``.
"""
from __future__ import annotations

from ...errors import ConfigError
from ...registry import MIXERS
from .softmax import SoftmaxAttention


@MIXERS.register(
    "mqa", paper="Fast Transformer Decoding: One Write-Head is All You Need (Shazeer, 2019)",
    equation="§3: head_i = softmax(Q_i K^T/√e) V with one shared K and V head",
    complexity=("O(n² d)", "O(n²) eager, O(n) fused; KV cache 2·n·e (h× smaller)"),
    test="tests/papers/test_attention_mqa.py::test_mqa_cache_is_heads_times_smaller",
    tiny={"heads": 2})
class MultiQueryAttention(SoftmaxAttention):
    """Multi-query attention: h query heads share one key/value head (KV cache h× smaller)."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, impl: str = "sdpa",
                 cross: bool = False, scale: float | None = None):
        super().__init__(d_model, heads, 1, head_dim, bias, dropout, impl, cross, scale)


@MIXERS.register(
    "gqa", paper="GQA: Training Generalized Multi-Query Transformer Models from Multi-Head "
                 "Checkpoints (Ainslie et al., 2023)",
    equation="§2.2: head_i = softmax(Q_i K_{g(i)}^T/√e) V_{g(i)}, g(i) = ⌊i·G/h⌋, G = kv_heads",
    complexity=("O(n² d)", "O(n²) eager, O(n) fused; KV cache 2·n·G·e (h/G× smaller)"),
    test="tests/papers/test_attention_mqa.py::test_gqa_with_groups_equal_heads_equals_softmax",
    tiny={"heads": 4, "kv_heads": 2})
class GroupedQueryAttention(SoftmaxAttention):
    """Grouped-query attention: kv_heads K/V heads, each shared by heads/kv_heads query heads."""

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 impl: str = "sdpa", cross: bool = False, scale: float | None = None):
        if kv_heads is None:
            kv_heads = max(1, heads // 2)
        if not 1 <= int(kv_heads) <= heads:
            raise ConfigError("mixer.kv_heads", kv_heads,
                              why=f"kv_heads must be between 1 and heads={heads}")
        super().__init__(d_model, heads, int(kv_heads), head_dim, bias, dropout, impl, cross,
                         scale)
