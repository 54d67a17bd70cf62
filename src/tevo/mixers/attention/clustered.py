"""Clustered attention: queries grouped by k-means share one attention distribution.

Paper: Fast Transformers with Clustered Attention (Vyas, Katharopoulos & Fleuret, 2020).
- §3.2 clustered attention: cluster the N queries into C groups (centroids Q^c = mean of the
  member queries), compute A^c = softmax(Q^c Kᵀ/√d) once per cluster, and give every query its
  cluster's output: V̂_i = A^c_{c(i)} V   (eq. 5-6);
- §3.3 improved clustered attention (``topk`` > 0): per cluster keep the k keys with largest
  A^c; each query recomputes exact dot products on them, scaled by the cluster's mass m̂ on those
  keys, and keeps the centroid weights elsewhere:
      Â_ij = m̂_c · softmax_{j∈T_c}(q_i·k_j/√d)  for j ∈ T_c,   Â_ij = A^c_j  otherwise (eq. 9).
The paper clusters LSH (Hamming) codes of the queries for speed on GPUs; here Lloyd's k-means
runs directly on the queries (per sample and head, fixed initialisation from evenly spaced real
tokens, ``iterations`` rounds), padded queries excluded. Clustering all queries at once has no
causal form. With C ≥ n every query is its own centroid and this is softmax attention.
Complexity: time O(I n C d + n C d + n k d); memory O(n C + n k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import gathered_attention
from ...registry import MIXERS
from ..base import Supports
from .softmax import MultiHeadAttentionBase


def kmeans_queries(q: Tensor, valid: Tensor, clusters: int, iterations: int):
    """Lloyd's k-means on the queries of every (sample, head). q (B, h, n, e), valid (B, n).
    Returns assignments (B, h, n) and differentiable centroids (B, h, C, e) (member means)."""
    B, h, n, e = q.shape
    qd = q.detach().float()
    n_real = valid.sum(1)                                                  # (B,)
    real_idx = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)   # real tokens first
    c = torch.arange(clusters, device=q.device)
    pick = (c[None] * n_real[:, None] // clusters).clamp(max=n - 1)         # evenly spaced
    src = torch.gather(real_idx, 1, pick)                                   # (B, C) token ids
    cent = torch.gather(qd, 2, src[:, None, :, None].expand(B, h, clusters, e))
    vm = valid[:, None, :, None].float()
    for _ in range(iterations + 1):
        assign = torch.cdist(qd, cent).argmin(-1)                           # (B, h, n)
        onehot = F.one_hot(assign, clusters).float() * vm                   # (B, h, n, C)
        cnt = onehot.sum(2).unsqueeze(-1)                                   # (B, h, C, 1)
        cent = torch.where(cnt > 0, onehot.transpose(-1, -2) @ qd / cnt.clamp(min=1), cent)
    centroids = onehot.transpose(-1, -2) @ q.float() / cnt.clamp(min=1)    # gradients reach q
    return assign, centroids


@MIXERS.register(
    "clustered", paper="Fast Transformers with Clustered Attention (Vyas et al., 2020)",
    equation="§3.2 eq. 5-6: A^c = softmax(Q^c Kᵀ/√d), V̂_i = A^c_{c(i)} V; §3.3 eq. 9 (topk > 0): "
             "exact weights on each cluster's top-k keys scaled by its mass m̂",
    complexity=("O(I n C d + n k d)", "O(n C + n k)"),
    test="tests/papers/test_attention_clustered.py::test_clustered_with_n_clusters_equals_softmax",
    tiny={"heads": 2, "clusters": 3, "iterations": 2})
class ClusteredAttention(MultiHeadAttentionBase):
    """Queries clustered by k-means attend through their centroid (optionally improved top-k)."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, clusters: int = 32, iterations: int = 5,
                 topk: int = 0):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        if clusters < 1 or iterations < 0 or topk < 0:
            raise ConfigError("mixer.clusters", clusters,
                              why="need clusters >= 1, iterations >= 0, topk >= 0")
        self.clusters, self.iterations, self.topk = clusters, iterations, topk

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        if ctx.causal:
            raise ConfigError("mixer", "clustered", why="clustered attention has no causal form")
        B, h, n, e = q.shape
        n_k = k.shape[2]
        kpm = ctx.key_padding_mask
        kvalid = torch.ones(B, n_k, dtype=torch.bool, device=q.device) if kpm is None else kpm.bool()
        qm = ctx.query_mask(n)
        qvalid = kvalid[:, -n:] if qm is None else qm.bool()
        assign, cent = kmeans_queries(q, qvalid, self.clusters, self.iterations)
        s = (cent @ k.float().transpose(-1, -2)) / math.sqrt(e)             # (B, h, C, n_k)
        A = torch.softmax(s.masked_fill(~kvalid[:, None, None, :], float("-inf")), -1)
        Vc = A @ v.float()                                                 # (B, h, C, e)
        pick = lambda t: torch.gather(t, 2, assign.unsqueeze(-1).expand(B, h, n, t.shape[-1]))
        if self.topk == 0:
            return pick(Vc)
        kk = min(self.topk, n_k)
        top_w, top_i = A.topk(kk, -1)                                      # (B, h, C, k)
        mass = top_w.sum(-1, keepdim=True)                                 # m̂_c
        v_top = top_w.unsqueeze(-1).mul(torch.gather(
            v.float().unsqueeze(2).expand(B, h, self.clusters, n_k, e), 3,
            top_i.unsqueeze(-1).expand(B, h, self.clusters, kk, e))).sum(3)   # Σ_T A^c v
        idx = pick(top_i)                                                  # (B, h, n, k)
        ok = torch.gather(kvalid[:, None, None, :].expand(B, h, n, n_k), 3, idx)
        exact = gathered_attention(q, k, v, idx, ok, 1 / math.sqrt(e))     # softmax on T_c
        return pick(mass) * exact + pick(Vc - v_top)
