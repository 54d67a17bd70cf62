"""Transformer-XL relative positional encoding with global content/position biases u, v.

Paper: Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context (Dai et al.,
2019), §3.3 eq. for A^rel:
    A_ij = q_i^T k_j  +  q_i^T W_R R_{i-j}  +  u^T k_j  +  v^T W_R R_{i-j}
           (a) content    (b) content-position  (c) global content  (d) global position
with R the sinusoid of the relative distance (not learned), W_R a learned projection and u, v
learned per-head vectors; the whole score is scaled by 1/√d_head. The mixer computes (a)·scale;
this encoding returns scale·[(b)+(c)+(d)] through the ``bias`` hook.
(b)+(d) = (q_i + v)^T W_R R_{i-j} is computed for every query against the distinct distances
only (O(n·L·e), L = n_q + n_k - 1) and then moved into place with the paper's *shift trick*
(Appendix B: pad one zero column, reshape, drop a row) when positions are contiguous, or with a
gather otherwise (e.g. left padding, where padded slots repeat position 0).
One instance is shared by all layers, so W_R, u, v are shared (the paper shares u, v) unless
``per_layer_r`` / ``per_layer_uv`` give each layer its own W_R / u, v (the reference code and
Hugging Face's TransfoXL: one ``r_net`` per layer, u, v per layer when ``untie_r``); layer i then
reads its set through ``for_layer(i)``, which the block calls with ``ctx.layer``.
``clamp_len`` uses R_{clamp_len} for every larger distance (the reference code's ``clamp_len``).
Complexity: time O(n (n_q + n_k) e) for the bias, memory O(n²); parameters d·h·e + 2·h·e (times
the number of layers for the per-layer sets).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import POSITIONS
from .base import PositionEncoding
from .shaw import repeat_kv


def xl_sinusoid(distances: Tensor, d_model: int) -> Tensor:
    """Transformer-XL's R: [sin(d·f), cos(d·f)] concatenated, f_i = 10000^{-2i/d}.
    distances (L,) -> (L, d_model)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0.0, d_model, 2.0, device=distances.device) / d_model))
    ang = distances.float()[:, None] * inv_freq[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)[:, :d_model]


def rel_shift(x: Tensor) -> Tensor:
    """The shift trick. x (…, n_q, L) holds, for query i, scores against the distances
    D = [n_k - 1, n_k - 2, …, -(n_q - 1)] (L = n_q + n_k - 1). Returns (…, n_q, n_k) with
    out[i, j] = x[i, j + n_q - 1 - i], i.e. the entry of distance (n_k - n_q + i) - j."""
    *lead, n_q, L = x.shape
    n_k = L - n_q + 1
    x = torch.nn.functional.pad(x, (1, 0))                      # (…, n_q, L + 1)
    x = x.reshape(*lead, L + 1, n_q)[..., 1:, :]                # drop the first row
    return x.reshape(*lead, n_q, L)[..., :n_k]


@POSITIONS.register(
    "xl_relative", paper="Transformer-XL: Attentive Language Models Beyond a Fixed-Length "
                         "Context (Dai et al., 2019)",
    equation="§3.3: A_ij = q_i·k_j + q_i·W_R R_{i-j} + u·k_j + v·W_R R_{i-j}, shift trick "
             "(App. B)",
    complexity=("O(n² e)", "O(n²)"),
    test="tests/papers/test_positions_xl_relative.py::test_xl_shift_trick_equals_naive_formula",
    tiny={})
