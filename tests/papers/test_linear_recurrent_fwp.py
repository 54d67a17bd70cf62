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


def test_feedback_path_equals_an_explicit_loop_of_eqs_8_to_13():
    """The whole recurrence against a plain per-head loop of the paper's equations: the slow net
    reads R·tanh(y_{t-1}) (the previous output of all heads, before W^O), β goes through a
    sigmoid, the delta rule writes W_t, and y_t = W_tᵀφ(q_t). A layer that fed back y_t, skipped
    the tanh or the β feedback, or read another head's slice would fail here."""
    torch.manual_seed(3)
    m = make_mixer("recurrent_fwp", True, feature_map=DPFP)
    with torch.no_grad():
        m.r_proj.weight.normal_(0, 0.5)
    B, n, h, e = 2, 7, m.heads, m.head_dim
    x = torch.randn(B, n, 16)
    y, _ = m(x, ctx(x, True))
    Rq, Rk, Rv, Rb = m.r_proj.weight.detach().split([h * e, h * e, h * e, h], 0)

    def phi(t):                                            # DPFP then φ/Σφ (§4.3)
        f = m.fmap(t.view(1, 1, 1, e), None)[0, 0, 0]
        return f / f.sum()
    outs = torch.zeros(B, n, h * e)
    with torch.no_grad():
        for b in range(B):
            W = [None] * h
            y_prev = torch.zeros(h * e)
            for t in range(n):
                u = torch.tanh(y_prev)
                q = m.q_proj(x[b, t]) + Rq @ u
                k = m.k_proj(x[b, t]) + Rk @ u
                v = m.v_proj(x[b, t]) + Rv @ u
                beta = torch.sigmoid(m.beta_proj(x[b, t]) + Rb @ u)
                y_t = torch.zeros(h * e)
                for i in range(h):
                    sl = slice(i * e, (i + 1) * e)
                    fq, fk = phi(q[sl]), phi(k[sl])
                    if W[i] is None:
                        W[i] = torch.zeros(fk.numel(), e)
                    W[i] = W[i] + beta[i] * torch.outer(fk, v[sl] - W[i].T @ fk)
                    y_t[sl] = W[i].T @ fq
                outs[b, t] = y_t
                y_prev = y_t
        ref = m.o_proj(outs)
    assert_rel_close(y, ref, 1e-5)
