"""CoLT5 conditional attention: a light branch for every token, a heavy branch for routed ones.

Paper: CoLT5: Faster Long-Range Transformers with Conditional Computation (Ainslie et al.,
2023), §2, eq. 1-2:
    X_i += A_light(X_i) + s_i^q · A_heavy(X_i, X_{kv-routed})   for the k_q routed queries,
- light branch: local attention (window w) with few heads, for all tokens;
- heavy branch: full attention with many heads among routed tokens only: k_q queries and k_kv
  keys/values, each picked by its own learned router s = X w (top-k of the scores); heavy
  outputs are scaled by the query's routing weight and routed values by theirs, which is how
  the routers learn;
- optionally (``heavy_ffn`` > 0) the routed feed-forward of §2: an extra FFN of hidden size
  heavy_ffn·d applied to k_f routed tokens, scaled by their routing weight.
Routing weights are σ(s). The paper normalises them with a soft top-k (Σ weights = k); here that
budget is an auxiliary loss, Σ_routers (Σ_i σ(s_i)/k − 1)², collected through ``ctx.add_aux`` as
"colt5_routing" (weight ``aux_weight``) and added to the training loss. Top-k over the whole
sequence has no causal form (CoLT5 routes in the encoder only).
Complexity: time O(n w d + k² d + n d); memory O(n w + k²).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import band_indices, gathered_attention
from ...registry import MIXERS
from ..base import Mixer, Supports


class Router(nn.Module):
    """s = X w; picks the top-k real tokens. Returns indices (B, k), weights σ(s) (B, k), and
    the budget loss (Σ_i σ(s_i)/k − 1)² averaged over the batch."""

    def __init__(self, d_model: int):
        super().__init__()
        self.w = nn.Linear(d_model, 1, bias=False)

    def forward(self, x: Tensor, valid: Tensor, k: int):
        s = self.w(x).squeeze(-1).float()                                   # (B, n)
        k = min(k, x.shape[1])
        idx = s.masked_fill(~valid, float("-inf")).topk(k, -1).indices      # (B, k)
        g = torch.sigmoid(s)
        loss = (((g * valid).sum(-1) / k - 1) ** 2).mean()
        return idx, torch.gather(g, 1, idx), loss


@MIXERS.register(
    "colt5", paper="CoLT5: Faster Long-Range Transformers with Conditional Computation "
                   "(Ainslie et al., 2023)",
    equation="§2 eq. 1-2: X_i += A_light(X_i) + s_i A_heavy(X_i) for routed i (top-k of X w); "
             "heavy attention among k_q routed queries and k_kv routed keys/values",
    complexity=("O(n w d + k² d)", "O(n w + k²)"),
    test="tests/papers/test_attention_colt5.py::test_colt5_routing_keeps_exactly_k_tokens",
    tiny={"heads": 2, "light_heads": 1, "window": 2, "routed_q": 4, "routed_kv": 5,
          "heavy_ffn": 2, "routed_ffn": 3})
class CoLT5Attention(Mixer):
    """Light local attention for all tokens + routed heavy attention (and FFN) for top-k tokens."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 8, light_heads: int = 2, window: int = 64,
                 routed_q: int = 256, routed_kv: int = 256, heavy_ffn: int = 0,
                 routed_ffn: int = 256, aux_weight: float = 1e-2, bias: bool = True):
        super().__init__()
        for name, h in (("heads", heads), ("light_heads", light_heads)):
            if h < 1 or d_model % h:
                raise ConfigError(f"mixer.{name}", h, why=f"d_model={d_model} must be divisible "
                                                          f"by {name}={h} (>= 1)")
        if min(routed_q, routed_kv, routed_ffn) < 1 or window < 0:
            raise ConfigError("mixer.routed_q", routed_q, why="routed counts must be >= 1")
        self.heads, self.light_heads, self.window = heads, light_heads, window
        self.routed_q, self.routed_kv, self.routed_ffn = routed_q, routed_kv, routed_ffn
        self.aux_weight = aux_weight
        self.light_qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.light_out = nn.Linear(d_model, d_model, bias=bias)
        self.heavy_q = nn.Linear(d_model, d_model, bias=bias)
        self.heavy_kv = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.heavy_out = nn.Linear(d_model, d_model, bias=bias)
        self.q_router, self.kv_router = Router(d_model), Router(d_model)
        self.ffn = None
        if heavy_ffn > 0:
            self.ffn = nn.Sequential(nn.Linear(d_model, heavy_ffn * d_model), nn.GELU(),
                                     nn.Linear(heavy_ffn * d_model, d_model))
            self.ffn_router = Router(d_model)

    @staticmethod
    def _heads(t: Tensor, h: int) -> Tensor:
        B, n, d = t.shape
        return t.view(B, n, h, d // h).transpose(1, 2)                      # (B, h, n, e)

    def light(self, x: Tensor, valid: Tensor) -> Tensor:
        B, n, d = x.shape
        q, k, v = (self._heads(t, self.light_heads) for t in self.light_qkv(x).chunk(3, -1))
        idx, inside = band_indices(n, self.window, self.window, x.device)
        ok = (inside & valid[:, idx])[:, None]
        y = gathered_attention(q, k, v, idx[None, None], ok, 1 / math.sqrt(q.shape[-1]))
        return self.light_out(y.transpose(1, 2).reshape(B, n, d).to(x.dtype))

    def heavy(self, x: Tensor, valid: Tensor):
        """Routed heavy attention: (B, n, d) output (zero for unrouted tokens), query indices,
        budget losses."""
        B, n, d = x.shape
        qi, qg, lq = self.q_router(x, valid, self.routed_q)
        ki, kg, lk = self.kv_router(x, valid, self.routed_kv)
        take = lambda idx: torch.gather(x, 1, idx.unsqueeze(-1).expand(B, idx.shape[1], d))
        q = self._heads(self.heavy_q(take(qi)), self.heads)                 # (B, h, k_q, e)
        k, v = self.heavy_kv(take(ki)).chunk(2, -1)
        v = v * kg.unsqueeze(-1).to(v.dtype)                                # routed values scaled
        k, v = self._heads(k, self.heads), self._heads(v, self.heads)
        kv_ok = torch.gather(valid, 1, ki)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_ok)        # (B, h, k_q, e)
        y = self.heavy_out(y.transpose(1, 2).reshape(B, -1, d))
        y = y * (qg * torch.gather(valid, 1, qi)).unsqueeze(-1).to(y.dtype)
        out = torch.zeros_like(x).scatter_add(1, qi.unsqueeze(-1).expand_as(y), y.to(x.dtype))
        return out, qi, lq + lk

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if ctx.causal:
            raise ConfigError("mixer", "colt5", why="colt5 routing (top-k over the sequence) "
                                                    "has no causal form")
        B, n, d = x.shape
        qm = ctx.query_mask(n)
        valid = torch.ones(B, n, dtype=torch.bool, device=x.device) if qm is None else qm.bool()
        heavy, _, loss = self.heavy(x, valid)
        y = self.light(x, valid) + heavy
        if self.ffn is not None:
            fi, fg, lf = self.ffn_router(x, valid, self.routed_ffn)
            xf = torch.gather(x, 1, fi.unsqueeze(-1).expand(B, fi.shape[1], d))
            yf = self.ffn(xf) * (fg * torch.gather(valid, 1, fi)).unsqueeze(-1).to(x.dtype)
            y = y.scatter_add(1, fi.unsqueeze(-1).expand_as(yf), yf.to(y.dtype))
            loss = loss + lf
        ctx.add_aux("colt5_routing", loss, weight=self.aux_weight)
        return y, None