class TransformerXLRelative(PositionEncoding):
    """Sinusoidal relative encoding with u/v global biases, computed with the shift trick."""

    hooks = frozenset({"bias"})
    translation_invariant = True

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 scale: float | None = None, per_layer_r: bool = False,
                 per_layer_uv: bool = False, clamp_len: int | None = None, n_layers: int = 1):
        super().__init__()
        head_dim = d_model // heads if head_dim is None else head_dim
        self.d_model, self.heads, self.head_dim = d_model, heads, head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        if clamp_len is not None and int(clamp_len) < 0:
            raise ConfigError("position.clamp_len", clamp_len, why="must be >= 0 (or null)")
        self.clamp_len = None if clamp_len is None else int(clamp_len)
        self.per_layer_r, self.per_layer_uv = bool(per_layer_r), bool(per_layer_uv)
        self.layered = self.per_layer_r or self.per_layer_uv
        n_sets = max(int(n_layers), 1)
        if self.per_layer_r:                                            # W_R per layer
            self.r_net = nn.ModuleList(nn.Linear(d_model, heads * head_dim, bias=False)
                                       for _ in range(n_sets))
        else:
            self.r_net = nn.Linear(d_model, heads * head_dim, bias=False)   # W_R
        uv_shape = (n_sets, heads, head_dim) if self.per_layer_uv else (heads, head_dim)
        self.u = nn.Parameter(torch.randn(uv_shape) * 0.02)            # r_w_bias
        self.v = nn.Parameter(torch.randn(uv_shape) * 0.02)            # r_r_bias

    def for_layer(self, layer: int):
        """The encoding as layer ``layer`` sees it (its own W_R and/or u, v)."""
        if not self.layered:
            return self
        n = len(self.r_net) if self.per_layer_r else self.u.shape[0]
        if not 0 <= layer < n:
            raise ConfigError("position", layer,
                              why=f"xl_relative holds per-layer parameters for {n} layers, "
                                  f"asked for layer {layer}")
        return _LayerView(self, layer)

    def _r(self, distances: Tensor, layer: int | None = None) -> Tensor:
        """W_R R_d for distances (L,) -> (h, L, e)."""
        net = self.r_net
        if self.per_layer_r:
            net = self.r_net[_need_layer(layer)]
        if self.clamp_len is not None:
            distances = distances.clamp(max=self.clamp_len)
        r = net(xl_sinusoid(distances, self.d_model).to(net.weight.dtype))
        return r.view(-1, self.heads, self.head_dim).transpose(0, 1)

    @staticmethod
    def contiguous(q_pos: Tensor, k_pos: Tensor) -> bool:
        """Keys at consecutive positions and queries the last n_q of them (shift trick valid)."""
        n_q, n_k = q_pos.shape[1], k_pos.shape[1]
        if n_q > n_k:
            return False
        steps = torch.arange(n_k, device=k_pos.device)
        return bool(torch.equal(k_pos - k_pos[:, :1], steps.expand_as(k_pos))
                    and torch.equal(q_pos, k_pos[:, n_k - n_q:]))

    def position_scores(self, qv: Tensor, q_pos: Tensor, k_pos: Tensor,
                        shift: bool | None = None, layer: int | None = None) -> Tensor:
        """(q_i + v)·W_R R_{pos_i - pos_j}: qv (B, h, n_q, e) -> (B, h, n_q, n_k)."""
        n_q, n_k = q_pos.shape[1], k_pos.shape[1]
        if shift is None:
            shift = self.contiguous(q_pos, k_pos)
        if shift:
            dist = torch.arange(n_k - 1, -n_q, -1, device=qv.device)   # n_k-1 … -(n_q-1)
            r = self._r(dist, layer).transpose(-1, -2).float()
            return rel_shift(torch.matmul(qv, r))                        # (B, h, n_q, n_k)
        rel = q_pos[:, :, None] - k_pos[:, None, :]                     # (B, n_q, n_k)
        lo, hi = int(rel.min()), int(rel.max())
        dist = torch.arange(lo, hi + 1, device=qv.device)
        full = torch.matmul(qv, self._r(dist, layer).transpose(-1, -2).float())  # (B, h, n_q, L)
        idx = (rel - lo)[:, None].expand(-1, qv.shape[1], -1, -1)
        return torch.gather(full, 3, idx)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor,
             layer: int | None = None) -> Tensor:
        if q.shape[1] != self.heads or q.shape[-1] != self.head_dim:
            raise ConfigError("position.heads", self.heads,
                              why=f"xl_relative was built for {self.heads}×{self.head_dim} heads, "
                                  f"the mixer has {q.shape[1]}×{q.shape[-1]}")
        u, v = self.u, self.v
        if self.per_layer_uv:
            u, v = u[_need_layer(layer)], v[_need_layer(layer)]
        k = repeat_kv(k, q.shape[1]).float()
        qv = q.float() + v.float()[None, :, None, :]
        bd = self.position_scores(qv, q_pos, k_pos, layer=layer)       # (b) + (d)
        c = torch.einsum("he,bhje->bhj", u.float(), k)[:, :, None, :]  # (c): (B, h, 1, n_k)
        return (bd + c) * self.scale


class _LayerView:
    """Layer i's view of a per-layer ``xl_relative``: the same encoding with its set of W_R
    and/or u, v (attributes other than ``bias`` are the shared module's)."""

    def __init__(self, pe: TransformerXLRelative, layer: int):
        self.pe, self.layer = pe, layer

    def __getattr__(self, name):
        return getattr(self.pe, name)

    def bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return self.pe.bias(q, k, q_pos, k_pos, layer=self.layer)


def _need_layer(layer: int | None) -> int:
    if layer is None:
        raise ValueError("a per-layer xl_relative is called through for_layer(i) (the block does "
                         "this with ctx.layer)")
    return layer
