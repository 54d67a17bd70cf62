"""Random Feature Attention (RFA), with its gate, and the LARA importance-sampling estimator.

Paper: Random Feature Attention (Peng et al., ICLR 2021), §2.2 eq. 2–3 (random Fourier features),
§3.1 eq. 5 (RFA), §3.2 eq. 7 (gating); Linear Complexity Randomized Self-attention Mechanism
(LARA; Zheng, Wang & Kong, ICML 2022), §3–4 eq. 6–11.

RFA (``estimator="rfa"``): q, k are ℓ2-normalised, so exp(qᵀk/σ²) ∝ exp(−‖q−k‖²/2σ²), and
    φ(x) = √(1/m)[sin(ωᵢᵀx), cos(ωᵢᵀx)],  ωᵢ ~ N(0, σ²I)  (σ learned per head)
    RFA(q_t) = φ(q_t)ᵀ S_t / max(φ(q_t)ᵀ z_t, c),   causal gate g_t = sigmoid(w_gᵀx_t + b_g):
    S_t = g_t S_{t-1} + (1 − g_t) φ(k_t) v_tᵀ,   z_t = g_t z_{t-1} + (1 − g_t) φ(k_t)
The floor c (``min_denominator``, default 10/m as in the authors' code) keeps the
sign-indefinite estimate of the normaliser away from 0: without it a 2×64 byte LM stays at the
unigram rate (4.88 bits/char after 160k tokens), with it 3.43.
Complexity O(n m d) time, O(h m d) state; three forms via ``tevo.nn.chunked`` (decay = log g).

LARA (``estimator="lara"``, bidirectional): softmax attention is the expectation of
f_n(ω) = Σ_m ξ(k_m,ω) v_m / Σ_m ξ(k_m,ω) under the query-specific posterior
p_n(ω) ∝ N(ω;0,I) ξ(q_n,ω) Σ_m ξ(k_m,ω), ξ(x,ω) = exp(ωᵀx − ‖x‖²/2). C proposals
q_c = N(μ_c, I), μ_c = q̄_c + k̄_c (segment means), one sample ω_c each (ω_c = μ_c in eval), and
self-normalised multiple importance sampling:
    LARA(q_n) = Σ_c softmax_c[log α_nc + log p̃_n(ω_c) − log q_c(ω_c)] f(ω_c),
    α_nc = q_c(ω_c)/Σ_c' q_c'(ω_c) + r_nc − mean_c r_nc,  r_nc = softmax_c(q_nᵀq̄_c)
Complexity O(n C d) time and memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import NEG, fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from .common import KernelAttention, key_mask, merge_heads, position_state_decay, rotate_qk
from .landmarks import segment_means

ESTIMATORS = ("rfa", "lara")


@MIXERS.register(
    "rfa", paper="Random Feature Attention (Peng et al., ICLR 2021); Linear Complexity "
                 "Randomized Self-attention Mechanism (LARA, Zheng et al., ICML 2022)",
    equation="RFA eq. 5/7: φ(q)ᵀS_t/φ(q)ᵀz_t, S_t = g_t S_{t-1} + (1−g_t)φ(k_t)v_tᵀ; "
             "LARA eq. 11: SNIS over C proposals N(q̄_c + k̄_c, I)",
    complexity=("O(n m d) (LARA: O(n C d))", "O(h m d) state (LARA: O(n C))"),
    test="tests/papers/test_linear_rfa.py::test_random_features_are_unbiased_in_expectation",
    tiny={"heads": 2, "chunk": 4, "nb_features": 4, "landmarks": 4})
class RandomFeatureAttention(KernelAttention):
    """RFA (random Fourier features, learned σ, optional recency gate) or LARA (bidirectional)."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 nb_features: int | None = None, gate: bool = True, estimator: str = "rfa",
                 landmarks: int = 16, redraw_every: int = 1000, form: str = "chunk",
                 chunk: int = 64, eps: float = 1e-6, bias: bool = False, causal: bool = True,
                 min_denominator: float | None = None):
        if estimator not in ESTIMATORS:
            raise ConfigError("mixer.estimator", estimator, ESTIMATORS)
        if estimator == "lara" and causal:
            raise ConfigError("mixer.estimator", estimator, ["rfa"],
                              why="LARA has no causal form (its proposals pool the whole "
                                  "sequence); use estimator 'rfa' in a causal model")
        fmap = {"name": "trig", "nb_features": nb_features, "redraw_every": redraw_every}
        super().__init__(d_model, heads, head_dim, fmap, form, chunk, "sum", eps, bias)
        self.estimator, self.use_gate = estimator, bool(gate)
        self.landmarks = int(landmarks)
        if self.landmarks < 1:
            raise ConfigError("mixer.landmarks", landmarks, why="must be >= 1")
        self.use_gate = self.use_gate and causal and estimator == "rfa"   # gating: causal RFA
        # sin/cos features estimate the kernel without sign: φ(q)ᵀz can come near 0 or below
        # and blow the output up. The authors' code clamps it from below (EPS = 0.1 at feature
        # scale 0.1, i.e. 10/m in units of the kernel estimate here); so do we.
        self.min_denominator = (10.0 / self.fmap.m if min_denominator is None
                                else float(min_denominator))
        if self.use_gate:
            self.gate_proj = nn.Linear(d_model, self.heads)

    def denominator(self, den: Tensor) -> Tensor:
        if self.estimator == "rfa" and self.min_denominator > 0:
            return den.clamp_min(self.min_denominator)
        return super().denominator(den)

    def qkv(self, x, ctx):
        q, k, v = super().qkv(x, ctx)
        if self.estimator == "rfa":              # RFA §3.1: unit-norm q, k (Gaussian kernel)
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v

    def gates(self, x, ctx):
        if not (self.use_gate and ctx.causal):
            return None, None
        logits = upcast(self.gate_proj(x)).transpose(1, 2)       # (B, h, n)
        return F.logsigmoid(logits), torch.sigmoid(-logits)       # log g_t, 1 − g_t

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if self.estimator == "rfa":
            return super().forward(x, ctx, state)
        if ctx.causal:
            raise ValueError("LARA is bidirectional only")
        position_state_decay(ctx, self.heads, "rfa (lara)", supported=False)
        B, n, _ = x.shape
        q, k, v = self.qkv(x, ctx)
        q, k, _ = rotate_qk(q, k, x, ctx)
        dtype = v.dtype
        with fp32_region(x.device.type):
            y = self.lara(upcast(q), upcast(k), upcast(v), ctx.query_mask(n))
        return self.o_proj(merge_heads(y.to(dtype))), None

    def lara(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """LARA estimate of softmax(qkᵀ/√e)v; q, k, v (B, h, n, e)."""
        e = q.shape[-1]
        qs, ks = q * e ** -0.25, k * e ** -0.25                    # exp(qk/√e) = exp(q̃k̃)
        if mask is not None:
            m4 = key_mask(mask, q)
            qs, ks, v = qs * m4, ks * m4, v * m4
        q_bar, ok = segment_means(qs, mask, self.landmarks)       # (B, h, C, e), (B, C)
        k_bar, _ = segment_means(ks, mask, self.landmarks)
        mu = q_bar + k_bar                                        # proposal means
        omega = mu + torch.randn_like(mu) if self.training else mu
        okc = ok[:, None, :]                                      # (B, 1, C)

        def log_xi(x):                                            # (B, h, C, n): log ξ(x, ω_c)
            return omega @ x.transpose(-1, -2) - 0.5 * (x * x).sum(-1)[:, :, None, :]

        lq, lk = log_xi(qs), log_xi(ks)
        if mask is not None:
            lk = lk.masked_fill(~mask[:, None, None, :], NEG)
        kv = lk.softmax(-1) @ v                                   # f(ω_c): (B, h, C, e)
        # log q_c'(ω_c) up to terms shared by all c' for a fixed sample c: (B, h, C, C')
        lprop_all = omega @ mu.transpose(-1, -2) - 0.5 * (mu * mu).sum(-1)[:, :, None, :]
        lprop_all = lprop_all.masked_fill(~okc[:, :, None, :], NEG)
        lprop = lprop_all.diagonal(dim1=-2, dim2=-1)              # log q_c(ω_c): (B, h, C)
        bh = (lprop - torch.logsumexp(lprop_all, -1)).exp()       # balance heuristic
        r = (qs @ q_bar.transpose(-1, -2)).masked_fill(~okc[:, :, None, :], NEG).softmax(-1)
        rbar = (r * okc[:, :, None, :]).sum(-1, keepdim=True) / ok.sum(-1).clamp_min(1)[
            :, None, None, None]
        alpha = (bh[:, :, None, :] + r - rbar).clamp_min(1e-8)     # (B, h, n, C)
        log_iw = alpha.log() + lq.transpose(-1, -2) \
            + torch.logsumexp(lk, -1)[:, :, None, :] - lprop[:, :, None, :]
        log_iw = log_iw.masked_fill(~okc[:, :, None, :], NEG)
        return log_iw.softmax(-1) @ kv                            # (B, h, n, e)
