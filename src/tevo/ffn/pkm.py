"""Product-key memory (PKM): a huge key–value memory read with an exact top-k over product keys.

Paper: Large Memory Layers with Product Keys (Lample, Sablayrolles, Ranzato, Denoyer & Jégou,
2019), §3, eqs. 1–4:
    q(x) = BN(W_q x)                        query network with batch-normalised queries (§3.2)
    K = {(c, c') : c ∈ C, c' ∈ C'}          |C| = |C'| = √N sub-keys of dimension d_q/2
    I_C  = T_k(q₁(x)ᵀ c_i),  I_C' = T_k(q₂(x)ᵀ c'_j)          top-k per half
    I    = T_k(q₁ᵀ c_i + q₂ᵀ c'_j  for i ∈ I_C, j ∈ I_C')     top-k of the k² candidates
    w    = Softmax((q₁ᵀ c_i + q₂ᵀ c'_j)_{(i,j)∈I});   m(x) = Σ_{(i,j)∈I} w_{ij} v_{i√N+j}
Since the score of key (i, j) is a sum of one term per half, the k best keys of all N are
among the k² candidates: the search is exact (tested against brute force). H heads each have
their own query and sub-keys and share the values; their outputs are summed (§3.3).
Complexity: time O(n·H·(√N·d_q + k² + k·d)), memory O(N·d) values (a million rows at d = 1024).

Batch norm and position-wise: in eval mode BN uses its running statistics, so the layer is
position-wise and batch-independent (what the conformance suite checks, in eval mode); in
training mode the statistics pool every token of the batch (as in the paper), so the layer is
not position-wise there — ``position_wise`` says which mode is in force. ``query_norm:
layernorm`` (or ``none``) gives a query network that is position-wise in both modes.

Memory values: the paper updates them sparsely with their own Adam (lr 1e-3, §4.2) because a
dense update of a million rows is slow. ``optimizer_groups()`` returns them as their own group
(no weight decay, learning rate ``values_lr``), which tevo's trainer honours (the rate becomes a
scale of the schedule: ``values_lr / train.lr``); ``sparse: true`` makes their gradients sparse
and puts them in ``torch.optim.SparseAdam`` beside the AdamW of the rest (only the rows a step
read are updated; tests/test_train.py checks that, sparse-aware clipping and exact resume).
With the default ``sparse: false`` AdamW updates them densely, at their own rate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import FFNS, Option

QUERY_NORMS = ("batchnorm", "layernorm", "none")


@FFNS.register(
    "pkm", paper="Large Memory Layers with Product Keys (Lample et al., 2019)",
    equation="eqs. 1–4: q = BN(W_q x); I = T_k(q₁ᵀc_i + q₂ᵀc'_j over T_k(q₁ᵀC) × T_k(q₂ᵀC')); "
             "m(x) = Σ_{I} softmax(scores) v",
    complexity=("O(n H (√N d_q + k² + k d))", "O(N d) values"),
    test="tests/papers/test_ffn_pkm.py::test_product_topk_equals_brute_force",
    tiny={"n_keys": 8, "heads": 2, "k_dim": 8, "topk": 4})
class ProductKeyMemory(nn.Module):
    """Product-key memory layer: exact top-k over N = n_keys² keys via two half-key searches."""

    options = {"n_keys": Option(ge=1), "k_dim": Option(ge=2), "topk": Option(ge=1)}

    def __init__(self, d_model: int, n_keys: int = 512, heads: int = 4, k_dim: int = 256,
                 topk: int = 32, query_norm: str = "batchnorm", sparse: bool = False,
                 values_lr: float | None = 1e-3, dropout: float = 0.0):
        super().__init__()
        if k_dim % 2:
            raise ConfigError("ffn.k_dim", k_dim, why="must be even (two half-queries)")
        if not 1 <= topk <= n_keys:
            raise ConfigError("ffn.topk", topk, why=f"must be in [1, n_keys={n_keys}]")
        if query_norm not in QUERY_NORMS:
            raise ConfigError("ffn.query_norm", query_norm, QUERY_NORMS)
        self.d_model, self.n_keys, self.heads, self.k_dim, self.topk = (
            d_model, n_keys, heads, k_dim, topk)
        self.values_lr = values_lr
        self.query_norm = query_norm
        self.query = nn.Linear(d_model, heads * k_dim)
        self.query_bn = {"batchnorm": lambda: nn.BatchNorm1d(heads * k_dim),
                         "layernorm": lambda: nn.LayerNorm(heads * k_dim),
                         "none": nn.Identity}[query_norm]()
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, k_dim // 2))   # sub-keys C, C'
        # an nn.Embedding table read with F.embedding_bag: the trainer then treats the values as
        # an embedding (no weight decay by default), and sparse=True gives sparse gradients
        self.values = nn.Embedding(n_keys * n_keys, d_model, sparse=sparse)
        self.drop = nn.Dropout(dropout)
        self.init_weights()

    @property
    def position_wise(self) -> bool:
        return not (self.training and self.query_norm == "batchnorm")

    def init_weights(self) -> None:
        """Keys ~ U(±1/√(d_q/2)) like nn.Linear, values ~ N(0, d^-1/2) (the reference code)."""
        bound = 1.0 / math.sqrt(self.k_dim // 2)
        nn.init.uniform_(self.keys, -bound, bound)
        nn.init.normal_(self.values.weight, 0.0, self.d_model ** -0.5)

    def optimizer_groups(self) -> list[dict]:
        """The memory values as their own parameter group (the paper's separate, sparse Adam)."""
        g = {"params": [self.values.weight], "weight_decay": 0.0,
             "sparse": self.values.sparse}
        if self.values_lr is not None:
            g["lr"] = self.values_lr
        return [g]

    # -- search -------------------------------------------------------------------------------
    def search(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """q (T, H, d_q) → scores, indices (T, H, k): exact top-k over all n_keys² keys."""
        k, nk = self.topk, self.n_keys
        q1, q2 = q.chunk(2, dim=-1)                                        # (T, H, d_q/2)
        keys = self.keys.to(q.dtype)
        s1 = torch.einsum("thd,hkd->thk", q1, keys[:, 0])                  # (T, H, nk)
        s2 = torch.einsum("thd,hkd->thk", q2, keys[:, 1])
        s1, i1 = s1.topk(k, dim=-1)                                        # (T, H, k)
        s2, i2 = s2.topk(k, dim=-1)
        cand = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)           # (T, H, k²)
        scores, best = cand.topk(k, dim=-1)                                # (T, H, k)
        idx = i1.gather(-1, best // k) * nk + i2.gather(-1, best % k)     # key (i, j) → i·√N + j
        return scores, idx

    def _normalise(self, q: Tensor) -> Tensor:                            # (T, H·d_q)
        bn = self.query_bn
        if isinstance(bn, nn.BatchNorm1d) and bn.training and q.shape[0] < 2:
            # one token has no batch statistics: normalise it with the running ones (as in eval)
            return F.batch_norm(q, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                0.0, bn.eps)
        return bn(q)

    def forward(self, x: Tensor) -> Tensor:                                # (B, n, d) -> (B, n, d)
        shape = x.shape
        xt = x.reshape(-1, shape[-1])                                      # (T, d)
        q = self._normalise(self.query(xt)).view(-1, self.heads, self.k_dim)  # (T, H, d_q)
        scores, idx = self.search(q)
        w = scores.float().softmax(-1)                                     # (T, H, k)
        T = xt.shape[0]
        out = F.embedding_bag(idx.reshape(T, -1), self.values.weight, mode="sum",
                              sparse=self.values.sparse,
                              per_sample_weights=w.reshape(T, -1).to(self.values.weight.dtype))
        return self.drop(out.to(x.dtype)).view(shape)
