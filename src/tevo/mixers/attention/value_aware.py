"""Value-aware approximate attention: a sparse approximation chosen for its output error.

Paper: Value-aware Approximate Attention (Gupta & Berant, 2021), §2-3: approximations of
attention should minimise the error of the output, not of the weights,
    value-oblivious:  min_{Ã ∈ r-sparse} ‖Ã − A‖        (e.g. top-r of softmax, renormalised)
    value-aware:      min_{Ã ∈ r-sparse} ‖Ã V − A V‖    (eq. 2)
Each row of the value-aware problem is a sparse regression of the exact output o_i = A_i V onto
the value vectors of the keys it may see. It is NP-hard in general; here it is solved greedily by
orthogonal matching pursuit: r times, add the allowed key whose value is most correlated with the
residual, then refit all chosen weights by least squares (ridge ``ridge`` relative to the Gram
diagonal). With r ≥ the number of visible keys the output is exact softmax attention.
This is the paper's analysis object: it needs the exact output as its target, so it costs more
than dense attention; use it to measure how much a budget of r keys can preserve.
Decoding works with the KV cache (each row's problem involves only its visible keys).
Complexity: time O(n² d + r n² d + r⁴ n); memory O(n²).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ...nn.attention import eager_attention
from ...nn.context import MixerContext
from ...nn.masks import fix_empty_rows
from ...registry import MIXERS, Option
from .softmax import MultiHeadAttentionBase


def value_aware_weights(o: Tensor, v: Tensor, allowed: Tensor, r: int, ridge: float = 1e-6) -> Tensor:
    """Orthogonal matching pursuit: r-sparse W (B, h, n_q, n_k) with W V ≈ o.

    o (B, h, n_q, e) target outputs; v (B, h, n_k, e); allowed (B, h, n_q, n_k) bool."""
    B, h, nq, e = o.shape
    nk = v.shape[2]
    vx = v.unsqueeze(2).expand(B, h, nq, nk, e)
    norms = v.norm(dim=-1).clamp(min=1e-12).unsqueeze(2)                   # (B, h, 1, n_k)
    chosen = torch.zeros(B, h, nq, nk, dtype=torch.bool, device=o.device)
    idx, ok = [], []
    res, coef = o, None
    for _ in range(min(r, nk)):
        cand = allowed & ~chosen
        corr = ((res @ v.transpose(-1, -2)).abs() / norms).masked_fill(~cand, -1.0)
        j = corr.argmax(-1)                                                 # (B, h, n_q)
        has = cand.any(-1)
        chosen |= F.one_hot(j, nk).bool() & has.unsqueeze(-1)
        idx.append(j)
        ok.append(has)
        I, K = torch.stack(idx, -1), torch.stack(ok, -1)                   # (B, h, n_q, t)
        vs = torch.gather(vx, 3, I.unsqueeze(-1).expand(*I.shape, e)) * K.unsqueeze(-1)
        gram = vs @ vs.transpose(-1, -2)                                    # (B, h, n_q, t, t)
        lam = ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
        eye = torch.eye(I.shape[-1], device=o.device)
        coef = torch.linalg.solve(gram + lam[..., None, None] * eye, (vs @ o.unsqueeze(-1)))
        coef = coef.squeeze(-1) * K                                         # least-squares refit
        res = o - (coef.unsqueeze(-2) @ vs).squeeze(-2)
    W = torch.zeros(B, h, nq, nk, device=o.device, dtype=o.dtype)
    return W if coef is None else W.scatter_add(-1, I, coef)


@MIXERS.register(
    "value_aware", paper="Value-aware Approximate Attention (Gupta & Berant, 2021)",
    equation="§2 eq. 2: min_{Ã r-sparse} ‖ÃV − AV‖ per row (orthogonal matching pursuit over the "
             "visible keys' values), y = ÃV",
    complexity=("O(r n² d)", "O(n²)"),
    test="tests/papers/test_attention_value_aware.py::test_value_aware_error_below_value_oblivious",
    tiny={"heads": 2, "keys": 4})
class ValueAwareAttention(MultiHeadAttentionBase):
    """r-sparse attention whose keys and weights minimise the output error (greedy OMP)."""

    options = {"keys": Option(ge=1), "ridge": Option(gt=0, doc="a ridge > 0 keeps the refit solvable")}

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, cross: bool = False,
                 keys: int = 16, ridge: float = 1e-6):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, 0.0, "eager", cross)
        if keys < 1 or ridge < 0:
            raise ConfigError("mixer.keys", keys, why="keys must be >= 1 and ridge >= 0")
        self.keys, self.ridge = keys, ridge

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        with torch.autocast(q.device.type, enabled=False):               # linear solves in fp32
            q, k, v = q.float(), k.float(), v.float()
            bias = None if bias is None else bias.float()
            o = eager_attention(q, k, v, mask=mask, bias=bias, scale=self.scale)
            shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            allowed = torch.ones(shape, dtype=torch.bool, device=q.device) if mask is None \
                else fix_empty_rows(mask).expand(shape)
            return value_aware_weights(o, v, allowed, self.keys, self.ridge) @ v
