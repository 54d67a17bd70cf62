"""Synthesizer: attention weights synthesised without (or besides) token–token dot products.

Paper: Synthesizer: Rethinking Self-Attention for Transformer Models (Tay et al., 2021), §3,
per head, ℓ = max_len, scores over the key positions j:
  dense (eq. 1–2):            B_i = W_2 σ(W_1 x_i + b_1) + b_2 ∈ R^ℓ     (from token i alone)
  random (§3.1.2):            B = R ∈ R^{ℓ×ℓ}, learned or fixed          (no token content)
  factorized dense (§3.1.3):  B_i = H_A(A_i) ⊙ H_B(B_i), A_i = F_A(x_i) ∈ R^a, B_i = F_B(x_i)
                              ∈ R^b, a·b ≥ ℓ; H repeats so that B_i[j] = A_i[j mod a]·B_i[⌊j/a⌋]
  factorized random (§3.1.4): B = R_1 R_2^T, R_1, R_2 ∈ R^{ℓ×k}
  mixtures (§3.1.5):          B = Σ_s α_s B^(s) (α = softmax of learned weights), e.g. with the
                              dot product B^(dot) = Q K^T / √e.
    Y = softmax(B + mask) G(X),  G(X) = X W_V per head, then the output projection.
``synth`` names the parts joined by "+", e.g. "random", "dense+dot", "factorized_random+dot".
Scores are indexed by the context's absolute positions (padding skipped), which must be below
ℓ. A causal form masks j > i; decoding caches values (and keys with "dot") with their positions.
Complexity: time O(n² h + n d ℓ) (dense), memory O(n² h); parameters O(h ℓ²) for random.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from ...nn.context import MixerContext
from ...nn.masks import fix_empty_rows
from ...registry import MIXERS
from ..base import Mixer, Supports

PARTS = ("dense", "random", "factorized_dense", "factorized_random", "dot")


@MIXERS.register(
    "synthesizer",
    paper="Synthesizer: Rethinking Self-Attention for Transformer Models (Tay et al., 2021)",
    equation="§3: Y = softmax(Σ_s α_s B^(s)) G(X); dense B_i = W_2σ(W_1x_i+b_1)+b_2, random B = R, "
             "factorized B = H_A(A)⊙H_B(B) or R_1R_2^T, dot B = QK^T/√e",
    complexity=("O(n² h + n d ℓ)", "O(n² h)"),
    test="tests/papers/test_attention_synthesizer.py::"
         "test_random_synthesizer_ignores_token_content",
    tiny={"heads": 2, "synth": "dense+random+dot"})
class SynthesizerAttention(Mixer):
    """Synthetic attention (dense, random, factorized) alone or mixed with dot-product."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}), fixed_length=True)

    def __init__(self, d_model: int, heads: int = 4, synth: str = "dense", max_len: int = 512,
                 hidden: int | None = None, factor: int = 8, rank: int = 8,
                 fixed_random: bool = False, head_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        parts = [p.strip() for p in str(synth).split("+")]
        for p in parts:
            if p not in PARTS:
                raise ConfigError("mixer.synth", p, PARTS)
        if len(set(parts)) != len(parts):
            raise ConfigError("mixer.synth", synth, why="each part may appear once")
        if head_dim is None:
            if d_model % heads:
                raise ConfigError("mixer.heads", heads,
                                  why=f"d_model={d_model} is not divisible by heads={heads}")
            head_dim = d_model // heads
        h, e, L = heads, head_dim, int(max_len)
        self.parts, self.heads, self.head_dim, self.max_len = parts, h, e, L
        self.dropout, self.fixed_random = dropout, fixed_random
        self.v_proj = nn.Linear(d_model, h * e, bias=bias)                 # G(X)
        self.o_proj = nn.Linear(h * e, d_model, bias=bias)
        if "dense" in parts:
            self.dense1 = nn.Linear(d_model, hidden or d_model)
            self.dense2 = nn.Linear(hidden or d_model, h * L)
        if "random" in parts:
            r = torch.randn(h, L, L)
            if fixed_random:
                self.register_buffer("random", r)
            else:
                self.random = nn.Parameter(r)
        if "factorized_dense" in parts:
            self.a = int(factor)
            self.b = -(-L // self.a)
            self.f_a = nn.Linear(d_model, h * self.a)
            self.f_b = nn.Linear(d_model, h * self.b)
        if "factorized_random" in parts:
            self.r1 = nn.Parameter(torch.randn(h, L, int(rank)) / int(rank) ** 0.25)
            self.r2 = nn.Parameter(torch.randn(h, L, int(rank)) / int(rank) ** 0.25)
        if "dot" in parts:
            self.q_proj = nn.Linear(d_model, h * e, bias=bias)
            self.k_proj = nn.Linear(d_model, h * e, bias=bias)
        self.alpha = nn.Parameter(torch.zeros(len(parts))) if len(parts) > 1 else None

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    def _heads(self, t: Tensor) -> Tensor:
        B, n, _ = t.shape
        return t.view(B, n, self.heads, -1).transpose(1, 2)                 # (B, h, n, ·)

    def scores(self, x: Tensor, qp: Tensor, kp: Tensor, q=None, k=None) -> dict:
        """Each part's (B, h, n, m) score map for queries x at positions qp over keys at kp."""
        B, n, m = x.shape[0], qp.shape[1], kp.shape[1]
        out = {}
        if "dense" in self.parts:
            Bd = self._heads(self.dense2(torch.relu(self.dense1(x))))        # (B, h, n, ℓ)
            out["dense"] = Bd.gather(-1, kp[:, None, None, :].expand(B, self.heads, n, m))
        if "random" in self.parts:                                         # R[h, i, j]
            out["random"] = self.random[:, qp[:, :, None], kp[:, None, :]].transpose(0, 1)
        if "factorized_dense" in self.parts:
            A = self._heads(self.f_a(x))                                   # (B, h, n, a)
            Bf = self._heads(self.f_b(x))                                  # (B, h, n, b)
            idx = kp[:, None, None, :].expand(B, self.heads, n, m)
            out["factorized_dense"] = A.gather(-1, idx % self.a) * Bf.gather(-1, idx // self.a)
        if "factorized_random" in self.parts:
            r1 = self.r1[:, qp].transpose(0, 1)                            # (B, h, n, k)
            r2 = self.r2[:, kp].transpose(0, 1)                            # (B, h, m, k)
            out["factorized_random"] = r1 @ r2.transpose(-1, -2)
        if "dot" in self.parts:
            out["dot"] = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        return out

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        qp = ctx.query_positions(x)
        valid = ctx.query_mask(n)
        valid = torch.ones(B, n, dtype=torch.bool, device=x.device) if valid is None else valid.bool()
        v = self._heads(self.v_proj(x))                                    # (B, h, n, e)
        q = k = None
        if "dot" in self.parts:
            q, k = self._heads(self.q_proj(x)), self._heads(self.k_proj(x))
        kp, kvalid = qp, valid
        if state is not None and "v" in state:
            v = torch.cat([state["v"], v], 2)
            kp = torch.cat([state["pos"], kp], 1)
            kvalid = torch.cat([state["valid"], kvalid], 1)
            if k is not None:
                k = torch.cat([state["k"], k], 2)
        new_state = None
        if state is not None:
            new_state = {"v": v, "pos": kp, "valid": kvalid}
            if k is not None:
                new_state["k"] = k
        if kp.numel() and int(kp.max()) >= self.max_len:
            raise InputError(f"synthesizer: position {int(kp.max())} is past max_len="
                             f"{self.max_len} (its synthetic score tables are that long)")
        parts = self.scores(x, qp, kp, q, k)
        if self.alpha is None:
            S = parts[self.parts[0]].float()
        else:
            a = self.alpha.softmax(0)
            S = sum(a[i] * parts[p].float() for i, p in enumerate(self.parts))
        mask = kvalid[:, None, None, :]
        if ctx.causal:
            mask = mask & (kp[:, None, None, :] <= qp[:, None, :, None])
        S = S.masked_fill(~fix_empty_rows(mask), float("-inf"))
        w = S.softmax(-1)
        if self.training and self.dropout > 0:
            w = F.dropout(w, self.dropout)
        y = torch.matmul(w.to(v.dtype), v)                                 # (B, h, n, e)
        return self.o_proj(y.transpose(1, 2).reshape(B, n, -1)), new_state
