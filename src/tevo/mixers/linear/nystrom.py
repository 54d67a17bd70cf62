"""Nyströmformer: softmax attention approximated through m landmarks (Nyström method).

Paper: Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention (Xiong et al.,
AAAI 2021), §3 eq. 13–15 (the approximation), eq. 16 (iterative pseudo-inverse), §3.2 (segment-
mean landmarks), and the depthwise-conv skip on V; the linear-attention posts of the survey.

    S ≈ F̃ Ã⁺ B̃,   F̃ = softmax(Q K̃ᵀ/√d),  Ã = softmax(Q̃ K̃ᵀ/√d),  B̃ = softmax(Q̃ Kᵀ/√d)
    Y = F̃ (Ã⁺ (B̃ V))  [+ DWConv(V)]

Q̃, K̃: segment means of Q and K over the real tokens (``landmarks``). Ã⁺ by ``pinv_iters`` steps
of the third-order iteration (default 6, as the paper) from the per-matrix initialisation.
With m = n landmarks F̃ = Ã = B̃ = softmax(QKᵀ/√d) and F̃Ã⁺B̃ = S: exact softmax attention.
Bidirectional only (landmarks pool the whole sequence). Complexity: time O(n m d + m³),
memory O(n m + m²).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...nn.chunked import NEG, fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import head_dims, key_mask, merge_heads, project_qkv, qkvo, rotate_qk
from .landmarks import landmark_options, mask_landmark_matrix, pinv, segment_means


@MIXERS.register(
    "nystrom", paper="Nyströmformer (Xiong et al., AAAI 2021)",
    equation="eq. 15: softmax(QKᵀ/√d)V ≈ softmax(QK̃ᵀ/√d) Ã⁺ softmax(Q̃Kᵀ/√d) V, "
             "Ã = softmax(Q̃K̃ᵀ/√d), Ã⁺ by eq. 16",
    complexity=("O(n m d + m³)", "O(n m + m²)"),
    test="tests/papers/test_linear_nystrom.py::test_landmarks_equal_n_is_softmax",
    tiny={"heads": 2, "landmarks": 4})
class NystromAttention(Mixer):
    """Landmark (Nyström) approximation of softmax attention with an iterative pseudo-inverse."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 landmarks: int = 64, pinv_iters: int = 6, pinv_method: str = "razavi",
                 conv_kernel: int | None = None, bias: bool = True):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.landmarks, self.pinv_iters, self.pinv_method = landmark_options(
            landmarks, pinv_iters, pinv_method)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)
        self.conv = None
        if conv_kernel:                           # depthwise conv over the sequence, per head
            self.conv = nn.Conv2d(self.heads, self.heads, (int(conv_kernel), 1),
                                  padding=(int(conv_kernel) // 2, 0), groups=self.heads,
                                  bias=False)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q, k, v = project_qkv(self, x)
        q, k, pos = rotate_qk(q, k, x, ctx)
        mask = ctx.query_mask(n)
        dtype = v.dtype
        with fp32_region(x.device.type):
            y = self.attend(upcast(q), upcast(k), upcast(v), mask)
        return self.o_proj(merge_heads(y.to(dtype))), None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        s = self.head_dim ** -0.25                  # q/d^¼ · k/d^¼ = qk/√d
        q, k = q * s, k * s
        if mask is not None:
            v = v * key_mask(mask, v)
        ql, ok = segment_means(q, mask, self.landmarks)            # (B, h, m, e), (B, m)
        kl, _ = segment_means(k, mask, self.landmarks)
        lm = ~ok[:, None, None, :]                                  # empty landmarks
        f = (q @ kl.transpose(-1, -2)).masked_fill(lm, NEG).softmax(-1)        # (B, h, n, m)
        a = (ql @ kl.transpose(-1, -2)).masked_fill(lm, NEG).softmax(-1)       # (B, h, m, m)
        a = mask_landmark_matrix(a, ok)
        b = ql @ k.transpose(-1, -2)                                            # (B, h, m, n)
        if mask is not None:
            b = b.masked_fill(~mask[:, None, None, :], NEG)
        b = b.softmax(-1)
        y = f @ (pinv(a, self.pinv_method, self.pinv_iters) @ (b @ v))
        if self.conv is not None:
            y = y + self.conv(v)
        return y
