"""Hamburger: global context by matrix decomposition instead of attention.

Paper: Is Attention Better Than Matrix Decomposition? (Geng, Guo, Chen, Li, Wei & Lin, ICLR
2021), §2 eq. 1–3 (the burger), §2.2 (NMF and vector-quantisation "hams"), §2.3 (one-step
gradient); official ``NMF2D`` / ``VQ2D`` hams.

    Z = relu(X W_l)ᵀ  (d × n, the "lower bread"),   Z ≈ D Cᵀ  (D: d × r bases, C: n × r codes)
    H(Z) = D Cᵀ,   Y = H(Z)ᵀ W_u   (the "upper bread")

NMF (Lee & Seung multiplicative updates, K steps, C initialised by softmax(ZᵀD)):
    C ← C ⊙ (ZᵀD) / (C DᵀD),      D ← D ⊙ (Z C) / (D CᵀC)
VQ (soft k-means): C = softmax_r(cos(z_j, d_r)/T), D = Z C diag(1/colsum(C)).
The K steps run without gradient; one more (differentiable) coefficient step carries the
gradient ("one-step gradient", §2.3). Bases start from a fixed random non-negative buffer (the
paper redraws them per batch; fixed bases keep eval deterministic). Padded tokens are zero
columns of Z and get zero codes, so they do not influence the bases. Bidirectional only.
Complexity: time O(K n d r), memory O(n (d + r)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports

METHODS = ("nmf", "vq")


def nmf_step(Z: Tensor, D: Tensor, C: Tensor, eps: float = 1e-6):
    """One multiplicative update of C then D for Z ≈ D Cᵀ (Z: B×d×n, D: B×d×r, C: B×n×r)."""
    C = C * (Z.transpose(1, 2) @ D) / (C @ (D.transpose(1, 2) @ D) + eps)
    D = D * (Z @ C) / (D @ (C.transpose(1, 2) @ C) + eps)
    return D, C


def vq_step(Z: Tensor, D: Tensor, temperature: float, col_mask: Tensor | None):
    """Soft assignment of the columns of Z to the bases, then bases = assigned means."""
    sim = F.normalize(Z, dim=1).transpose(1, 2) @ F.normalize(D, dim=1)   # (B, n, r)
    C = (sim / temperature).softmax(-1)
    if col_mask is not None:
        C = C * col_mask.unsqueeze(-1)
    D = (Z @ C) / (C.sum(1, keepdim=True) + 1e-6)
    return D, C


@MIXERS.register(
    "hamburger", paper="Is Attention Better Than Matrix Decomposition? (Geng et al., ICLR 2021)",
    equation="eq. 1–3: Y = W_u · D Cᵀ with Z = relu(W_l X) ≈ D Cᵀ by K NMF multiplicative "
             "updates (or soft VQ), one-step gradient",
    complexity=("O(K n d r)", "O(n (d + r))"),
    test="tests/papers/test_linear_hamburger.py::test_nmf_updates_decrease_reconstruction_error",
    tiny={"rank": 4, "steps": 3})
class Hamburger(Mixer):
    """Lower bread → matrix-decomposition ham (NMF or VQ) → upper bread, over the sequence."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, rank: int = 64, steps: int = 6, method: str = "nmf",
                 inv_t: float = 1.0, temperature: float = 0.1, one_step_grad: bool = True,
                 bias: bool = True):
        super().__init__()
        if method not in METHODS:
            raise ConfigError("mixer.method", method, METHODS)
        if int(rank) < 1 or int(steps) < 0:
            raise ConfigError("mixer.rank", rank, why="rank must be >= 1 and steps >= 0")
        self.rank, self.steps, self.method = int(rank), int(steps), method
        self.inv_t, self.temperature, self.one_step_grad = inv_t, temperature, one_step_grad
        self.lower = nn.Linear(d_model, d_model, bias=bias)
        self.upper = nn.Linear(d_model, d_model, bias=bias)
        self.register_buffer("bases", F.normalize(torch.rand(d_model, self.rank), dim=0))

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        mask = ctx.query_mask(n)
        z = self.lower(x)
        dtype = z.dtype
        with fp32_region(x.device.type):
            z = upcast(z)
            if self.method == "nmf":
                z = F.relu(z)
            if mask is not None:
                z = z * mask.unsqueeze(-1).to(z.dtype)
            Z = z.transpose(1, 2)                                       # (B, d, n)
            rec = self.decompose(Z, mask)                               # (B, d, n)
        return self.upper(rec.transpose(1, 2).to(dtype)), None

    def decompose(self, Z: Tensor, mask: Tensor | None) -> Tensor:
        """D Cᵀ after K steps (no grad) and one differentiable step."""
        B = Z.shape[0]
        D = self.bases.to(Z.dtype).unsqueeze(0).expand(B, -1, -1)
        colm = None if mask is None else mask.to(Z.dtype)
        ctx = torch.no_grad() if self.one_step_grad else torch.enable_grad()
        with ctx:
            if self.method == "nmf":
                C = (self.inv_t * Z.transpose(1, 2) @ D).softmax(-1)
                for _ in range(self.steps):
                    D, C = nmf_step(Z, D, C)
            else:
                for _ in range(self.steps):
                    D, _ = vq_step(Z, D, self.temperature, colm)
        if self.one_step_grad:
            D = D.detach()
        if self.method == "nmf":
            if self.one_step_grad:
                C = C.detach()
            C = C * (Z.transpose(1, 2) @ D) / (C @ (D.transpose(1, 2) @ D) + 1e-6)
        else:
            _, C = vq_step(Z, D, self.temperature, colm)
        return D @ C.transpose(1, 2)
