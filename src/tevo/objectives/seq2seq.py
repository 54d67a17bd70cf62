"""Sequence-to-sequence cross-entropy with label smoothing, for encoder–decoder models.

Papers: Attention Is All You Need (Vaswani et al., 2017), §5.4 (ε_ls = 0.1); label smoothing
from Rethinking the Inception Architecture (Szegedy et al., 2016), §7:
    q'(k) = (1 − ε) δ_{k,y} + ε / V,   loss = −Σ_k q'(k) log p(k)
             = (1 − ε) · NLL(y) + ε · mean_k(−log p(k)).
The reported ``loss`` is the plain NLL (so perplexity stays honest); ``smoothed_loss`` is what
is minimised.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import IGNORE, Objective, aux_of, exact_sum, token_metrics


def label_smoothed_nll(logits, labels, eps: float, per_token: bool = False):
    """(smoothed loss sum, NLL sum) over positions with labels ≠ -100; logits (..., V).
    ``per_token``: the two (N,) vectors of scored positions instead of their sums."""
    logp = logits.float().log_softmax(-1)
    mask = labels != IGNORE
    safe = labels.clamp(min=0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)          # (...,)
    uniform = -logp.mean(-1)                                         # (...,)
    smoothed = (1.0 - eps) * nll + eps * uniform
    if per_token:
        return smoothed[mask], nll[mask]
    return smoothed[mask].sum(), nll[mask].sum()


@OBJECTIVES.register(
    "seq2seq", paper="Attention Is All You Need (Vaswani et al., 2017), §5.4; label smoothing: "
                     "Rethinking the Inception Architecture (Szegedy et al., 2016), §7",
    equation="loss = (1-ε)·NLL(y) + ε·mean_k(-log p_k), ε = 0.1, teacher forcing on [BOS] y",
    complexity=("O(n V)", "O(n V)"),
    test="tests/papers/test_objectives.py::"
         "test_seq2seq_label_smoothing_matches_definition_and_optimum")
class Seq2Seq(Objective):
    """Teacher-forced target cross-entropy with label smoothing (encoder–decoder models)."""

    data_format = "seq2seq"
    specials = ("[BOS]", "[EOS]")

    def __init__(self, label_smoothing: float = 0.1):
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError("objective.label_smoothing", label_smoothing, why="must be in [0, 1)")
        self.eps = float(label_smoothing)

    def check_model(self, model) -> None:
        if not getattr(type(model), "has_decoder", False):
            raise ConfigError("objective", "seq2seq",
                              why=f"seq2seq needs an encoder-decoder model (model.arch="
                                  f"transformer); this one is {type(model).__name__}")

    def __call__(self, model, batch):
        src, tgt = batch["src_ids"], batch["tgt_ids"]
        tgt_mask = batch.get("tgt_mask")
        out = model(src, tgt[:, :-1], src_mask=batch.get("src_mask"),
                    tgt_mask=None if tgt_mask is None else tgt_mask[:, :-1])
        labels = tgt[:, 1:]
        if tgt_mask is not None:
            labels = torch.where(tgt_mask[:, 1:].bool(), labels, torch.full_like(labels, IGNORE))
        smooth, nll = label_smoothed_nll(out.logits, labels, self.eps, per_token=True)
        metrics = token_metrics(out.logits.float(), labels, exact_sum(nll), exact=True)
        n = metrics["loss"][1]
        aux = aux_of(out)
        loss = smooth.sum() / n.clamp(min=1) + aux
        metrics["smoothed_loss"] = (exact_sum(smooth), n)
        metrics["aux"] = (aux.detach(), 1)
        return loss, metrics
