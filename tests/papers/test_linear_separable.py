"""Separable self-attention: equals c = softmax(XW_I), c_v = Σ c_j k_j, Y = (relu(V) ⊙ c_v)W_O
(bidirectional, and over the prefix when causal); forms agree; decoding continues."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


@pytest.mark.parametrize("causal", [True, False])
def test_separable_equals_context_vector_formula(causal):
    m = make_mixer("separable", causal)
    x, mask = left_padded(n=10)
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    i, k, v = m.i_proj(x)[..., 0], m.k_proj(x), m.v_proj(x).relu()
    out = torch.zeros_like(v)
    for b in range(2):
        for t in range(10):
            js = [j for j in range(10) if bool(mask[b, j]) and (j <= t or not causal)]
            if js:
                c = i[b, js].softmax(0)
                out[b, t] = v[b, t] * (c[:, None] * k[b, js]).sum(0)
    assert_rel_close(y[mask], m.o_proj(out)[mask], 1e-5)


def test_separable_forms_and_decoding_agree():
    m = make_mixer("separable", True)
    x, mask = left_padded()
    forms_agree(m, ["parallel", "scan", "recurrent"], x, mask)
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
