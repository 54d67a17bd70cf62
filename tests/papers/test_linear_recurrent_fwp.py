"""Recurrent FWP (RDN): with zero feedback weights it equals ``fast_weight``; the feedback
changes the outputs; decoding continues (state = fast weights + last output)."""
import torch

from tiny import make_mixer

DPFP = {"name": "dpfp", "nu": 2}           # the paper's feature map
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps


def test_zero_feedback_equals_fast_weight():
    fw = make_mixer("fast_weight", True, chunk=4, feature_map=DPFP)
    rfwp = make_mixer("recurrent_fwp", True, feature_map=DPFP)
    rfwp.load_state_dict(fw.state_dict(), strict=False)
    with torch.no_grad():
        rfwp.r_proj.weight.zero_()
    x, mask = left_padded()
    assert_rel_close(rfwp(x, ctx(x, True, mask))[0][mask], fw(x, ctx(x, True, mask))[0][mask],
                     1e-5)
    with torch.no_grad():
        rfwp.r_proj.weight.normal_(0, 0.5)
    diff = (rfwp(x, ctx(x, True, mask))[0] - fw(x, ctx(x, True, mask))[0])[mask].abs().max()
    assert diff > 1e-3


def test_feedback_uses_the_previous_output():
    """Changing token t changes outputs after t through y_t (and only after t)."""
    m = make_mixer("recurrent_fwp", True, feature_map=DPFP)
    with torch.no_grad():
        m.r_proj.weight.normal_(0, 0.5)
    x = torch.randn(1, 6, 16)
    y, _ = m(x, ctx(x, True))
    x2 = x.clone()
    x2[:, 2] += 1.0
    y2, _ = m(x2, ctx(x2, True))
    assert torch.allclose(y[:, :2], y2[:, :2]) and not torch.allclose(y[:, 3:], y2[:, 3:])


def test_decoding_continues_with_padding():
    m = make_mixer("recurrent_fwp", True, feature_map=DPFP)
    x, mask = left_padded()
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert set(st) == {"S", "y"}
