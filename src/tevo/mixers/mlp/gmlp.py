"""gMLP: the spatial gating unit, with aMLP's tiny attention as an option.

Paper: Pay Attention to MLPs (Liu et al., 2021), eq. 1–3 and §4 (aMLP):
    Z = GELU(X U),   [Z_1, Z_2] = split(Z),   s(Z) = Z_1 ⊙ (W · LN(Z_2) + b),   Y = s(Z) V
with W ∈ R^{n×n} a learned token-mixing matrix (initialised near zero, b = 1, so the block
starts as an MLP) indexed by the tokens' positions. Causal (the paper's autoregressive gMLP):
W is lower-triangular, so token t mixes only tokens ≤ t, and decoding keeps the past LN(Z_2)
rows (a cache), so one-token steps equal the full pass. aMLP (``attn_dim`` > 0): a single-head
attention of size ``attn_dim`` on X is added inside the gate: Z_1 ⊙ (W LN(Z_2) + b + Attn(X)).
The block's own MLP replaces the Transformer's feed-forward (gMLP blocks have layout "a").
Complexity: O(n² e + n d e) time, O(n² + n e) memory (e = d_ffn / 2); W has max_len² entries.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, InputError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "gmlp", paper="Pay Attention to MLPs (Liu et al., 2021)",
    equation="eq. 1-3: s(Z) = Z₁ ⊙ (W·LN(Z₂) + b), W lower-triangular when causal; aMLP: + Attn(X)",
    complexity=("O(n² e + n d e)", "O(n² + n e)"),
    test="tests/papers/test_mlp_gmlp.py::test_gmlp_matches_formula_and_causal_gate_is_lower_triangular",
    tiny={"mult": 2, "attn_dim": 0})
class GatedMLP(Mixer):
    """Spatial gating unit: channel MLP whose halves gate each other through an n×n mix."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}), padding=True, fixed_length=True,
                        flat_grid=True, text=True)

    def __init__(self, d_model: int, max_len: int = 256, mult: float = 6.0, attn_dim: int = 0,
                 causal: bool = False, eps: float = 1e-3):
        super().__init__()
        if not float(mult) > 0:
            raise ConfigError("mixer(gmlp).mult", mult, why="d_ffn = mult·d_model; must be > 0")
        if not isinstance(attn_dim, int) or attn_dim < 0:
            raise ConfigError("mixer(gmlp).attn_dim", attn_dim,
                              why="an integer >= 0 (0: gMLP, > 0: aMLP's tiny attention size)")
        e = max(1, int(round(float(mult) * d_model / 2)))
        self.e, self.max_len, self.attn_dim = e, int(max_len), attn_dim
        self.proj_in = nn.Linear(d_model, 2 * e)                          # U
        self.norm = nn.LayerNorm(e)
        # W near zero, b = 1 (paper §2): the gate starts at 1
        self.weight = nn.Parameter(torch.empty(self.max_len, self.max_len).uniform_(
            -eps / self.max_len, eps / self.max_len))
        self.bias = nn.Parameter(torch.ones(self.max_len))
        self.out_proj = nn.Linear(e, d_model)                             # V
        if attn_dim:
            self.qkv = nn.Linear(d_model, 3 * attn_dim)
            self.attn_out = nn.Linear(attn_dim, e)

    def init_weights(self) -> None:                 # keep the paper's gate init under GPT-2 init
        with torch.no_grad():
            self.weight.uniform_(-1e-3 / self.max_len, 1e-3 / self.max_len)
            self.bias.fill_(1.0)

    def init_state(self, batch: int, device=None, dtype=None):
        return {"z": None, "pos": None, "k": None, "v": None, "mask": None}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        pos = ctx.query_positions(x)                                      # (B, n)
        if int(pos.max()) >= self.max_len:
            raise InputError(f"gmlp's token-mixing matrix covers {self.max_len} positions, "
                             f"got position {int(pos.max())}")
        qmask = ctx.query_mask(n)
        m = torch.ones(B, n, dtype=torch.bool, device=x.device) if qmask is None else qmask
        z1, z2 = F.gelu(self.proj_in(x)).chunk(2, -1)                     # (B, n, e) each
        z2 = self.norm(z2) * m.unsqueeze(-1).to(z2.dtype)                 # padding adds nothing
        keys, kpos, kmask = z2, pos, m
        if state is not None and state["z"] is not None:
            keys = torch.cat([state["z"], z2], 1)
            kpos = torch.cat([state["pos"], pos], 1)
            kmask = torch.cat([state["mask"], m], 1)
        W = self.weight[pos[:, :, None], kpos[:, None, :]]               # (B, n, n_k)
        if ctx.causal:                     # lower-triangular: key index <= query index
            nk = keys.shape[1]
            tri = torch.ones(n, nk, dtype=torch.bool, device=x.device).tril(nk - n)
            W = W * tri.to(W.dtype)
        gate = W.to(keys.dtype) @ keys + self.bias[pos].unsqueeze(-1).to(keys.dtype)
        new_state = None
        if self.attn_dim:
            q, k, v = self.qkv(x).chunk(3, -1)                            # (B, n, a)
            if state is not None and state["k"] is not None:
                k, v = torch.cat([state["k"], k], 1), torch.cat([state["v"], v], 1)
            allowed = kmask[:, None, :].expand(B, n, k.shape[1])
            if ctx.causal:
                allowed = allowed & tri
            s = (q @ k.transpose(1, 2)) / math.sqrt(self.attn_dim)
            s = s.float().masked_fill(~allowed, float("-inf"))
            a = torch.nan_to_num(torch.softmax(s, -1)).to(v.dtype)        # all-masked rows: 0
            gate = gate + self.attn_out(a @ v)
            if state is not None:
                new_state = {"k": k, "v": v}
        if state is not None:
            new_state = {"k": None, "v": None, **(new_state or {}),
                         "z": keys, "pos": kpos, "mask": kmask}
        return self.out_proj(z1 * gate), new_state
