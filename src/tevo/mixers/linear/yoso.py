"""YOSO: You Only Sample (Almost) Once — attention by Bernoulli sampling with LSH.

Paper: You Only Sample (Almost) Once: Linear Cost Self-Attention Via Bernoulli Sampling (Zeng,
Xiong, Ravi, Acharya, Fung & Singh, ICML 2021), §3 eq. 4–8; numbers as Hugging Face's
``YosoSelfAttention`` (expectation path).

q, k are ℓ2-normalised. A random-hyperplane hash with τ bits makes q and k collide with
probability (1 − θ(q, k)/π)^τ (θ the angle), so the attention weight is a Bernoulli variable:

    B(q_i, k_j) ~ Bernoulli((1 − arccos(q̂_iᵀk̂_j)/π)^τ)
    YOSO(Q, K, V)_i = normalise( Σ_j E[B(q_i, k_j)] v_j )             (``mode="expectation"``)
                    ≈ normalise( (1/m) Σ_{hashes h} Σ_j 1[h(q_i) = h(k_j)] v_j )   (``"sample"``)

The sampled form adds each value into its key's bucket of a 2^τ-entry table per hash and reads
the query's bucket: O(n m (d + τ) + m 2^τ d), linear in n; causally it runs chunk by chunk
(within-chunk collisions + the table of earlier chunks), and the table is the decoding state
(it does not grow with n). Hash planes are drawn at construction (a buffer: fixed in eval);
training uses the expectation (exact gradients, as Hugging Face does: the sampled indicator has
none). The output is ℓ2-normalised per head (as the reference). Complexity: expectation
O(n² d); sample O(n m d + m 2^τ d).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.masks import attention_mask
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, key_mask, merge_heads, project_qkv, qkvo, rotate_qk

MODES = ("sample", "expectation")


def collision_probability(cos: Tensor, tau: int) -> Tensor:
    """(1 − arccos(cos)/π)^τ: the chance that τ random hyperplanes put two unit vectors with
    cosine ``cos`` on the same side of every plane."""
    return (1 - torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)) / math.pi) ** tau


def hash_codes(x: Tensor, planes: Tensor) -> Tensor:
    """x (…, n, e), planes (m, τ, e) → (…, n, m) integer codes in [0, 2^τ)."""
    bits = (torch.einsum("...ne,mte->...nmt", x, planes.to(x.dtype)) > 0).long()
    return (bits << torch.arange(planes.shape[1], device=x.device)).sum(-1)


@MIXERS.register(
    "yoso", paper="You Only Sample (Almost) Once (Zeng et al., ICML 2021)",
    equation="eq. 4–8: Y_i = normalise(Σ_j B(q_i,k_j) v_j), E[B] = (1 − arccos(q̂ᵀk̂)/π)^τ, "
             "B sampled by m τ-bit random-hyperplane hashes",
    complexity=("sample O(n m d + m 2^τ d); expectation O(n² d)",
                "sample O(n d + m 2^τ d); expectation O(n²)"),
    test="tests/papers/test_linear_yoso.py::test_collision_probability_matches_angular_kernel",
    tiny={"heads": 2, "hash_bits": 3, "n_hashes": 8, "chunk": 4})
class YOSOAttention(Mixer):
    """Bernoulli-sampling LSH attention with its expectation (angular kernel) as training path."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 hash_bits: int = 8, n_hashes: int = 32, mode: str = "sample", chunk: int = 64,
                 conv_window: int | None = None, bias: bool = True, causal: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ConfigError("mixer.mode", mode, MODES)
        if not 1 <= int(hash_bits) <= 16:
            raise ConfigError("mixer.hash_bits", hash_bits, why="must be in 1..16")
        if int(n_hashes) < 1 or int(chunk) < 1:
            raise ConfigError("mixer.n_hashes", n_hashes, why="n_hashes and chunk must be >= 1")
        if conv_window and causal:
            raise ConfigError("mixer.conv_window", conv_window,
                              why="the centred conv on V sees future tokens; not in a causal "
                                  "model")
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.tau, self.m, self.mode, self.chunk = int(hash_bits), int(n_hashes), mode, int(chunk)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)
        self.register_buffer("planes", torch.randn(self.m, self.tau, self.head_dim))
        self.conv = None
        if conv_window:
            self.conv = nn.Conv2d(self.heads, self.heads, (int(conv_window), 1),
                                  padding=(int(conv_window) // 2, 0), groups=self.heads,
                                  bias=False)

    @torch.no_grad()
    def redraw(self) -> None:
        self.planes.normal_()

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v = project_qkv(self, x)
        q, k, pos = rotate_qk(q, k, x, ctx)
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            q, k, v = F.normalize(upcast(q), dim=-1), F.normalize(upcast(k), dim=-1), upcast(v)
            if mask is not None:
                v = v * key_mask(mask, v)
            if self.mode == "expectation" or self.training:
                y, new_state = self._expectation(q, k, v, ctx, state)
            else:
                y, new_state = self._sample(q, k, v, mask, ctx.causal, state)
            y = F.normalize(y, dim=-1)
            if self.conv is not None:
                y = y + self.conv(v)
        return self.o_proj(merge_heads(y.to(dtype))), new_state

    def _expectation(self, q, k, v, ctx, state):
        if state is not None and "k" in state:                    # K/V cache
            k, v = torch.cat([state["k"], k], 2), torch.cat([state["v"], v], 2)
        new_state = None if state is None else {"k": k, "v": v}
        E = collision_probability(q @ k.transpose(-1, -2), self.tau)  # (B, h, n, n_k)
        allowed = attention_mask(q.shape[2], k.shape[2], ctx.causal, ctx.key_padding_mask,
                                 q.device)
        if allowed is not None:
            E = E * allowed
        return E @ v, new_state

    def _sample(self, q, k, v, mask, causal, state):
        """Bucket sums per hash: T[h, code] = Σ v_j over keys with that code."""
        B, h, n, e = v.shape
        nb = 2 ** self.tau
        qc, kc = hash_codes(q, self.planes), hash_codes(k, self.planes)   # (B, h, n, m)
        table = (state or {}).get("table", v.new_zeros(B, h, self.m, nb, e))
        if not causal:
            table = table.scatter_add(3, kc.transpose(2, 3).unsqueeze(-1).expand(-1, -1, -1, -1,
                                                                                e),
                                      v.unsqueeze(2).expand(-1, -1, self.m, -1, -1))
            y = table.gather(3, qc.transpose(2, 3).unsqueeze(-1).expand(-1, -1, -1, -1, e))
            return y.mean(2), None
        outs = []
        for s in range(0, n, self.chunk):
            qs, ks, vs = qc[:, :, s:s + self.chunk], kc[:, :, s:s + self.chunk], \
                v[:, :, s:s + self.chunk]
            hit = (qs[:, :, :, None, :] == ks[:, :, None, :, :]).to(v.dtype).mean(-1)  # (B,h,L,L)
            intra = hit.tril() @ vs
            idx = qs.transpose(2, 3).unsqueeze(-1).expand(-1, -1, -1, -1, e)      # (B,h,m,L,e)
            inter = table.gather(3, idx).mean(2)
            outs.append(intra + inter)
            table = table.scatter_add(3, ks.transpose(2, 3).unsqueeze(-1).expand(-1, -1, -1, -1,
                                                                                 e),
                                      vs.unsqueeze(2).expand(-1, -1, self.m, -1, -1))
        new_state = None if state is None else {"table": table}
        return torch.cat(outs, 2), new_state
