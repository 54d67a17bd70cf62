"""Linear attention: softmax replaced by a kernel φ(q)ᵀφ(k), computed right to left.

Paper: Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention
(Katharopoulos et al., ICML 2020), §3.2 eq. 4–6, §3.4 eq. 16–20 (the RNN form); the
linear-attention posts in the survey (Su, 2020).

    V'_i = φ(Q_i)ᵀ Σ_{j≤i} φ(K_j) V_jᵀ / φ(Q_i)ᵀ Σ_{j≤i} φ(K_j)
         = φ(Q_i)ᵀ S_i / φ(Q_i)ᵀ z_i,   S_i = S_{i-1} + φ(K_i) V_iᵀ,  z_i = z_{i-1} + φ(K_i)

Feature maps (registry ``feature_map``): elu+1 (the paper's), relu, exp, softmax over features,
dpfp, favor+, ... Forms: parallel (masked, O(n² d)), chunk (O(n C d + n d²) time, O(n d + n C)
memory), scan (chunk states by the associative scan), recurrent (O(d²) per token for decoding).
Complexity: time O(n d m) (m = feature dim), memory O(n d + h m d) — the state does not grow.
"""
from __future__ import annotations

from ...registry import MIXERS
from .common import KernelAttention


@MIXERS.register(
    "linear", paper="Transformers are RNNs (Katharopoulos et al., 2020); linear-attention posts",
    equation="eq. 6/20: y_i = φ(q_i)ᵀ(Σ_{j≤i} φ(k_j)v_jᵀ) / φ(q_i)ᵀ Σ_{j≤i} φ(k_j)",
    complexity=("O(n d m) (chunk: O(n C d + n d m))", "O(n d + n C + h m d)"),
    test="tests/papers/test_linear_attention.py::test_three_forms_agree_outputs_state_and_grads",
    tiny={"heads": 2, "chunk": 4})
class LinearAttention(KernelAttention):
    """Kernel attention φ(Q)(φ(K)ᵀV) with a registered feature map; parallel/chunk/recurrent."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 feature_map="elu+1", form: str = "chunk", chunk: int = 64,
                 normalize: str = "sum", eps: float = 1e-6, bias: bool = False,
                 max_len: int = 4096):
        super().__init__(d_model, heads, head_dim, feature_map, form, chunk, normalize, eps,
                         bias, max_len)
