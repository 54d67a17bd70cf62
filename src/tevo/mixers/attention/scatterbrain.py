"""Scatterbrain: sparse + low-rank approximation of the attention matrix.

Paper: Scatterbrain: Unifying Sparse and Low-rank Attention Approximation (Chen et al., 2021),
§3, eq. 3: with the unnormalised attention matrix A = exp(QKᵀ/√d),
    Ã = L + S,   L = φ(Q) φ(K)ᵀ  (Performer random features, unbiased for A),
                 S = (A − L) restricted to a sparse support (here a local band |i − j| ≤ w),
so Ã equals A exactly on the support and is the low-rank estimate elsewhere; the output is
Ã V / Ã 1. φ is FAVOR+ with positive orthogonal random features (Performer, Choromanski et al.,
2021): φ(x) = exp(ω x̃ − ‖x̃‖²/2)/√m, x̃ = x/d^{1/4}, ω rows orthogonal with χ_d norms, fixed by
``seed``. Every row is scaled by one constant (a stabiliser that cancels in Ã V / Ã 1).
The band is gathered (O(n w) memory); L uses the associative form (prefix sums when causal).
Decode steps use the dense form of the same matrix over the KV cache.
Complexity: time O(n (w + m) d); memory O(n w + n m d) causal, O(n (w + m) + m d) otherwise.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import band_indices, gather_keys
from ...registry import MIXERS
from ..base import Supports
from .positional import PositionalAttention

PARTS = ("sparse", "lowrank")


def orthogonal_features(heads: int, m: int, e: int, generator: torch.Generator) -> Tensor:
    """(h, m, e) random features: stacked orthogonal e×e blocks, rows rescaled to χ_e norms."""
    out = []
    for _ in range(heads):
        blocks = []
        for _ in range(math.ceil(m / e)):
            qm, r = torch.linalg.qr(torch.randn(e, e, generator=generator))
            blocks.append((qm * torch.sign(torch.diagonal(r))).t())      # Haar-distributed
        w = torch.cat(blocks)[:m]
        out.append(w * torch.randn(m, e, generator=generator).norm(dim=-1, keepdim=True))
    return torch.stack(out)


def log_features(x: Tensor, omega: Tensor) -> Tensor:
    """log φ(x) = ω·x̃ − ‖x̃‖²/2 − ½ log m with x̃ = x/d^{1/4}: x (B, h, n, e) → (B, h, n, m)."""
    xs = x.float() / x.shape[-1] ** 0.25
    return torch.einsum("bhne,hme->bhnm", xs, omega.float()) - (xs * xs).sum(-1, keepdim=True) / 2 \
        - 0.5 * math.log(omega.shape[1])


def scatterbrain_attention(q: Tensor, k: Tensor, v: Tensor, omega: Tensor, window: int,
                           causal: bool, valid: Tensor | None = None,
                           parts: tuple = PARTS) -> Tensor:
    """(L + S) V / (L + S) 1 over the keys each query may see; q, k, v (B, h, n, e).
    ``parts`` = ("sparse",) gives band-only softmax, ("lowrank",) the Performer estimate."""
    B, h, n, e = q.shape
    valid = torch.ones(B, n, dtype=torch.bool, device=q.device) if valid is None else valid
    idx, inside = band_indices(n, window, 0 if causal else window, q.device)
    ok = (inside & valid[:, idx])[:, None]                                  # (B, 1, n, W)
    kg, vg = gather_keys(k, idx[None, None]).float(), gather_keys(v, idx[None, None]).float()
    s = torch.einsum("bhqe,bhqwe->bhqw", q.float(), kg) / math.sqrt(e)
    s = s.masked_fill(~ok, float("-inf"))
    a = log_features(q, omega)                                              # (B, h, n, m)
    c = torch.maximum(a.amax(-1), s.amax(-1)).detach().unsqueeze(-1)        # row stabiliser
    exact = torch.exp(s - c)                                                # A on the band
    num, den = 0.0, 0.0
    if "lowrank" in parts:
        fq = torch.exp(a - c)
        fk = torch.exp(log_features(k, omega)) * valid[:, None, :, None]
        vf = v.float()
        if causal:
            kv = torch.cumsum(torch.einsum("bhnm,bhne->bhnme", fk, vf), 2)
            num = torch.einsum("bhnm,bhnme->bhne", fq, kv)
            den = (fq * torch.cumsum(fk, 2)).sum(-1)
        else:
            num = fq @ torch.einsum("bhnm,bhne->bhme", fk, vf)
            den = fq @ fk.sum(2).unsqueeze(-1)
            den = den.squeeze(-1)
        if "sparse" in parts:                               # S = A − L on the band
            low = torch.einsum("bhqm,bhqwm->bhqw", fq, gather_keys(fk, idx[None, None])) * ok
            exact = exact - low
        else:
            exact = torch.zeros_like(exact)
    num = num + torch.einsum("bhqw,bhqwe->bhqe", exact, vg)
    den = (den + exact.sum(-1)).unsqueeze(-1)
    return torch.where(den > 0, num / den.clamp(min=1e-30), 0.0)    # padded rows: no keys


def scatterbrain_dense(q, k, v, omega, window, causal, q_pos, k_pos, valid,
                       parts: tuple = PARTS) -> Tensor:
    """The same matrix written densely over (n_q, n_k) keys (decode steps, reference)."""
    dist = q_pos[:, :, None] - k_pos[:, None, :]
    seen = valid[:, None, :] & ((dist >= 0) if causal else torch.ones_like(dist, dtype=torch.bool))
    band = (seen & (dist.abs() <= window))[:, None]                         # (B, 1, n_q, n_k)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    a = log_features(q, omega)
    c = torch.maximum(a.amax(-1), s.masked_fill(~band, float("-inf")).amax(-1)).detach().unsqueeze(-1)
    low = torch.exp(a - c) @ torch.exp(log_features(k, omega)).transpose(-1, -2)
    if "sparse" not in parts:
        A = low
    else:
        A = torch.where(band, torch.exp(s - c), low if "lowrank" in parts else 0.0)
    A = A * seen[:, None]
    den = A.sum(-1, keepdim=True)
    return torch.where(den > 0, (A @ v.float()) / den.clamp(min=1e-30), 0.0)


@MIXERS.register(
    "scatterbrain", paper="Scatterbrain: Unifying Sparse and Low-rank Attention Approximation "
                          "(Chen et al., 2021)",
    equation="§3 eq. 3: Ã = φ(Q)φ(K)ᵀ + S, S = (exp(QKᵀ/√d) − φ(Q)φ(K)ᵀ) on a band |i−j| ≤ w; "
             "y = ÃV / Ã1",
    complexity=("O(n (w + m) d)", "O(n w + n m d)"),
    test="tests/papers/test_attention_scatterbrain.py::test_scatterbrain_error_below_each_part",
    tiny={"heads": 2, "window": 2, "features": 8})
class ScatterbrainAttention(PositionalAttention):
    """Local-band exact attention + Performer low-rank estimate elsewhere, combined unbiasedly."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, window: int = 16, features: int = 64,
                 seed: int = 0, parts: list | tuple = PARTS):
        super().__init__(d_model, heads, None, head_dim, bias, 0.0, "eager")
        parts = tuple([parts] if isinstance(parts, str) else parts)
        if not parts or any(p not in PARTS for p in parts):
            raise ConfigError("mixer.parts", parts, PARTS)
        if window < 0 or features < 1:
            raise ConfigError("mixer.features", features, why="need window >= 0, features >= 1")
        self.window, self.parts = window, parts
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("omega", orthogonal_features(heads, features, self.head_dim, g))

    def attend_full(self, q, k, v, valid, ctx: MixerContext) -> Tensor:
        return scatterbrain_attention(q, k, v, self.omega, self.window, ctx.causal, valid, self.parts)

    def attend_dense(self, q, k, v, q_pos, k_pos, valid, ctx: MixerContext) -> Tensor:
        return scatterbrain_dense(q, k, v, self.omega, self.window, ctx.causal, q_pos, k_pos,
                                  valid, self.parts)
