"""AFT mixture (tevo's construction): the rank-r decomposed bias equals AFT-full with the explicit bias
w_{t,t'} = log Σ_r exp(a_{t,r} + b_{t',r}); forms agree; decoding continues; r = 1 with zero
factors is AFT-simple."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


@pytest.mark.parametrize("causal", [True, False])
def test_decomposed_bias_equals_explicit_aft_full(causal):
    m = make_mixer("aft_mixture", causal, rank=3)
    with torch.no_grad():
        m.a.normal_(0, 1.0)
        m.b.normal_(0, 1.0)
    x, mask = left_padded(n=10)
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    B, n, d = x.shape
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    out = torch.zeros(B, n, d)
    for b in range(B):
        a, bb = m.a[pos[b]], m.b[pos[b]]
        w = torch.logsumexp(a[:, None, :] + bb[None, :, :], -1)            # (n, n) explicit
        for t in range(n):
            js = [j for j in range(n) if bool(mask[b, j]) and (j <= t or not causal)]
            e = torch.exp(k[b, js] + w[t, js, None])                         # (|js|, d)
            out[b, t] = (e * v[b, js]).sum(0) / e.sum(0)
    ref = m.o_proj(torch.sigmoid(q) * out)
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_rank_one_zero_factors_is_aft_simple():
    dm = make_mixer("aft_mixture", True, rank=1)
    am = make_mixer("aft", True, variant="simple")
    am.load_state_dict(dm.state_dict(), strict=False)
    with torch.no_grad():
        dm.a.zero_()
        dm.b.zero_()
    x, mask = left_padded()
    assert_rel_close(dm(x, ctx(x, True, mask))[0][mask], am(x, ctx(x, True, mask))[0][mask],
                     1e-5)


def test_aft_mixture_forms_and_decoding_agree():
    m = make_mixer("aft_mixture", True, rank=3)
    x, mask = left_padded()
    forms_agree(m, ["parallel", "scan", "recurrent"], x, mask)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["y"].shape == (2, 3, 16)                      # O(r d): does not grow with n
