"""SimpleTRON: attention without the softmax, computed as Q(KᵀV) in O(n).

Paper: SimpleTRON: Simple Transformer with O(N) Complexity (Yorsh, Kovalenko, Vančura, Vašata,
Kordík & Mikolov, 2021): the pairwise softmax matching is dropped; without it the product
associates exactly ("without any approximation"): (QKᵀ)V = Q(KᵀV).

    y_i = q_iᵀ Σ_{j≤i} k_j v_jᵀ / (√d · n_i)        (n_i = number of real keys q_i sees)

The 1/(√d·n_i) scaling keeps the magnitude independent of length and is our choice for a
well-scaled layer (the paper's exact normaliser is not restated here); it is per query, so the
layer stays causal and its recurrent state is (S, count). Complexity: time O(n d²),
memory O(n d + h d²).
"""
from __future__ import annotations

from ...registry import MIXERS
from .common import KernelAttention


@MIXERS.register(
    "simpletron", paper="SimpleTRON: Simple Transformer with O(N) Complexity (Yorsh et al., 2021)",
    equation="y = Q(KᵀV)/(√d n) = (QKᵀ/√d ⊙ M)V/n, no softmax",
    complexity=("O(n d²)", "O(n d + h d²)"),
    test="tests/papers/test_linear_simpletron.py::test_simpletron_equals_softmax_free_attention",
    tiny={"heads": 2, "chunk": 4})
class SimpleTron(KernelAttention):
    """Softmax-free attention Q(KᵀV)/(√d n) with a count-normalised recurrent state."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 form: str = "chunk", chunk: int = 64, bias: bool = False):
        super().__init__(d_model, heads, head_dim, "identity", form, chunk, "count", 1e-6, bias)
        self.scale = self.head_dim ** -0.5
