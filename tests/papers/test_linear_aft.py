"""AFT: AFT-simple's causal form equals the cumulative (scan/recurrent) form; every variant equals
eq. 2 written out with its position bias; K/V-cache decoding equals the full pass."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def test_aft_simple_causal_equals_cumulative_form():
    m = make_mixer("aft", True, variant="simple")
    x, mask = left_padded(n=14)
    forms_agree(m, ["parallel", "scan", "recurrent"], x, mask)


def _make(variant, causal):
    m = make_mixer("aft", causal, variant=variant, window=3, heads=2, rank=4)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("w_"):
                p.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("variant", ["simple", "full", "local", "conv"])
@pytest.mark.parametrize("causal", [True, False])
def test_aft_variants_equal_equation(variant, causal):
    m = _make(variant, causal)
    x, mask = left_padded(n=10)
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    B, n, d = x.shape
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    H = m.heads
    out = torch.zeros(B, n, d)
    for b in range(B):
        if variant == "simple":
            w = torch.zeros(1, n, n)
        else:
            w = m.position_bias(pos[b:b + 1], pos[b:b + 1])[0]          # (H, n, n)
        hidx = (torch.arange(d) // (d // H)).clamp_max(w.shape[0] - 1)
        wc = w[hidx]                                                    # (d, n, n) per channel
        for t in range(n):
            js = [j for j in range(n) if bool(mask[b, j]) and (j <= t or not causal)]
            if not js:
                continue
            e = torch.exp(k[b, js] + wc[:, t, js].T)                    # (|js|, d)
            out[b, t] = (e * v[b, js]).sum(0) / e.sum(0)
    ref = m.o_proj(torch.sigmoid(q) * out)
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_position_bias_shapes_the_local_and_conv_windows():
    pos = torch.arange(8).unsqueeze(0)
    for variant in ("local", "conv"):
        w = _make(variant, True).position_bias(pos, pos)
        far = (pos[0, :, None] - pos[0, None, :]).abs() >= 3
        assert (w[..., far] == 0).all() and (w[..., ~far] != 0).any()


@pytest.mark.parametrize("variant", ["full", "local", "conv"])
def test_pairwise_variants_decode_with_cache(variant):
    m = _make(variant, True)
    x, mask = left_padded()
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
