"""Masked language modelling with BERT's 80/10/10 corruption, and next-sentence prediction.

Paper: BERT (Devlin et al., 2019), §3.1 Task #1 and appendix A.1: 15% of the token positions
are chosen; a chosen token is replaced by [MASK] 80% of the time, by a random token 10% of the
time and left unchanged 10% of the time; the loss is the cross-entropy at the chosen positions
only. Task #2 (NSP): [CLS] A [SEP] B [SEP] where B follows A half of the time and is a random
segment otherwise; a binary classifier on the pooled [CLS] vector predicts which.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import IGNORE, Objective, aux_of, exact_sum, token_metrics


@OBJECTIVES.register(
    "mlm", paper="BERT: Pre-training of Deep Bidirectional Transformers for Language "
                 "Understanding (Devlin et al., 2019)",
    equation="§3.1: choose 15% of positions; 80% → [MASK], 10% → random, 10% unchanged; "
             "CE on chosen positions (+ NSP: CE of IsNext on pooled [CLS])",
    complexity=("O(n V)", "O(n V)"),
    test="tests/papers/test_objectives.py::test_mlm_masking_statistics_are_15_80_10_10")
class MaskedLM(Objective):
    """BERT masked-LM (80/10/10) with an optional next-sentence-prediction loss."""

    data_format = "mlm"

    def __init__(self, mask_prob: float = 0.15, mask_token: float = 0.8,
                 random_token: float = 0.1, nsp: bool = False, nsp_weight: float = 1.0):
        if not 0 < mask_prob <= 1 or mask_token < 0 or random_token < 0 \
                or mask_token + random_token > 1:
            raise ConfigError("objective(mlm)", {"mask_prob": mask_prob, "mask_token": mask_token,
                                                 "random_token": random_token},
                              why="needs 0 < mask_prob <= 1 and mask_token + random_token <= 1")
        self.mask_prob, self.mask_token, self.random_token = mask_prob, mask_token, random_token
        self.nsp, self.nsp_weight = bool(nsp), float(nsp_weight)
        self.specials = ("[MASK]",) + (("[CLS]", "[SEP]") if self.nsp else ())

    def setup(self, vocab_size, special_ids):
        super().setup(vocab_size, special_ids)
        special = set(special_ids.values())
        # random replacements are drawn from the ordinary (non-special) tokens
        self.ordinary = torch.tensor([i for i in range(vocab_size) if i not in special])
        return self

    def check_model(self, model) -> None:
        if getattr(type(model), "has_decoder", False) or getattr(model, "causal", True):
            raise ConfigError("objective", "mlm",
                              why=f"mlm needs a bidirectional encoder (model.arch=bert); "
                                  f"this one is {type(model).__name__}, causal")
        if self.nsp and getattr(model, "nsp", None) is None:
            raise ConfigError("objective.nsp", True, why="the model has no NSP head")
        if self.nsp and getattr(model, "segment", None) is None:
            raise ConfigError("objective.nsp", True,
                              why="NSP needs segment embeddings (set model.n_segments=2)")

    def mask_tokens(self, ids: Tensor, protect: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(inputs, labels): the 80/10/10 corruption of ``ids`` and the labels (the original
        ids at chosen positions, -100 elsewhere). ``protect`` marks positions never chosen.
        Randomness comes from ``generator`` (default: torch's global CPU generator, which the
        trainer's checkpoints save)."""
        shape, dev = ids.shape, ids.device
        u = torch.rand(shape, generator=generator)
        r = torch.rand(shape, generator=generator)
        rand_ids = self.ordinary[torch.randint(0, len(self.ordinary), shape, generator=generator)]
        u, r, rand_ids = u.to(dev), r.to(dev), rand_ids.to(dev)
        chosen = u < self.mask_prob
        if protect is not None:
            chosen &= ~protect
        to_mask = chosen & (r < self.mask_token)
        to_rand = chosen & (r >= self.mask_token) & (r < self.mask_token + self.random_token)
        inputs = torch.where(to_mask, torch.full_like(ids, self.special_ids["[MASK]"]), ids)
        inputs = torch.where(to_rand, rand_ids, inputs)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        return inputs, labels

    def make_pairs(self, ids: Tensor, generator=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """[CLS] A [SEP] B [SEP] from windows: A and B are the two halves of a window, and for a
        random half of the rows B is taken from another row. Returns (ids, token_type_ids,
        is_random labels (1 = not next), protected positions)."""
        B, n = ids.shape
        la = (n - 3) // 2
        lb = n - 3 - la
        a, b = ids[:, :la], ids[:, la:la + lb]
        rnd = (torch.rand(B, generator=generator) < 0.5).to(ids.device)
        if B < 2:
            rnd = torch.zeros_like(rnd)
        b = torch.where(rnd[:, None], b.roll(1, 0), b)
        col = lambda name: torch.full((B, 1), self.special_ids[name], dtype=ids.dtype,
                                      device=ids.device)
        seq = torch.cat([col("[CLS]"), a, col("[SEP]"), b, col("[SEP]")], 1)   # (B, n)
        types = torch.cat([torch.zeros(B, la + 2, dtype=torch.long),
                           torch.ones(B, lb + 1, dtype=torch.long)], 1).to(ids.device)
        protect = torch.zeros(B, n, dtype=torch.bool, device=ids.device)
        protect[:, [0, la + 1, n - 1]] = True
        return seq, types, rnd.long(), protect

    def __call__(self, model, batch):
        ids = batch["input_ids"]
        kw = {"attention_mask": batch.get("attention_mask")}
        protect = None
        if self.nsp:
            ids, kw["token_type_ids"], nsp_labels, protect = self.make_pairs(ids)
        inputs, labels = self.mask_tokens(ids, protect)
        out = model(inputs, **kw)
        logits = out.logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                             reduction="none")
        ce_sum = ce.sum()
        metrics = token_metrics(logits, labels, exact_sum(ce))
        metrics.pop("exact_match", None)
        aux = aux_of(out)
        loss = ce_sum / metrics["loss"][1].clamp(min=1) + aux
        if self.nsp:
            nsp_logits = out.extra["nsp_logits"].float()
            nsp = F.cross_entropy(nsp_logits, nsp_labels)
            loss = loss + self.nsp_weight * nsp
            B = nsp_labels.numel()
            metrics["nsp_loss"] = (nsp.detach() * B, B)
            metrics["nsp_accuracy"] = ((nsp_logits.argmax(-1) == nsp_labels).sum(), B)
        metrics["aux"] = (aux.detach(), 1)
        return loss, metrics
