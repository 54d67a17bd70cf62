"""DecBERT: masked language modelling inside an encoder whose attention is causal.

Paper: DecBERT: Enhancing the Language Understanding of BERT with Causal Attention Masks
(Luo et al., Findings of NAACL 2022), §3: the BERT encoder's self-attention gets the lower
triangular (causal) mask, so token t attends to tokens ≤ t; the causal mask itself carries
word order, so position embeddings may be dropped (``model.position=none``). Pre-training is
BERT's masked LM unchanged (15% of positions; 80% [MASK], 10% random, 10% kept; CE at the
chosen positions): the prediction at a masked position t reads only x_≤t (with x_t hidden).

Here: the ``mlm`` corruption and loss of :mod:`tevo.objectives.mlm`, on a ``bert`` model with
``model.causal=true``. Complexity: that of the encoder, O(n V) for the loss.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .mlm import MaskedLM


@OBJECTIVES.register(
    "decbert", paper="DecBERT: Enhancing the Language Understanding of BERT with Causal "
                     "Attention Masks (Luo et al., 2022)",
    equation="§3: MLM (15%, 80/10/10) with A_ij = -inf for j > i in every encoder layer",
    complexity=("O(n V)", "O(n V)"),
    test="tests/papers/test_objectives_pretrain.py::test_decbert_is_mlm_under_causal_masks")
class DecBERT(MaskedLM):
    """BERT masked-LM on an encoder with causal attention masks (model.causal=true)."""

    def __init__(self, mask_prob: float = 0.15, mask_token: float = 0.8,
                 random_token: float = 0.1):
        super().__init__(mask_prob, mask_token, random_token, nsp=False)

    def check_model(self, model) -> None:
        if getattr(type(model), "has_decoder", False) \
                or getattr(type(model), "default_causal", True) or not getattr(model, "causal", False):
            raise ConfigError("objective", "decbert",
                              why=f"decbert needs a BERT encoder with causal masks (model.arch="
                                  f"bert model.causal=true); this one is {type(model).__name__}"
                                  f"{'' if getattr(model, 'causal', False) else ', bidirectional'}")
