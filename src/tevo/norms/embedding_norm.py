"""Embedding LayerNorm (BLOOM's ``word_embeddings_layernorm``).

Paper: What Language Model to Train if You Have One Million GPU Hours? (Le Scao et al., 2022),
§4.4: a LayerNorm right after the token embedding layer, h_0 = LN(E[u]) (positions come from
ALiBi in the attention, so nothing else is added to the embeddings). It made training markedly
more stable at 100B+ scale at some cost in zero-shot accuracy; BLOOM kept it.
In a model it is turned on with ``model.embedding_norm: true`` (the LanguageModel and the encoder
then apply a norm of kind ``model.norm`` to the embeddings); this entry is that norm as a
component of its own, a LayerNorm with bias, for code that builds the embedding stage by hand.
Complexity: O(n d) time and memory.
"""
from __future__ import annotations

from ..registry import NORMS
from .basic import LayerNorm


@NORMS.register("embedding_norm",
                paper="What Language Model to Train if You Have One Million GPU Hours? "
                      "(Le Scao et al., 2022)",
                equation="§4.4: h_0 = LN(E[u]) = (E[u] − μ)/√(σ² + ε)·γ + β",
                complexity=("O(n d)", "O(n d)"),
                test="tests/papers/test_norms_embedding_norm.py::"
                     "test_embedding_norm_in_a_bloom_like_model")
class EmbeddingNorm(LayerNorm):
    """LayerNorm applied to the token embeddings (BLOOM)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(d_model, eps, bias)
