"""SOFT: softmax-free attention — a Gaussian kernel with Nyström landmarks and Newton pinv.

Paper: SOFT: Softmax-free Transformer with Linear Complexity (Lu et al., NeurIPS 2021), §3.1
eq. 3 (Gaussian kernel self-attention with Q = K), §3.2 eq. 5–6 (low-rank Nyström
regularisation with landmarks), §3.3 (Newton–Raphson Moore–Penrose inverse).

    S_ij = exp(−‖q_i − q_j‖² / (2√d))               (no softmax, no row normalisation)
    Ŝ = exp(Q, Q̃) exp(Q̃, Q̃)⁺ exp(Q̃, Q),   Y = Ŝ V
    Z_{k+1} = Z_k (2I − A Z_k),  Z_0 = Aᵀ/(‖A‖₁‖A‖_∞)       (``pinv_iters`` Newton steps)

Q = K (one projection) so the kernel matrix is symmetric positive semi-definite, which the
Nyström reconstruction needs; landmarks Q̃ are segment means of the real tokens. With m = n
landmarks Ŝ = S exactly. Bidirectional only. Complexity: time O(n m d + m³), memory O(n m + m²).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, key_mask, merge_heads, rotate_qk, split_heads
from .landmarks import landmark_options, mask_landmark_matrix, pinv, segment_means


def gaussian_kernel(a: Tensor, b: Tensor, scale: float) -> Tensor:
    """exp(−‖a_i − b_j‖² · scale) for a (…, n, e), b (…, m, e) → (…, n, m)."""
    d2 = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) \
        - 2 * a @ b.transpose(-1, -2)
    return (-d2.clamp_min(0) * scale).exp()


@MIXERS.register(
    "soft", paper="SOFT: Softmax-free Transformer with Linear Complexity (Lu et al., NeurIPS "
                  "2021)",
    equation="eq. 3/6: Y = exp(Q,Q̃) exp(Q̃,Q̃)⁺ exp(Q̃,Q) V, exp(a,b) = exp(−‖a−b‖²/2√d), "
             "Newton–Raphson pinv",
    complexity=("O(n m d + m³)", "O(n m + m²)"),
    test="tests/papers/test_linear_soft.py::test_landmarks_equal_n_is_exact_gaussian_attention",
    tiny={"heads": 2, "landmarks": 4})
class SoftAttention(Mixer):
    """Gaussian-kernel (softmax-free) attention with shared Q = K, Nyström landmarks, Newton
    pseudo-inverse."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 landmarks: int = 49, pinv_iters: int = 20, pinv_method: str = "newton",
                 bias: bool = True):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.landmarks, self.pinv_iters, self.pinv_method = landmark_options(
            landmarks, pinv_iters, pinv_method)
        inner = self.heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)        # Q = K (symmetric kernel)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d_model, bias=bias)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q = split_heads(self.q_proj(x), self.heads)
        v = split_heads(self.v_proj(x), self.heads)
        q, _, _ = rotate_qk(q, q, x, ctx)
        dtype = v.dtype
        with fp32_region(x.device.type):
            y = self.attend(upcast(q), upcast(v), ctx.query_mask(n))
        return self.o_proj(merge_heads(y.to(dtype))), None

    def attend(self, q: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        scale = 1.0 / (2.0 * self.head_dim ** 0.5)
        if mask is not None:
            v = v * key_mask(mask, v)
        ql, ok = segment_means(q, mask, self.landmarks)            # (B, h, m, e)
        okm = ok[:, None, None, :].to(q.dtype)
        f = gaussian_kernel(q, ql, scale) * okm                     # (B, h, n, m)
        a = mask_landmark_matrix(gaussian_kernel(ql, ql, scale), ok)
        b = f.transpose(-1, -2)                                     # exp(Q̃, Q): symmetric
        return f @ (pinv(a, self.pinv_method, self.pinv_iters) @ (b @ v))
