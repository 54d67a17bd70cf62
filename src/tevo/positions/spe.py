"""SPE: stochastic positional encoding, relative position inside linear (kernel) attention.

Paper: Relative Positional Encoding for Transformers with Linear Complexity (Liutkus, Cífka, Wu,
Şimşekli, Yang & Richard, ICML 2021), convolutional SPE (reference aliutkus/spe
``ConvSPE`` + ``SPEFilter``); the same goal as Luo et al. 2021 (kernelized attention with RPE
via FFT/Toeplitz products) and Horn et al. 2021, reached without leaving the O(n) form:
    Q̄_d = Z_d * f^Q_d,  K̄_d = Z_d * f^K_d   (Z_d: R independent white-noise sequences),
    q̂_{i,r} = Σ_d Q̄_{d,r}(i) q_{i,d},  k̂_{j,r} = Σ_d K̄_{d,r}(j) k_{j,d},
    E[q̂_i·k̂_j] = Σ_d q_{i,d} k_{j,d} P_d(j - i),   P_d(t) = Σ_a f^Q_d[a] f^K_d[a + t],
i.e. in expectation the attention kernel carries a learned relative (Toeplitz) term P_d per
channel. The codes are convolutions computed with the FFT (the Toeplitz product). Gated SPE
mixes in a position-free noise with learned weight g_d: P_d -> (1 - g_d)·P_d + g_d.
tevo specifics (why):
  - the white noise is a fixed function of (seed, absolute position, channel, realization)
    (an integer hash), so the code of position t is the same whenever it is computed: cached
    keys and later queries see one realization, and prefill + steps == one full pass;
    in training a fresh seed is drawn per call (new realizations, as the reference does);
  - q̂, k̂ are scaled by R^{-1/2} so q̂·k̂ is an unbiased estimate of the kernel above;
  - where it is applied (``stage``): by default (``"qk"``) as in the paper (§3.3, and the
    reference's ``SPEFilter`` placed before the Performer), on the raw queries and keys — the
    mixer then applies its feature map to q̂, k̂ — so q̂·k̂ is the relative kernel above in
    expectation and the feature map keeps kernel attention's normaliser positive. The mixer
    calls ``features`` before its map when the encoding sets ``before_feature_map``. Since the
    feature map reads q̂ as a query of the same size, ``realizations`` is the per-head size
    there. ``stage="features"`` applies SPE to φ(q), φ(k) instead (a tevo variant), followed,
    with ``positive=True``, by elu+1 to keep the normaliser positive.
Complexity: time O(R·C·(n+K) log(n+K)) for the codes (C = heads·features) plus O(n·C·R),
memory O(R·C·(n+K)); parameters 2·C·K (+ C gates). Output features: R per head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding

_M32 = 0xFFFFFFFF
STAGES = ("qk", "features")


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser (stays below 2^58 in int64, so no overflow)."""
    x = x & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def hashed_normal(seed: int, positions: Tensor, channels: int, realizations: int,
                  stream: int = 0) -> Tensor:
    """Standard normal noise that is a pure function of (seed, position, channel, realization):
    positions (L,) int -> (R, C, L) float32 (Box–Muller on two hashed uniforms)."""
    dev = positions.device
    p = positions.long()[None, None, :]
    c = torch.arange(channels, device=dev)[None, :, None]
    r = torch.arange(realizations, device=dev)[:, None, None]
    h = _mix32(torch.tensor(seed, device=dev) ^ (stream * 0x9E3779B9))
    h = _mix32(h ^ (p & _M32))
    h = _mix32(h ^ c)
    h = _mix32(h ^ (2 * r))
    u1 = (_mix32(h ^ 0x68E31DA4).double() + 0.5) / 2.0 ** 32
    u2 = (_mix32(h ^ 0x1B56C4E9).double() + 0.5) / 2.0 ** 32
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()


def causal_conv_fft(z: Tensor, f: Tensor) -> Tensor:
    """y[..., c, t] = Σ_a f[c, a] z[..., c, t + K - 1 - a] for t in [0, L - K + 1): the causal
    (Toeplitz) filtering of z (…, C, L) by f (C, K), computed with the FFT."""
    L, K = z.shape[-1], f.shape[-1]
    N = 1 << (L + K - 1 - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(z, n=N) * torch.fft.rfft(f, n=N), n=N)
    return y[..., K - 1:L]


@POSITIONS.register(
    "spe", paper="Relative Positional Encoding for Transformers with Linear Complexity (SPE; "
                 "Liutkus et al., 2021); Stable, Fast and Accurate: Kernelized Attention with "
                 "RPE (Luo et al., 2021); Translational Equivariance in Kernelizable Attention "
                 "(Horn et al., 2021)",
    equation="convSPE: Q̄ = Z*f^Q, K̄ = Z*f^K (FFT), q̂_i = Σ_d Q̄_d(i) q_id, "
             "E[q̂_i·k̂_j] = Σ_d q_id k_jd P_d(j-i); then the mixer's φ(q̂), φ(k̂)",
    complexity=("O(R C n log n)", "O(R C n)"),
    test="tests/papers/test_positions_spe.py::test_spe_codes_equal_explicit_toeplitz_product",
    tiny={"kernel_size": 4})
