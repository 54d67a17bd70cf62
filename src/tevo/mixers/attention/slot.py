"""Slot attention: K slots compete for the input tokens over T iterations.

Paper: Object-Centric Learning with Slot Attention (Locatello et al., 2020), Algorithm 1:
    slots ~ N(μ, diag σ²)                                   (K slots, learned μ, σ)
    repeat T times:
        attn = softmax_over_slots( k(LN(x)) · q(LN(slots))ᵀ / √D )       (tokens × slots)
        W = attn / Σ_tokens attn                                          (weighted mean)
        updates = Wᵀ v(LN(x))
        slots = GRU(updates, slots);  slots += MLP(LN(slots))
The softmax runs over the slots (they compete for each token), the mean over the tokens, so the
module is permutation-equivariant in the slots. As a token mixer the tokens then read the
slots back through the final assignment: y_i = Σ_k attn_ik · slot_k (the paper decodes slots with
a broadcast decoder; this is its token-level analogue). Initial slots are sampled per sample in
training and use a fixed draw (a buffer from ``seed``) in evaluation, so inference is
deterministic and batch independent. Padded tokens take no part. No causal form.
Complexity: time O(T n K D + T K D²); memory O(n K).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "slot", paper="Object-Centric Learning with Slot Attention (Locatello et al., 2020)",
    equation="Alg. 1: attn = softmax_slots(k(x) q(slots)ᵀ/√D); updates = (attn/Σ_i attn)ᵀ v(x); "
             "slots = GRU(updates, slots) + MLP; T iterations; y_i = Σ_k attn_ik slot_k",
    complexity=("O(T n K D)", "O(n K)"),
    test="tests/papers/test_attention_slot.py::test_slot_attention_is_permutation_equivariant_over_slots",
    tiny={"slots": 3, "iters": 2, "hidden": 32})
class SlotAttention(Mixer):
    """Iterative slot attention (softmax over slots, GRU update); tokens read their slots back."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, slots: int = 8, iters: int = 3, hidden: int | None = None,
                 eps: float = 1e-8, seed: int = 0):
        super().__init__()
        if slots < 1 or iters < 1:
            raise ConfigError("mixer.slots", slots, why="need slots >= 1 and iters >= 1")
        self.n_slots, self.iters, self.eps, self.d = slots, iters, eps, d_model
        self.mu = nn.Parameter(torch.randn(1, 1, d_model) * d_model ** -0.5)
        self.log_sigma = nn.Parameter(torch.full((1, 1, d_model), math.log(d_model ** -0.5)))
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("eval_noise", torch.randn(1, slots, d_model, generator=g))
        self.norm_in, self.norm_slots, self.norm_mlp = (nn.LayerNorm(d_model) for _ in range(3))
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.gru = nn.GRUCell(d_model, d_model)
        hidden = hidden or 2 * d_model
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, d_model))

    def initial_slots(self, batch: int) -> Tensor:
        noise = torch.randn(batch, self.n_slots, self.d, device=self.mu.device) if self.training \
            else self.eval_noise.expand(batch, -1, -1)
        return self.mu + self.log_sigma.exp() * noise                    # (B, K, D)

    def assign(self, k: Tensor, slots: Tensor, valid: Tensor) -> Tensor:
        """Softmax over slots of k·q(LN(slots))/√D: (B, n, K), zero rows for padding."""
        q = self.q(self.norm_slots(slots))
        logits = torch.einsum("bnd,bkd->bnk", k, q) / math.sqrt(self.d)
        return logits.float().softmax(-1) * valid.unsqueeze(-1)

    def run(self, x: Tensor, slots: Tensor, valid: Tensor):
        """Algorithm 1 from given initial slots: final slots (B, K, D), attention (B, n, K)."""
        B, K, D = slots.shape
        xn = self.norm_in(x)
        k, v = self.k(xn), self.v(xn)
        for _ in range(self.iters):
            attn = self.assign(k, slots, valid)                          # (B, n, K)
            w = attn / (attn.sum(1, keepdim=True) + self.eps)            # mean over tokens
            updates = torch.einsum("bnk,bnd->bkd", w.to(v.dtype), v)
            slots = self.gru(updates.reshape(B * K, D), slots.reshape(B * K, D)).view(B, K, D)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, self.assign(k, slots, valid)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if ctx.causal:
            raise ConfigError("mixer", "slot", why="slot attention has no causal form")
        B, n, _ = x.shape
        qm = ctx.query_mask(n)
        valid = torch.ones(B, n, dtype=torch.bool, device=x.device) if qm is None else qm.bool()
        slots, attn = self.run(x, self.initial_slots(B), valid)
        return torch.einsum("bnk,bkd->bnd", attn.to(slots.dtype), slots), None
