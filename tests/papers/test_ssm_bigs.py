"""BiGS (Wang et al., 2023): the block equals a loop with the forward SSM recurrence run left to
right and the backward one right to left (one S4D system shared by all channels per direction),
the two meeting multiplicatively; every token sees both sides."""
import pytest
import torch
import torch.nn.functional as F

from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from papers.linear_reference import assert_rel_close
from tiny import make_mixer


def recurrence(ssm, D, u, reverse=False):
    """x_t = Ā x_{t∓1} + B̄ u_t, y_t = 2Re(C·x_t) + D u_t: one system for every channel."""
    A, Bb, C = ssm.discrete()                                   # (1, S), (1, S), (1, 1, S)
    B, n, d = u.shape
    x = torch.zeros(B, d, A.shape[1], dtype=torch.cfloat)
    out = [None] * n
    order = range(n - 1, -1, -1) if reverse else range(n)
    for t in order:
        x = A[0] * x + Bb[0] * u[:, t, :, None]
        out[t] = (C[0, 0] * x).sum(-1).real + D * u[:, t]
    return torch.stack(out, 1)


def bigs_loop(m, x, mask):
    uf = F.gelu(m.w_f(x)) * mask[..., None]
    ub = F.gelu(m.w_b(x)) * mask[..., None]
    f = recurrence(m.ssm_f, m.D[0], uf)
    b = recurrence(m.ssm_b, m.D[1], ub, reverse=True)
    v = F.gelu(m.w_v(x))
    return m.w_o(F.gelu(m.w_ol(m.w_uf(f) * m.w_ub(b))) * v)


def test_bigs_equals_forward_and_backward_recurrence_loops():
    m = make_mixer("bigs", False, state_size=8, expand=2)
    x = torch.randn(2, 11, 16, requires_grad=True)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False                                          # right padding
    y, _ = m(x, MixerContext(causal=False, key_padding_mask=mask))
    y_loop = bigs_loop(m, x, mask)
    assert_rel_close(y[mask], y_loop[mask], 1e-5, "FFT vs loops")
    w = torch.randn(y.shape)
    params = [x] + list(m.parameters())
    for a, b in zip(torch.autograd.grad((y * w)[mask].sum(), params),
                    torch.autograd.grad((y_loop * w)[mask].sum(), params)):
        assert_rel_close(a, b, 1e-4, "gradient")


def test_bigs_forward_branch_is_causal_backward_anticausal_output_sees_both():
    m = make_mixer("bigs", False, state_size=8, expand=2)
    x = torch.randn(1, 9, 16)
    f, b = m.directions(x, None)
    x2 = x.clone()
    x2[:, 4] += 3.0
    f2, b2 = m.directions(x2, None)
    torch.testing.assert_close(f2[:, :4], f[:, :4])               # F_t sees only τ ≤ t
    torch.testing.assert_close(b2[:, 5:], b[:, 5:])               # Bk_t sees only τ ≥ t
    assert not torch.allclose(f2[:, 5:], f[:, 5:]) and not torch.allclose(b2[:, :4], b[:, :4])
    y = m(x, MixerContext())[0]
    y2 = m(x2, MixerContext())[0]
    assert (y2 - y).abs()[0, [0, 8]].amax(-1).min() > 0           # both ends see token 4


@pytest.mark.parametrize("opts,field", [({"state_size": 0}, "state_size"),
                                        ({"expand": 0}, "expand"),
                                        ({"dt_min": 2.0}, "dt_min")])
def test_bigs_bad_options(opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("bigs", False, **opts)
    assert "\n" not in str(e.value)


def test_bigs_is_bidirectional_only():
    with pytest.raises(ConfigError, match="causal"):
        make_mixer("bigs", True)
