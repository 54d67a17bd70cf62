"""Sequence classification for fine-tuning: one label per passage from the pre-trained
model's final hidden states.

Papers: BERT (Devlin et al., 2019), §4.1: a classification layer W ∈ R^{K×d} on a sequence
representation, loss = −log softmax(C Wᵀ)[y]; GPT (Radford et al., 2018), §3.2: the decoder's
final hidden state at the last token, P(y | x) = softmax(h_l^m W_y).

Sequence representation (``pooling``): ``last`` = the hidden state at the last real token (a
causal model: GPT, DecBERT; the only position that has read the whole passage), ``mean`` = the
mean over real tokens (a bidirectional encoder, or the encoder of an encoder–decoder). ``auto``
picks ``last`` for causal models, ``mean`` otherwise. (Our pre-training has no [CLS] token, so
BERT's [CLS] vector is replaced by the mean.) The head W (``classes`` × d, bias) is the
objective's own module, trained with the model. Metrics: ``loss`` and ``accuracy`` per passage.
Complexity: O(B d K) on top of the model.

``norm="batchnorm"``: a BatchNorm without affine parameters between the pooled representation
and the head, as MAE's linear probe (He et al., 2022, App. A.1) — it standardises each feature
over the batch (running statistics at evaluation). The mean of a small encoder's hidden states
varies little between passages (spread ~0.05–0.1 per feature), so a linear head on it learns
only the label prior in a few hundred steps at the encoder's learning rate; standardised, the
same head sees unit-scale features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Objective, aux_of, exact_sum, unwrap

POOLING = ("auto", "last", "mean")
NORMS = ("none", "batchnorm")


@OBJECTIVES.register(
    "text_classification",
    paper="BERT (Devlin et al., 2019), §4.1; Improving Language Understanding by Generative "
          "Pre-Training (Radford et al., 2018), §3.2",
    equation="P(y | x) = softmax(W h(x)), h = last real token (causal) or mean over tokens; "
             "L = -log P(y | x)",
    complexity=("O(B d K)", "O(B K)"),
    test="tests/test_genre.py::test_text_classification_head_pools_and_scores")
class TextClassification(Objective):
    """Cross-entropy of one label per passage from a linear head on pooled hidden states."""

    data_format = "classify"

    def __init__(self, classes: int | None = None, pooling: str = "auto", norm: str = "none"):
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
            raise ConfigError("objective.classes", classes,
                              why="the number of labels, an integer >= 2 (tevo finetune sets it "
                                  "from the task)")
        if pooling not in POOLING:
            raise ConfigError("objective.pooling", pooling, POOLING)
        if norm not in NORMS:
            raise ConfigError("objective.norm", norm, NORMS)
        self.classes, self.pooling, self.norm = classes, pooling, norm

    def attach(self, model) -> None:
        head = nn.Linear(model.cfg.d_model, self.classes)
        nn.init.normal_(head.weight, 0.0, model.cfg.init_std)
        nn.init.zeros_(head.bias)
        mods = {"classifier": head}
        if self.norm == "batchnorm":                 # standardise features; no affine (MAE)
            mods["feature_norm"] = nn.BatchNorm1d(model.cfg.d_model, affine=False)
        self.add_modules(model, **mods)

    def features(self, model, ids: Tensor, mask: Tensor | None) -> tuple[Tensor, object]:
        """(B, d) passage representations and the model output."""
        base = unwrap(model)
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        mask = mask.bool()
        if getattr(type(base), "has_decoder", False):              # the encoder of enc-dec
            h, out = base.encode(ids, mask), None
            causal = False
        else:
            out = model(ids, attention_mask=mask, return_hidden=True)
            h = out.hidden                                          # (B, n, d)
            causal = bool(getattr(base, "causal", False))
        pool = self.pooling if self.pooling != "auto" else ("last" if causal else "mean")
        if pool == "last":
            last = mask.long().cumsum(1).argmax(1)                  # index of the last real one
            return h[torch.arange(len(h), device=h.device), last], out
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1), out

    def logits(self, model, feats: Tensor) -> Tensor:
        """(B, K) class scores from (B, d) pooled features."""
        mods = unwrap(model).objective_modules
        if "feature_norm" in mods:
            feats = mods["feature_norm"](feats)
        return mods["classifier"](feats).float()

    def __call__(self, model, batch):
        labels = batch["labels"]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.classes):
            bad = int(labels.max()) if int(labels.max()) >= self.classes else int(labels.min())
            raise ConfigError("objective.classes", self.classes,
                              why=f"label {bad} is out of range [0, {self.classes}); set "
                                  f"objective.classes to the task's number of labels")
        feats, out = self.features(model, batch["input_ids"], batch.get("attention_mask"))
        logits = self.logits(model, feats)                                        # (B, K)
        ce = F.cross_entropy(logits, labels, reduction="none")
        n = torch.tensor(labels.numel(), device=logits.device)
        aux = aux_of(out) if out is not None else torch.zeros((), device=logits.device)
        loss = ce.mean() + aux
        return loss, {"loss": (exact_sum(ce), n),
                      "accuracy": ((logits.argmax(-1) == labels).sum(), n),
                      "aux": (aux.detach(), 1)}
