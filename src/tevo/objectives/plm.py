"""XLNet permutation language modelling with two-stream attention and partial prediction.

Paper: XLNet: Generalized Autoregressive Pretraining for Language Understanding (Yang et al.,
NeurIPS 2019), §2.2–2.3. For a factorisation order z (a random permutation of 1..n):
    max E_z [ Σ_{t=c+1}^{n} log p(x_{z_t} | x_{z<t}) ]                              (eq. 5)
with partial prediction: only the last n/K tokens of the order are predicted (c = n − n/K).
Two streams share every weight (eq. 4 and §2.3):
    content h_{z_t} ← Attention(Q = h_{z_t}, KV = h_{z≤t})    (sees its own content)
    query   g_{z_t} ← Attention(Q = g_{z_t}, KV = h_{z<t})    (its position, never its content)
with g⁽⁰⁾ = w, one trainable vector (here the [MASK] embedding) plus the token's position.
p(x_{z_t} | x_{z<t}) = softmax(e(x)ᵀ g_{z_t}).

Here both streams run as ONE sequence of n + m rows (m = n/K predicted tokens) through the
run's encoder with the two masks above as ``attn_mask`` (content rows: content keys with
rank ≤ own; query rows: content keys with rank < own), positions [1..n, positions of the
targets]: exactly XLNet's two-stream attention, for any encoding that reads ``positions``
(``learned`` at the input, or XLNet's own ``xl_relative`` bias). With the identity order the
content stream is a causal LM. Simplifications: no segment recurrence (``xl_memory``) across
windows and no span-based target selection (targets are the order's last n/K tokens).
Complexity: O((n + m)² d) per layer (m ≈ n/K extra query rows), O(m V) for the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Objective, aux_of, check_stream_masks, exact_sum


def two_stream_masks(perm: Tensor, n_predict: int) -> tuple[Tensor, Tensor, Tensor]:
    """perm (B, n): factorisation orders (perm[b, t] = the token predicted t-th). Returns
    (content (B, n, n), query (B, m, n) masks over content keys, targets (B, m) positions)."""
    B, n = perm.shape
    rank = torch.empty_like(perm)
    rank.scatter_(1, perm, torch.arange(n, device=perm.device).expand(B, n))   # rank of token
    content = rank[:, None, :] <= rank[:, :, None]                 # key rank ≤ query rank
    targets = perm[:, n - n_predict:]                               # last n/K of the order
    t_rank = rank.gather(1, targets)                                # (B, m)
    query = rank[:, None, :] < t_rank[:, :, None]                   # key rank < target rank
    return content, query, targets


def stream_mask(content: Tensor, query: Tensor) -> Tensor:
    """(B, n + m, n + m): content rows see content keys by ``content``; query rows see content
    keys by ``query``; nothing attends to a query row."""
    B, n, _ = content.shape
    m = query.shape[1]
    top = torch.cat([content, content.new_zeros(B, n, m)], 2)
    bottom = torch.cat([query, query.new_zeros(B, m, m)], 2)
    return torch.cat([top, bottom], 1)


@OBJECTIVES.register(
    "plm", paper="XLNet: Generalized Autoregressive Pretraining for Language Understanding "
                 "(Yang et al., 2019)",
    equation="eq. 5: max E_z Σ_{t>c} log p(x_{z_t} | x_{z<t}); two streams: h_{z_t} ← "
             "Attn(h_{z≤t}), g_{z_t} ← Attn(Q=g_{z_t}, KV=h_{z<t}); c = n − n/K",
    complexity=("O((n + n/K)² d) per layer", "O((n + n/K)²)"),
    test="tests/papers/test_objectives_pretrain.py::test_plm_two_stream_masks_are_xlnets")
class PermutationLM(Objective):
    """XLNet's permutation LM: two-stream attention, partial prediction of the last 1/K."""

    data_format = "mlm"
    specials = ("[MASK]",)               # its embedding is the query stream's w

    def __init__(self, K: int = 6):
        if not isinstance(K, int) or isinstance(K, bool) or K < 2:
            raise ConfigError("objective.K", K, why="partial prediction needs an integer K >= 2 "
                                                    "(the last n/K tokens are predicted; "
                                                    "paper: 6 or 7)")
        self.K = K

    def check_model(self, model) -> None:
        check_stream_masks(model, "plm")

    def n_predict(self, n: int) -> int:
        return max(1, n // self.K)

    def streams(self, model, ids: Tensor, perm: Tensor, n_predict: int | None = None):
        """Run both streams: (model output over the n + m rows with logits at the m query
        rows only, (B, m) target positions)."""
        B, n = ids.shape
        m = self.n_predict(n) if n_predict is None else n_predict
        content, query, targets = two_stream_masks(perm, m)
        x = torch.cat([ids, torch.full((B, m), self.special_ids["[MASK]"], dtype=ids.dtype,
                                       device=ids.device)], 1)          # (B, n + m)
        ar = torch.arange(n, device=ids.device).expand(B, n)
        positions = torch.cat([ar, targets], 1)                          # query: its position
        predict = torch.zeros(B, n + m, dtype=torch.bool, device=ids.device)
        predict[:, n:] = True
        out = model(x, positions=positions, attn_mask=stream_mask(content, query),
                    predict=predict)
        return out, targets

    def __call__(self, model, batch):
        ids = batch["input_ids"]
        B, n = ids.shape
        perm = torch.stack([torch.randperm(n) for _ in range(B)]).to(ids.device)
        out, targets = self.streams(model, ids, perm)
        labels = ids.gather(1, targets).flatten()                        # (B·m,)
        logits = out.logits.float()                                      # (B·m, V)
        ce = F.cross_entropy(logits, labels, reduction="none")
        aux = aux_of(out)
        loss = ce.mean() + aux
        metrics = {"loss": (exact_sum(ce), labels.numel()),
                   "accuracy": ((logits.argmax(-1) == labels).sum(), labels.numel()),
                   "aux": (aux.detach(), 1)}
        return loss, metrics
