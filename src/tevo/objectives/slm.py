"""Transcormer's sliding language modelling: every token's probability given all the others,
for all tokens in one pass (sentence scoring).

Paper: Transcormer: Transformer for Sentence Scoring with Sliding Language Modeling (Song et
al., NeurIPS 2022), §3: three streams share the weights —
    forward  h→_t ← Attn(h→_{≤t})            (a left-to-right LM)
    backward h←_t ← Attn(h←_{≥t})            (a right-to-left LM)
    query    g_t  ← Attn(Q = g_t, KV = h→_{<t} ∪ h←_{>t})
with g⁽⁰⁾_t = a shared mask embedding plus position t; p(x_t | x_{≠t}) = softmax(e(x)ᵀ g_t).
The training loss is Σ_t −log p(x_t | x_{<t}, x_{>t}) over every token, and the sentence score
    score(x) = Σ_t log p(x_t | x_{<t}, x_{>t})
comes from one forward pass, where masked-LM scoring (PLL) needs n passes.

Here the three streams run as ONE sequence of 3n rows (inputs x, x, [MASK]…; positions 0..n−1
three times) through the run's encoder with the masks above as ``attn_mask``. Complexity:
O((3n)² d) per layer, O(n V) for the loss; scoring n tokens costs one pass instead of n.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..registry import OBJECTIVES
from .base import Objective, aux_of, check_stream_masks, exact_sum


def sliding_masks(n: int, device=None) -> Tensor:
    """(3n, 3n) bool: rows/cols are [forward | backward | query] streams."""
    i = torch.arange(n, device=device)
    le = i[None, :] <= i[:, None]                 # key j ≤ query i
    ge = i[None, :] >= i[:, None]
    lt, gt = i[None, :] < i[:, None], i[None, :] > i[:, None]
    z = torch.zeros(n, n, dtype=torch.bool, device=device)
    return torch.cat([torch.cat([le, z, z], 1),                    # forward: x_≤t
                      torch.cat([z, ge, z], 1),                    # backward: x_≥t
                      torch.cat([lt, gt, z], 1)], 0)               # query: x_<t, x_>t


@OBJECTIVES.register(
    "slm", paper="Transcormer: Transformer for Sentence Scoring with Sliding Language Modeling "
                 "(Song et al., 2022)",
    equation="§3: g_t ← Attn(Q=g_t, KV=h→_{<t} ∪ h←_{>t}); L = -Σ_t log p(x_t | x_<t, x_>t); "
             "score(x) = Σ_t log p(x_t | x_≠t) in one pass",
    complexity=("O((3n)² d) per layer", "O((3n)²)"),
    test="tests/papers/test_objectives_pretrain.py::test_slm_one_pass_score_equals_naive_loop")
class SlidingLM(Objective):
    """Transcormer's triple-stream sliding LM; ``score`` rates sentences in one pass."""

    data_format = "mlm"
    specials = ("[MASK]",)

    def check_model(self, model) -> None:
        check_stream_masks(model, "slm")

    def log_probs(self, model, ids: Tensor) -> tuple[Tensor, object]:
        """(log p(x_t | x_≠t) (B, n), model output) in one pass of the three streams."""
        B, n = ids.shape
        if n < 2:
            raise InputError("sliding LM scoring needs at least 2 tokens")
        q = torch.full_like(ids, self.special_ids["[MASK]"])
        x = torch.cat([ids, ids, q], 1)                               # (B, 3n)
        ar = torch.arange(n, device=ids.device)
        positions = ar.repeat(3).expand(B, 3 * n)
        predict = torch.zeros(B, 3 * n, dtype=torch.bool, device=ids.device)
        predict[:, 2 * n:] = True
        out = model(x, positions=positions, attn_mask=sliding_masks(n, ids.device)[None],
                    predict=predict)
        logp = out.logits.float().log_softmax(-1).view(B, n, -1)       # query rows
        return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), out

    @torch.no_grad()
    def score(self, model, ids: Tensor) -> Tensor:
        """(B,) sentence scores Σ_t log p(x_t | x_<t, x_>t)."""
        return self.log_probs(model, ids)[0].sum(1)

    def __call__(self, model, batch):
        ids = batch["input_ids"]
        lp, out = self.log_probs(model, ids)
        nll = -lp.flatten()
        aux = aux_of(out)
        loss = nll.mean() + aux
        return loss, {"loss": (exact_sum(nll), nll.numel()), "aux": (aux.detach(), 1)}
