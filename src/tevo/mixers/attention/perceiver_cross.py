"""Perceiver-style latent bottleneck: a small latent array cross-attends to a long input.

Papers: Perceiver: General Perception with Iterative Attention (Jaegle et al., 2021), §2;
Perceiver IO (Jaegle et al., 2022) for the output query; Perceiver AR (Hawthorne et al., 2022),
§3 for the causal form.
- bidirectional (Perceiver / Perceiver IO): m learned latents Z₀ cross-attend to the inputs,
      Z = Z₀ + CrossAttn(LN(Z₀), LN(X)),  then L latent blocks Z += SelfAttn(LN Z), Z += MLP(LN Z)
  (cost independent of n), and every token reads the latents back: y_i = CrossAttn(x_i, Z).
- causal (Perceiver AR): the latents are the last m positions themselves; latent i (position
  p_i) cross-attends to inputs ≤ p_i, the latent blocks are causal, and the mixer returns the
  latents' residual update at those positions and 0 for the context-only positions before them
  (as in Perceiver AR, whose earlier positions only serve as keys).
The mode is fixed at construction (``causal``), since the two forms have different parameters.
There is no incremental form: which positions are latents moves with the sequence's end.
Complexity: time O(n m d + L m² d); memory O(n m + L m²).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.attention import sdpa_attention
from ...nn.context import MixerContext
from ...nn.masks import causal_mask
from ...registry import MIXERS
from ..base import Mixer, Supports
from .softmax import SoftmaxAttention


class CrossAttention(nn.Module):
    """Multi-head attention from queries (B, m, d) to a context (B, n, d) with a boolean mask."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, z: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
        B, m, d = z.shape
        split = lambda t: t.view(B, t.shape[1], self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(x).chunk(2, -1)
        y = sdpa_attention(split(self.q(z)), split(k), split(v), mask=mask)   # (B, h, m, e)
        return self.out(y.transpose(1, 2).reshape(B, m, d))


class LatentBlock(nn.Module):
    """Pre-LN Transformer block on the latents (self-attention + MLP)."""

    def __init__(self, d_model: int, heads: int, mult: int):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SoftmaxAttention(d_model, heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, mult * d_model), nn.GELU(),
                                 nn.Linear(mult * d_model, d_model))

    def forward(self, z: Tensor, ctx: MixerContext) -> Tensor:
        z = z + self.attn(self.n1(z), ctx)[0]
        return z + self.mlp(self.n2(z))


@MIXERS.register(
    "perceiver_cross", paper="Perceiver (Jaegle et al., 2021); Perceiver IO (2022); "
                             "Perceiver AR (Hawthorne et al., 2022)",
    equation="Z = Z₀ + CrossAttn(Z₀, X); Z ← L × [Z + SelfAttn(Z); Z + MLP(Z)]; y_i = "
             "CrossAttn(x_i, Z) — causal (AR): Z₀ = last m positions, causal cross/self masks",
    complexity=("O(n m d + L m² d)", "O(n m + L m²)"),
    test="tests/papers/test_attention_perceiver_cross.py::test_latent_stack_cost_is_independent_of_n",
    tiny={"latents": 4, "heads": 2, "latent_layers": 1})
class PerceiverCrossAttention(Mixer):
    """Latent array cross-attending to the inputs, latent self-attention, tokens read back."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, latents: int = 64, heads: int = 4, latent_layers: int = 1,
                 mlp_mult: int = 2, causal: bool = False):
        super().__init__()
        if latents < 1 or latent_layers < 0 or heads < 1 or d_model % heads:
            raise ConfigError("mixer.latents", latents, why=f"need latents >= 1, latent_layers "
                              f">= 0 and heads dividing d_model={d_model}")
        self.n_latents, self.causal = latents, causal
        self.norm_x = nn.LayerNorm(d_model)
        self.encode = CrossAttention(d_model, heads)
        self.blocks = nn.ModuleList(LatentBlock(d_model, heads, mlp_mult)
                                    for _ in range(latent_layers))
        if not causal:                                     # Perceiver IO read-out, learned latents
            self.latents = nn.Parameter(torch.randn(latents, d_model) * 0.02)
            self.norm_z, self.norm_out = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.decode = CrossAttention(d_model, heads)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if ctx.causal != self.causal:
            raise ConfigError("mixer.causal", ctx.causal, why="perceiver_cross was built for "
                              f"{'causal' if self.causal else 'bidirectional'} use")
        B, n, d = x.shape
        qm = ctx.query_mask(n)
        valid = torch.ones(B, n, dtype=torch.bool, device=x.device) if qm is None else qm.bool()
        xn = self.norm_x(x)
        kmask = valid[:, None, None, :]                                      # (B, 1, 1, n)
        if self.causal:
            m = min(self.n_latents, n)
            z0 = xn[:, n - m:]                                               # last m positions
            mask = kmask & causal_mask(m, n, x.device)                       # latent i ≤ its pos
            lctx = MixerContext(causal=True, key_padding_mask=valid[:, n - m:])
        else:
            m = self.n_latents
            z0 = self.latents.unsqueeze(0).expand(B, m, d)
            mask, lctx = kmask, MixerContext(causal=False)
        zq = z0 if self.causal else self.norm_z(z0)         # causal latents are already normed
        z = z0 + self.encode(zq, xn, mask)
        for blk in self.blocks:                                              # cost independent of n
            z = blk(z, lctx)
        if self.causal:
            return torch.cat([x.new_zeros(B, n - m, d), (z - z0).to(x.dtype)], 1), None
        return self.decode(xn, self.norm_out(z), None), None
