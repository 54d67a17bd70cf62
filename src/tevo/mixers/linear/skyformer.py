"""Skyformer: Gaussian-kernel attention with a symmetric Nyström approximation.

Paper: Skyformer: Remodel Self-Attention with Gaussian Kernel and Nyström Method (Chen, Zeng,
Ji & Yang, NeurIPS 2021), §3.1 (Kernelized Attention: softmax's exp(qᵀk) replaced by the
Gaussian kernel κ(q, k) = exp(−‖q − k‖²/2) of d^{-1/4}-scaled q, k), §3.2 (Nyström on the
symmetric PSD matrix κ([Q; K], [Q; K]), of which κ(Q, K) is the off-diagonal block); reference
code: the official repository's ``Skyformer`` (ridge 0.1·I, D^{-½}·D^{-½} normalisation, six
third-order pseudo-inverse steps).

    C = κ([Q;K], [Q;K]),  landmarks S ⊂ [Q;K]:   κ(Q, K) ≈ κ(Q, S) (κ(S, S) + λI)⁻¹ κ(S, K)
    Y = κ(Q, S) · D^{-½} (D^{-½}(κ(S,S)+λI)D^{-½})⁺ D^{-½} · (κ(S, K) V),   D = rowsum(κ(S,S)+λI)

Landmarks: half segment means of Q, half of K (real tokens only; deterministic, where the
official code samples columns at random). No output normalisation (as the reference).
With every point a landmark and λ = 0 the approximation is exact.
Bidirectional only. Complexity: time O(n m d + m³), memory O(n m + m²).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, key_mask, merge_heads, project_qkv, qkvo, rotate_qk
from .landmarks import landmark_options, mask_landmark_matrix, pinv, segment_means
from .soft import gaussian_kernel


@MIXERS.register(
    "skyformer", paper="Skyformer (Chen et al., NeurIPS 2021)",
    equation="§3.2: κ(Q,K)V ≈ κ(Q,S)(κ(S,S)+λI)⁺κ(S,K)V, κ(a,b) = exp(−‖a−b‖²/2) on "
             "d^{-1/4}-scaled Q, K; S ⊂ [Q; K]",
    complexity=("O(n m d + m³)", "O(n m + m²)"),
    test="tests/papers/test_linear_skyformer.py::test_all_points_as_landmarks_is_exact",
    tiny={"heads": 2, "landmarks": 4})
class Skyformer(Mixer):
    """Gaussian-kernel attention, Nyström-approximated on the symmetric matrix of [Q; K]."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 landmarks: int = 64, ridge: float = 0.1, pinv_iters: int = 6,
                 pinv_method: str = "razavi", bias: bool = True):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.landmarks, self.pinv_iters, self.pinv_method = landmark_options(
            landmarks, pinv_iters, pinv_method, least=2,
            why="must be >= 2 (half from Q, half from K)")
        self.ridge = float(ridge)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v = project_qkv(self, x)
        q, k, pos = rotate_qk(q, k, x, ctx)
        dtype = v.dtype
        with fp32_region(x.device.type):
            y = self.attend(upcast(q), upcast(k), upcast(v), ctx.query_mask(n))
        return self.o_proj(merge_heads(y.to(dtype))), None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        s = self.head_dim ** -0.25
        q, k = q * s, k * s
        if mask is not None:
            m4 = key_mask(mask, v)
            k, v = k * m4, v * m4
        mq = self.landmarks // 2
        sq, okq = segment_means(q, mask, mq)
        sk, okk = segment_means(k, mask, self.landmarks - mq)
        S, ok = torch.cat([sq, sk], 2), torch.cat([okq, okk], 1)   # (B, h, m, e), (B, m)
        okm = ok[:, None, None, :].to(q.dtype)
        qf = gaussian_kernel(q, S, 0.5) * okm                        # κ(Q, S): (B, h, n, m)
        kf = gaussian_kernel(k, S, 0.5) * okm                        # κ(K, S)
        if mask is not None:
            kf = kf * key_mask(mask, kf)
        eye = torch.eye(S.shape[2], dtype=q.dtype, device=q.device)
        C = mask_landmark_matrix(gaussian_kernel(S, S, 0.5) + self.ridge * eye, ok)
        dinv = C.sum(-1).clamp_min(1e-12).rsqrt()                    # D^{-½}: (B, h, m)
        Cn = dinv.unsqueeze(-1) * C * dinv.unsqueeze(-2)
        inv = dinv.unsqueeze(-1) * pinv(Cn, self.pinv_method, self.pinv_iters) \
            * dinv.unsqueeze(-2)
        return qf @ (inv @ (kf.transpose(-1, -2) @ v))
