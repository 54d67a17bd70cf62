"""The GlobalPointer loss and span-level precision / recall / F1.

Paper: Su Jianlin, "GlobalPointer: a unified way to handle nested and flat NER" (2021), with the
multi-label categorical cross-entropy of "Generalising softmax + cross-entropy to multi-label
classification" (Su, 2020); reference: bert4keras ``multilabel_categorical_crossentropy`` and
``global_pointer_crossentropy``. Per batch row b and type α, over the valid spans (j >= i, no
padding) with positive set P (gold spans) and negative set N (the rest):
    L_{b,α} = log(1 + Σ_{(i,j)∈N} e^{s_α(i,j)}) + log(1 + Σ_{(i,j)∈P} e^{−s_α(i,j)}),
and the loss is the mean over (b, α). Threshold 0: a span is predicted when s > 0, which the loss
pushes every positive above and every negative below.
Metrics: ``loss``; ``precision`` = correct / predicted spans, ``recall`` = correct / gold spans,
summed over the batch (micro), and ``f1`` = 2PR/(P + R) from them.
Batches (format ``spans``): ``{"input_ids": (B, n), "attention_mask": (B, n),
"spans": (B, T, n, n) bool}``. Complexity: O(B T n²).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Objective, aux_of, exact_sum, unwrap


def multilabel_crossentropy(scores: Tensor, gold: Tensor, valid: Tensor) -> Tensor:
    """(…, m) scores, gold and valid bool masks -> (…) losses
    log(1 + Σ_neg e^s) + log(1 + Σ_pos e^{−s}) over the valid entries."""
    s = scores.float()
    gold = gold.bool() & valid.bool()
    neg = s.masked_fill(~(valid.bool() & ~gold), float("-inf"))
    pos = (-s).masked_fill(~gold, float("-inf"))
    zero = torch.zeros_like(s[..., :1])
    return torch.cat([neg, zero], -1).logsumexp(-1) + torch.cat([pos, zero], -1).logsumexp(-1)


@OBJECTIVES.register(
    "global_pointer",
    paper="GlobalPointer: a unified way to handle nested and flat NER (Su, 2021); multi-label "
          "categorical cross-entropy (Su, 2020)",
    equation="L = log(1 + Σ_neg e^{s_α(i,j)}) + log(1 + Σ_pos e^{−s_α(i,j)}), mean over (b, α); "
             "predict s > 0; span P/R/F1",
    complexity=("O(B T n²)", "O(B T n²)"),
    test="tests/papers/test_models_global_pointer.py::test_loss_is_the_multilabel_formula")
class GlobalPointerObjective(Objective):
    """Multi-label span cross-entropy of a GlobalPointer model, with span P/R/F1."""

    data_format = "spans"

    def __init__(self, threshold: float = 0.0):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError("objective.threshold", threshold, why="a real number (default 0)")
        self.threshold = float(threshold)

    def check_model(self, model) -> None:
        if not hasattr(unwrap(model), "span_head"):
            raise ConfigError("model.arch", unwrap(model).cfg.arch, ["global_pointer"],
                              why="the global_pointer objective trains a span-scoring model")

    def __call__(self, model, batch):
        ids, gold = batch["input_ids"], batch["spans"].bool()
        mask = batch.get("attention_mask")
        out = model(ids, attention_mask=mask)
        scores = out.logits                                              # (B, T, n, n)
        if gold.shape != scores.shape:
            raise ConfigError("model.extra.gp_types", scores.shape[1],
                              why=f"the task has {gold.shape[1]} span types; the spans are "
                                  f"{tuple(gold.shape)}, the scores {tuple(scores.shape)}")
        B, T, n, _ = scores.shape
        from ..models.global_pointer import span_mask
        valid = span_mask(mask, B, n, ids.device).expand(B, T, n, n)
        per = multilabel_crossentropy(scores.reshape(B, T, n * n), gold.reshape(B, T, n * n),
                                      valid.reshape(B, T, n * n))        # (B, T)
        aux = aux_of(out)
        loss = per.mean() + aux
        pred = (scores > self.threshold) & valid
        gold = gold & valid
        tp, n_pred, n_gold = (pred & gold).sum(), pred.sum(), gold.sum()
        return loss, {"loss": (exact_sum(per), torch.tensor(per.numel(), device=ids.device)),
                      "precision": (tp, n_pred), "recall": (tp, n_gold),
                      "aux": (aux.detach(), 1)}

    def derived(self, means: dict, stats: dict | None = None) -> dict:
        p, r = means.get("precision"), means.get("recall")
        if p is None or r is None:
            return {}
        return {"f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}
