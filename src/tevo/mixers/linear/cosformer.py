"""cosFormer: relu linear attention with a cos-based locality reweighting.

Paper: cosFormer: Rethinking Softmax in Attention (Qin et al., ICLR 2022), §3.2–3.3 eq. 7–11;
the linear-attention posts of the survey (relu feature maps).

    s(q_i, k_j) = relu(q_i)ᵀ relu(k_j) · cos(π/2 · (i − j)/M)
                = φ(q_i)ᵀ φ(k_j),  φ(x_i) = [relu(x_i) cos(πi/2M), relu(x_i) sin(πi/2M)]
    y_i = Σ_j s(q_i, k_j) v_j / Σ_j s(q_i, k_j)

A ``feature`` position hook (PermuteFormer, SPE) acts on relu(q), relu(k) before the
reweighting, so it sees head_dim features. Positions i are absolute token positions (padding
skipped). M is the sequence length as in the paper (eq. 9): each row's number of tokens in the
bidirectional form; in the causal form, where a decoded token cannot know the final length,
M = max_len (the training window, the length of the paper's autoregressive blocks), so decoding
sees the same weights as a full pass. Complexity: time O(n d²), memory O(n d + h d²);
parallel / chunk / recurrent forms through the shared kernel.
"""
from __future__ import annotations

import torch.nn.functional as F

from ...registry import MIXERS
from .common import KernelAttention, feature_hook_before


@MIXERS.register(
    "cosformer", paper="cosFormer: Rethinking Softmax in Attention (Qin et al., ICLR 2022)",
    equation="eq. 9–11: y_i = Σ_j relu(q_i)ᵀrelu(k_j)cos(π(i−j)/2M) v_j / Σ_j (same)",
    complexity=("O(n d²)", "O(n d + h d²)"),
    test="tests/papers/test_linear_cosformer.py::test_cosformer_equals_reweighted_relu_attention",
    tiny={"heads": 2, "chunk": 4})
class CosFormer(KernelAttention):
    """relu kernel attention whose cos(π(i−j)/2M) reweighting decomposes into sin/cos features."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 max_len: int = 4096, form: str = "chunk", chunk: int = 64, eps: float = 1e-6,
                 bias: bool = False):
        super().__init__(d_model, heads, head_dim, "cosformer", form, chunk, "sum", eps, bias,
                         max_len)

    def features(self, q, k, ctx, q_pos):
        q, k, after = feature_hook_before(ctx.pos, q, k, q_pos)
        rq, rk = F.relu(q), F.relu(k)
        if after:
            rq, rk = ctx.pos.features(rq, rk, q_pos, q_pos)
        # M = the sequence length (each row's, padding skipped) in the bidirectional form, as
        # in the paper; causal: max_len, since a decoded token cannot know the final length
        M = None if ctx.causal else q_pos.max(dim=1).values + 1            # (B,)
        return self.fmap.reweight(rq, q_pos, M), self.fmap.reweight(rk, q_pos, M)
