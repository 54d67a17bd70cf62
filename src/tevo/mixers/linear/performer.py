"""Performer: FAVOR+ — softmax attention approximated by positive orthogonal random features.

Paper: Rethinking Attention with Performers (Choromanski et al., ICLR 2021), §3 eq. 5–7,
Lemma 1 (positive random features), §4 (orthogonal features), and the survey's post
"Performer: linearising attention by random projections" (Su, 2020).

    exp(qᵀk/√d) = E_ω[φ(q)ᵀφ(k)],   φ(x) = exp(ωᵢᵀx̃ − ‖x̃‖²/2)/√m,  x̃ = x/d^{1/4}
    Att(Q, K, V) ≈ D̂⁻¹ φ(Q)(φ(K)ᵀV),  D̂ = diag(φ(Q)(φ(K)ᵀ1))

The m features are drawn at construction (orthogonal blocks with Gaussian norms) and redrawn in
training every ``redraw_every`` forward calls (0 = never); in eval they are fixed, so the model
is deterministic and the recurrent form continues a full pass exactly.
Complexity: time O(n m d), memory O(n m + h m d) (state S: m × d per head).
"""
from __future__ import annotations

from ...registry import MIXERS
from .common import KernelAttention


@MIXERS.register(
    "performer", paper="Rethinking Attention with Performers (Choromanski et al., ICLR 2021)",
    equation="eq. 7 + Lemma 1: Att ≈ D̂⁻¹φ(Q)(φ(K)ᵀV), φ(x) = exp(Wx̃ − ‖x̃‖²/2)/√m, "
             "W orthogonal random features",
    complexity=("O(n m d)", "O(n m + h m d)"),
    test="tests/papers/test_linear_performer.py::test_error_vs_softmax_falls_as_features_grow",
    tiny={"heads": 2, "chunk": 4, "nb_features": 8})
class Performer(KernelAttention):
    """FAVOR+ linear attention with positive orthogonal random features and a redraw schedule."""

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 nb_features: int | None = None, ortho: bool = True, redraw_every: int = 1000,
                 form: str = "chunk", chunk: int = 64, eps: float = 1e-6, bias: bool = False):
        fmap = {"name": "favor+", "nb_features": nb_features, "ortho": ortho,
                "redraw_every": redraw_every}
        super().__init__(d_model, heads, head_dim, fmap, form, chunk, "sum", eps, bias)
