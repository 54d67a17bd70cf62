"""kNN-LM: a language model interpolated with a nearest-neighbour distribution over a datastore
of (context vector, next token) pairs.

Paper: Generalization through Memorization: Nearest Neighbor Language Models (Khandelwal et al.,
2020), §2:
    datastore (K, V) = {(f(c_i), w_i)}: the context vector of every training position, its next token
    p_kNN(y | x) ∝ Σ_{(k_i, v_i) ∈ N(x)} 1[y = v_i] exp(−d(k_i, f(x)) / T)       (eq. 1–2)
    p(y | x) = λ p_kNN(y | x) + (1 − λ) p_LM(y | x)                              (eq. 3)
N(x): the k nearest keys of f(x) under squared L2 distance d, found in a faiss index (exact flat
by default; IVF/HNSW for large stores, ``tevo.nn.knn``). λ = 0 is the base model exactly.

f(x) here is the model's final hidden state (the input of the output layer, after the final
norm); the paper uses the input of the last layer's feed-forward block, a per-model choice
(§4 compares several). Options in ``model.extra``: knn_lambda λ ∈ [0, 1] (default 0.25), knn_k
(≥ 1, default 32), knn_temperature T > 0 (default 1.0). The datastore is attached with
``attach_datastore`` (built by ``tevo knn build``, see ``tevo.inference.knn``); without one the
model is its base LM. ``forward`` returns log p as ``logits`` (already normalised, so softmax and
cross-entropy read it unchanged).

Complexity: the base LM plus one k-NN search per position (flat: O(N d); IVF: O(N d·nprobe/nlist))
and O(k) to scatter; memory: the datastore N·d floats, memory-mapped on disk.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import MODELS
from .lm import LanguageModel

KNN_OPTIONS = ("knn_lambda", "knn_k", "knn_temperature")


@MODELS.register(
    "knn_lm", paper="Generalization through Memorization: Nearest Neighbor Language Models "
                    "(Khandelwal et al., 2020)",
    equation="eq. 1–3: p_kNN(y|x) ∝ Σ_{N(x)} 1[y = v_i] exp(−d(k_i, f(x))/T); "
             "p = λ p_kNN + (1 − λ) p_LM",
    complexity=("LM + one k-NN search per position", "datastore N·d (memory-mapped)"),
    test="tests/papers/test_knn_lm.py::test_lambda_zero_equals_the_base_model",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "position": "rope",
          "extra": {"knn_lambda": 0.5, "knn_k": 4}})
class KNNLM(LanguageModel):
    """The decoder-only LM interpolated with a kNN distribution over a datastore of (context
    vector, next token) pairs (kNN-LM)."""

    def __init__(self, cfg):
        extra = dict(cfg.extra or {})
        lam = extra.get("knn_lambda", 0.25)
        k = extra.get("knn_k", 32)
        temp = extra.get("knn_temperature", 1.0)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
            raise ConfigError("model.extra.knn_lambda", lam, why="a number in [0, 1]")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("model.extra.knn_k", k, why="an integer >= 1")
        if (isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp)
                or temp <= 0):
            raise ConfigError("model.extra.knn_temperature", temp, why="a number > 0")
        super().__init__(cfg)
        self.knn_lambda, self.knn_k, self.knn_temperature = float(lam), int(k), float(temp)
        self.datastore = None

    def attach_datastore(self, store) -> None:
        """store: an object with ``search(queries (M, d), k) -> (sq. distances (M, k), next
        tokens (M, k))`` (``tevo.inference.knn.Datastore``), or None."""
        self.datastore = store

    def knn_log_probs(self, hidden: Tensor) -> Tensor:
        """log p_kNN: hidden (B, n, d) -> (B, n, V); eq. 2 with squared L2 distances."""
        B, n, d = hidden.shape
        dist, tok = self.datastore.search(hidden.reshape(-1, d), self.knn_k)   # (B·n, k)
        dist, tok = dist.to(hidden.device).float(), tok.to(hidden.device).long()
        logw = torch.log_softmax(-dist / self.knn_temperature, -1)           # (B·n, k)
        out = torch.full((B * n, self.cfg.vocab_size), float("-inf"), device=hidden.device)
        m = logw.max(-1, keepdim=True).values
        p = torch.zeros(B * n, self.cfg.vocab_size, device=hidden.device)
        p.scatter_add_(1, tok, (logw - m).exp())                              # Σ over same token
        out = torch.where(p > 0, p.log() + m, out)
        return out.view(B, n, -1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                state: dict | None = None, positions: Tensor | None = None,
                return_hidden: bool = False):
        out = super().forward(input_ids, attention_mask, state, positions, return_hidden=True)
        if self.datastore is not None and self.knn_lambda > 0:
            lp = torch.log_softmax(out.logits.float(), -1)                   # log p_LM
            lk = self.knn_log_probs(out.hidden.detach())
            lam = self.knn_lambda
            out.logits = lk if lam >= 1 else torch.logaddexp(lp + math.log1p(-lam),
                                                             lk + math.log(lam))
        if not return_hidden:
            out.hidden = None
        return out
