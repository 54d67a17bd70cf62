"""Learned-kernel attention: random features whose spectral distribution is learned.

Paper: On Learning the Transformer Kernel (Chowdhury, Sarkar et al., TMLR 2022; "KL-Transformer"),
§3: GMM-PRF — positive random features with ω drawn from a learned Gaussian mixture.

    ω ~ Σ_c π_c N(μ_c, diag σ_c²),  sampled as ω = μ_c + σ_c ⊙ ε (ε fixed; redrawn in training)
    φ(x) = √(π_c/M) exp(ωᵀx̃ − ‖x̃‖²/2),  x̃ = x/d^{1/4}
    K(x, y) = E[φ(x)ᵀφ(y)] = Σ_c π_c exp(μ_cᵀ(x̃+ỹ) + ½(x̃+ỹ)ᵀΣ_c(x̃+ỹ) − ½‖x̃‖² − ½‖ỹ‖²)
    y_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j)

μ, log σ and the mixture logits are learned by back-propagating through the reparameterised ω;
at init (μ = 0, σ = 1) K is the softmax kernel exp(qᵀk/√d), i.e. the Performer's.
Complexity: time O(n C M d), memory O(n C M + h C M d); causal/bidirectional/recurrent forms.
"""
from __future__ import annotations

from ...registry import MIXERS
from .common import KernelAttention


@MIXERS.register(
    "learned_kernel", paper="On Learning the Transformer Kernel (Chowdhury et al., 2022)",
    equation="§3 GMM-PRF: ω = μ_c + σ_c⊙ε, φ(x) = √(π_c/M) exp(ωᵀx̃ − ‖x̃‖²/2); "
             "y = φ(Q)(φ(K)ᵀV)/φ(Q)(φ(K)ᵀ1)",
    complexity=("O(n C M d)", "O(n C M + h C M d)"),
    test="tests/papers/test_linear_learned_kernel.py::"
         "test_attention_uses_the_learned_closed_form_kernel",
    tiny={"heads": 2, "chunk": 4, "components": 1, "nb_features": 8})
class LearnedKernelAttention(KernelAttention):
    """Kernel attention with a learned Gaussian-mixture spectral distribution (GMM-PRF)."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 components: int = 2, nb_features: int | None = None, redraw_every: int = 1000,
                 form: str = "chunk", chunk: int = 64, eps: float = 1e-6, bias: bool = False):
        fmap = {"name": "gmm_prf", "components": components, "nb_features": nb_features,
                "redraw_every": redraw_every}
        super().__init__(d_model, heads, head_dim, fmap, form, chunk, "sum", eps, bias)
