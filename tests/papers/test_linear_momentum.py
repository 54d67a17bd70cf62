"""Momentum attention: μ = 0 equals ``linear``; equals the heavy-ball loop of the paper; forms
agree; decoding continues the state."""
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def test_momentum_zero_equals_linear():
    lin = make_mixer("linear", True, chunk=4)
    mom = make_mixer("momentum", True, chunk=4, momentum=0.0, step=0.3)
    mom.load_state_dict(lin.state_dict())
    x, mask = left_padded()
    assert_rel_close(mom(x, ctx(x, True, mask))[0][mask], lin(x, ctx(x, True, mask))[0][mask],
                     1e-6)
    mom9 = make_mixer("momentum", True, chunk=4, momentum=0.9)
    mom9.load_state_dict(lin.state_dict())
    diff = (mom9(x, ctx(x, True, mask))[0] - lin(x, ctx(x, True, mask))[0])[mask].abs().max()
    assert diff > 1e-3                                         # momentum changes the weights


def test_momentum_equals_heavy_ball_loop():
    mu, gamma = 0.6, 0.5
    m = make_mixer("momentum", True, chunk=4, momentum=mu, step=gamma, normalize="none")
    x = torch.randn(2, 9, 16)
    y, _ = m(x, ctx(x, True))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    fq, fk = m.fmap(q), m.fmap(k)
    p_ = torch.zeros(B, h, e, e)
    s = torch.zeros(B, h, e, e)
    outs = []
    for t in range(n):
        p_ = mu * p_ + fk[..., t, :, None] * v[..., t, None, :]
        s = s + gamma * p_
        outs.append((fq[..., t, None, :] @ s).squeeze(-2))
    ref = m.o_proj(torch.stack(outs, 2).transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y, ref, 1e-5)


def test_momentum_forms_and_decoding_agree():
    m = make_mixer("momentum", True, chunk=4, momentum=0.7)
    x, mask = left_padded()
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
