"""FourierFormer: attention as a generalised Fourier integral density estimator.

Paper: FourierFormer: Transformer Meets Generalized Fourier Integral Theorem (Nguyen, Pham,
Nguyen, Nguyen, Osher & Ho, NeurIPS 2022; "Transformer with Fourier Integral Attentions"), §2–3:
softmax attention is a kernel regression whose kernel is replaced by the product-form Fourier
integral kernel, which needs no assumption on the covariance of the data:

    w_ij = Π_{d=1}^{D} φ( sin(R (q_id − k_jd)) / (R (q_id − k_jd)) ),      φ(x) = x^p (p even)
    Y_i = Σ_j w_ij v_j / Σ_j w_ij

computed in log space (Σ_d p·log|sinc|, then a masked softmax over j), which equals the ratio
and never underflows. R (``radius``) sets the kernel width; p = 2 (default) is the Fejér-type
positive kernel of the generalised theorem. Causal with a K/V cache, or bidirectional.
Complexity: time O(n² D), memory O(n²) (the D product accumulated one dimension at a time).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.chunked import NEG, fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.masks import attention_mask
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, merge_heads, project_qkv, qkvo


@MIXERS.register(
    "fourier_integral", paper="FourierFormer: Transformer Meets Generalized Fourier Integral "
                              "Theorem (Nguyen et al., NeurIPS 2022)",
    equation="w_ij = Π_d φ(sin(R(q_id − k_jd))/(R(q_id − k_jd))), φ(x) = x^p; "
             "Y_i = Σ_j w_ij v_j / Σ_j w_ij",
    complexity=("O(n² D)", "O(n²)"),
    test="tests/papers/test_linear_fourier_integral.py::test_equals_product_sinc_kernel_regression",
    tiny={"heads": 2})
class FourierIntegralAttention(Mixer):
    """Attention weights from a product of sinc kernels over the head dimensions."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 radius: float = 1.0, power: int = 2, bias: bool = True):
        super().__init__()
        if int(power) < 2 or int(power) % 2:
            raise ConfigError("mixer.power", power, why="must be an even integer >= 2 "
                                                        "(positive weights)")
        if float(radius) <= 0:
            raise ConfigError("mixer.radius", radius, why="must be > 0")
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.R, self.p = float(radius), int(power)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def log_weights(self, q: Tensor, k: Tensor) -> Tensor:
        """Σ_d p·log|sinc(R(q_d − k_d))|: (B, h, n, n_k), one head dimension at a time."""
        out = q.new_zeros(*q.shape[:-1], k.shape[-2])
        for d in range(q.shape[-1]):
            delta = q[..., d, None] - k[..., None, :, d]                  # (B, h, n, n_k)
            s = torch.sinc(self.R * delta / math.pi)                       # sin(RΔ)/(RΔ)
            out = out + self.p * torch.log(s.abs() + 1e-30)
        return out

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v = project_qkv(self, x)
        if state is not None and "k" in state:
            k, v = torch.cat([state["k"], k], 2), torch.cat([state["v"], v], 2)
        new_state = None if state is None else {"k": k, "v": v}
        allowed = attention_mask(n, k.shape[2], ctx.causal, ctx.key_padding_mask, x.device)
        dtype = v.dtype
        with fp32_region(x.device.type):
            logw = self.log_weights(upcast(q), upcast(k))
            if allowed is not None:
                logw = logw.masked_fill(~allowed, NEG)
            y = logw.softmax(-1) @ upcast(v)
        return self.o_proj(merge_heads(y.to(dtype))), new_state
