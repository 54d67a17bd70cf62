"""Causal language modelling: predict every next token.

Paper: Improving Language Understanding by Generative Pre-Training (Radford et al., 2018),
eq. 1: L_1(U) = Σ_i log P(u_i | u_{i-k}, …, u_{i-1}; Θ). Minimised here as the mean
cross-entropy over scored tokens (labels ≠ -100), plus the model's auxiliary losses
(MoE balance, adaptive span, ACT ponder cost, …) from ``ModelOutput.aux_loss``.
"""
from __future__ import annotations

import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import IGNORE, Objective, aux_of, exact_sum, token_metrics


@OBJECTIVES.register(
    "clm",
    paper="Improving Language Understanding by Generative Pre-Training (Radford et al., 2018)",
    equation="eq. 1: L = -Σ_i log P(u_i | u_<i); loss = mean CE over scored tokens + aux",
    complexity=("O(n V)", "O(n V)"),
    test="tests/papers/test_objectives.py::test_clm_is_next_token_cross_entropy_plus_aux")
class CausalLM(Objective):
    """Next-token cross-entropy (+ auxiliary losses); bits per character on text."""

    data_format = "lm"
    reports_bits = True

    def check_model(self, model) -> None:
        if getattr(type(model), "has_decoder", False) or not getattr(model, "causal", False):
            raise ConfigError("objective", "clm",
                              why=f"clm needs a causal decoder-only model (model.arch=gpt); "
                                  f"this one is {type(model).__name__} (use mlm for an encoder, "
                                  f"seq2seq for an encoder-decoder)")

    def __call__(self, model, batch):
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        logits = out.logits.float()                                  # (B, n, V)
        labels = batch["labels"]
        scored = out.extra.get("scored")     # (B, n): the positions a model predicts (Perceiver AR)
        if scored is not None:
            labels = labels.masked_fill(~scored, IGNORE)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                             reduction="none")                       # (B·n,), 0 where ignored
        ce_sum = ce.sum()
        metrics = token_metrics(logits, labels, exact_sum(ce))
        n = metrics["loss"][1]
        aux = aux_of(out)
        loss = ce_sum / n.clamp(min=1) + aux
        metrics["aux"] = (aux.detach(), 1)
        return loss, metrics
