"""The Cramming recipe's objective: BERT masked-LM with sparse token prediction.

Paper: Cramming: Training a Language Model on a Single GPU in One Day (Geiping & Goldstein,
ICML 2023), §4.3: the MLM objective with 15% masking and the 80/10/10 rule, no NSP, and
"sparse token prediction": the output head (transform + V-way decoder) is computed only at the
masked positions, which saves its O(n V) cost on the 85% of tokens that carry no loss. The loss
is exactly BERT's (CE at the masked positions); only where it is computed changes.

The rest of the recipe is the ``cramming`` preset (``tevo train cramming``): packed sequences
of 128 tokens, pre-LN, no dropout, no linear biases, gated-GELU FFN, final LayerNorm, AdamW
β = (0.9, 0.98), weight decay 0.01, gradient clipping 0.5, peak lr 1e-3 decaying linearly to
zero with the wall-clock budget ``train.max_minutes`` (the paper's budget-keyed one-cycle
schedule; the warm-up here is a step count and there is no batch-size ramp: simplifications).
Complexity: O(n d) for the transform and O(0.15 n V) for the decoder, per sequence.
"""
from __future__ import annotations

import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import IGNORE, aux_of, exact_sum
from .mlm import MaskedLM


@OBJECTIVES.register(
    "cramming", paper="Cramming: Training a Language Model on a Single GPU in One Day "
                      "(Geiping & Goldstein, 2023)",
    equation="§4.3: BERT MLM (15%, 80/10/10), no NSP; head only at masked positions "
             "(sparse prediction); preset: budget-keyed linear decay, no dropout",
    complexity=("O(n d + 0.15 n V)", "O(0.15 n V)"),
    test="tests/papers/test_objectives_pretrain.py::"
         "test_cramming_sparse_prediction_equals_mlm_and_stops_on_time")
class Cramming(MaskedLM):
    """BERT MLM whose head runs only at the masked positions (Cramming's sparse prediction)."""

    def __init__(self, mask_prob: float = 0.15, mask_token: float = 0.8,
                 random_token: float = 0.1):
        super().__init__(mask_prob, mask_token, random_token, nsp=False)

    def check_model(self, model) -> None:
        super().check_model(model)
        import inspect
        if "predict" not in inspect.signature(model.forward).parameters:
            raise ConfigError("objective", "cramming",
                              why=f"sparse prediction needs an encoder whose head can run at "
                                  f"chosen positions (model.arch=bert)")

    def __call__(self, model, batch):
        inputs, labels = self.mask_tokens(batch["input_ids"])
        chosen = labels != IGNORE
        out = model(inputs, attention_mask=batch.get("attention_mask"), predict=chosen)
        logits = out.logits.float()                                  # (N_chosen, V)
        targets = labels[chosen]
        ce = F.cross_entropy(logits, targets, reduction="none")
        n = targets.numel()
        aux = aux_of(out)
        loss = ce.sum() / max(n, 1) + aux
        return loss, {"loss": (exact_sum(ce), n),
                      "accuracy": ((logits.argmax(-1) == targets).sum(), n),
                      "aux": (aux.detach(), 1)}