class StochasticPositionalEncoding(PositionEncoding):
    """Convolutional SPE on the queries/keys of kernel attention, before its feature map."""

    hooks = frozenset({"feature"})
    translation_invariant = "in expectation"   # over the noise: see the paper test

    def __init__(self, heads: int = 4, head_dim: int = 64, features: int | None = None,
                 realizations: int | None = None, kernel_size: int = 32, gated: bool = True,
                 positive: bool = True, seed: int = 0, stage: str = "qk"):
        super().__init__()
        if stage not in STAGES:
            raise ConfigError("position.stage", stage, STAGES)
        self.heads, self.m = heads, head_dim if features is None else int(features)
        if realizations is None:
            realizations = self.m if stage == "qk" else 64
        if int(realizations) < 1 or int(kernel_size) < 1:
            raise ConfigError("position.realizations", realizations,
                              why="realizations and kernel_size must be >= 1")
        if stage == "qk" and int(realizations) != self.m:
            raise ConfigError("position.realizations", realizations,
                              why=f"with stage=qk the mixer's feature map reads q̂ in place of q, "
                                  f"so realizations must equal the per-head size {self.m} "
                                  f"(or set stage=features)")
        self.stage = stage
        self.before_feature_map = stage == "qk"
        self.R, self.K = int(realizations), int(kernel_size)
        self.gated, self.positive, self.seed = bool(gated), bool(positive), int(seed)
        C = heads * self.m
        # reference init: U(0, 1) / sqrt(K / 2)
        self.filter_q = nn.Parameter(torch.rand(C, self.K) / math.sqrt(self.K / 2))
        self.filter_k = nn.Parameter(torch.rand(C, self.K) / math.sqrt(self.K / 2))
        self.gate = nn.Parameter(torch.randn(C)) if self.gated else None

    def codes(self, lo: int, hi: int, seed: int, device) -> tuple[Tensor, Tensor]:
        """Q̄, K̄ at positions lo..hi: (R, C, hi - lo + 1) each."""
        C = self.heads * self.m
        pos = torch.arange(lo - self.K + 1, hi + 1, device=device)
        z = hashed_normal(seed, pos, C, self.R)                          # (R, C, L + K - 1)
        qbar = causal_conv_fft(z, self.filter_q.float())
        kbar = causal_conv_fft(z, self.filter_k.float())
        if self.gated:
            g = torch.sigmoid(self.gate.float())[:, None]                # (C, 1)
            eta = hashed_normal(seed, torch.zeros(1, dtype=torch.long, device=device), C,
                                self.R, stream=1)                        # (R, C, 1) position-free
            qbar = torch.sqrt(1 - g) * qbar + torch.sqrt(g) * eta
            kbar = torch.sqrt(1 - g) * kbar + torch.sqrt(g) * eta
        return qbar, kbar

    def encode(self, x: Tensor, code: Tensor, pos: Tensor, lo: int) -> Tensor:
        """x (B, h, n, m), code (R, C, L), pos (B, n) -> Σ_d code_d(pos)·x_d / √R: (B, h, n, R)."""
        B, h, n, m = x.shape
        code = code.view(self.R, h, m, -1)[..., (pos - lo)]             # (R, h, m, B, n)
        code = code.permute(3, 1, 4, 2, 0)                              # (B, h, n, m, R)
        return torch.einsum("bhnm,bhnmr->bhnr", x.float(), code) / math.sqrt(self.R)

    def features(self, fq: Tensor, fk: Tensor, q_pos: Tensor, k_pos: Tensor):
        for t in (fq, fk):
            if t.shape[1] != self.heads or t.shape[-1] != self.m:
                raise ConfigError("position.features", t.shape[-1],
                                  why=f"spe was built for {self.heads} heads × {self.m} features, "
                                      f"the mixer gives {t.shape[1]} × {t.shape[-1]}; set "
                                      f"position.features (and heads)")
        lo = int(torch.minimum(q_pos.min(), k_pos.min()))
        hi = int(torch.maximum(q_pos.max(), k_pos.max()))
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,))) if self.training else self.seed
        qbar, kbar = self.codes(lo, hi, seed, fq.device)
        qh, kh = self.encode(fq, qbar, q_pos, lo), self.encode(fk, kbar, k_pos, lo)
        if self.positive and self.stage == "features":
            qh, kh = F.elu(qh) + 1, F.elu(kh) + 1
        return qh.to(fq.dtype), kh.to(fk.dtype)
