"""S4D and S5: the convolution form, the parallel scan and the recurrence are the same map
(outputs, final states, gradients), checked against a plain loop of the papers' equations."""
import math

import pytest
import torch
import torch.nn.functional as F

from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from tevo.mixers.ssm.s4d import hippo_n
from tiny import make_mixer

TOL = dict(rtol=1e-5, atol=1e-5)


def s4d_loop(m, u):
    """S4D eq. 5 (ZOH) / bilinear, written out: per channel h and state s,
    x_t = Ā x_{t-1} + B̄ u_t, y_t = 2 Re(Σ_s C_s x_t,s) + D u_t, one step at a time."""
    Bsz, n, H = u.shape
    p = m.ssm
    lam = torch.complex(-torch.exp(p.log_A_real), p.A_imag)          # (H, S)
    dt = torch.exp(p.log_dt)[:, None]
    if p.discretization == "zoh":
        A = torch.exp(dt * lam)
        Bb = (A - 1) / lam
    else:
        A = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        Bb = dt / (1 - dt * lam / 2)
    C = torch.view_as_complex(p.C)[0]
    x = torch.zeros(Bsz, H, lam.shape[1], dtype=torch.cfloat)
    ys = []
    for t in range(n):
        x = A * x + Bb * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real + m.D * u[:, t])
    return torch.stack(ys, 1), x


def out(m, y):
    return m.output(F.gelu(y))


def ctx(x):
    return MixerContext(causal=True)


def decode(m, x):
    """Prefill half, then one-token steps with the fixed-size state."""
    st = m.init_state(x.shape[0])
    ys = []
    y, st = m(x[:, :5], ctx(x), st)
    ys.append(y)
    for t in range(5, x.shape[1]):
        shape = {k: v.shape for k, v in st.items()}
        y, st = m(x[:, t:t + 1], ctx(x), st)
        assert {k: v.shape for k, v in st.items()} == shape          # never grows with n
        ys.append(y)
    return torch.cat(ys, 1), st


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_scan_equals_recurrence_equals_convolution(disc):
    x = torch.randn(2, 13, 16, requires_grad=True)
    m = make_mixer("s4d", True, discretization=disc, state_size=8)
    y_conv, _ = m(x, ctx(x))
    m_scan = make_mixer("s4d", True, discretization=disc, state_size=8, form="scan")
    m_scan.load_state_dict(m.state_dict())
    y_scan, _ = m_scan(x, ctx(x))
    y_lin, x_last = s4d_loop(m, x)
    y_loop = out(m, y_lin)
    y_dec, st = decode(m, x)
    for y in (y_conv, y_scan, y_dec):
        torch.testing.assert_close(y, y_loop, **TOL)
    torch.testing.assert_close(st["x"], x_last, **TOL)
    # gradients of inputs and every SSM parameter agree across the forms
    w = torch.randn_like(y_loop)
    params = [x, m.ssm.log_A_real, m.ssm.A_imag, m.ssm.log_dt, m.ssm.C, m.D]
    g_ref = torch.autograd.grad((y_loop * w).sum(), params)
    g_conv = torch.autograd.grad((y_conv * w).sum(), params)
    scan_params = [x, m_scan.ssm.log_A_real, m_scan.ssm.A_imag, m_scan.ssm.log_dt,
                   m_scan.ssm.C, m_scan.D]
    g_scan = torch.autograd.grad((y_scan * w).sum(), scan_params)
    for a, b, c in zip(g_ref, g_conv, g_scan):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)


def test_s4d_kernel_is_the_vandermonde_product_and_s4d_lin_init():
    m = make_mixer("s4d", True, state_size=6)
    K = m.ssm.kernel(7)[0]
    A, Bb, C = m.ssm.discrete()
    for h in (0, 5):
        for l in range(7):
            want = sum(C[0, h, s] * Bb[h, s] * A[h, s] ** l for s in range(3)).real
            assert math.isclose(K[h, l].item(), want.item(), rel_tol=1e-4, abs_tol=1e-6)
    lam = torch.complex(-torch.exp(m.ssm.log_A_real), m.ssm.A_imag)
    torch.testing.assert_close(lam[0], torch.tensor([-0.5, -0.5 + 1j * math.pi,
                                                     -0.5 + 2j * math.pi]))


def test_s4d_bidirectional_sees_the_future_and_equals_two_loops():
    m = make_mixer("s4d", False, state_size=4)
    x = torch.randn(1, 9, 16)
    y, _ = m(x, MixerContext(causal=False))
    A, Bb, C = m.ssm.discrete()
    ys = torch.zeros(1, 9, 16)
    for t in range(9):                       # y_t = Σ_{j≥0} K0_j u_{t-j} + Σ_{j≥1} K1_j u_{t+j}
        for s in range(9):
            l = t - s
            kern = C[0] if l >= 0 else C[1]
            ys[0, t] += (kern * Bb * A ** abs(l)).sum(-1).real * x[0, s]
        ys[0, t] += m.D * x[0, t]
    torch.testing.assert_close(y, out(m, ys), **TOL)


def s5_loop(m, u):
    A, Bb, C = m.discrete()                                      # (P,), (P, d), 2C̃ (d, P)
    x = torch.zeros(u.shape[0], A.shape[0], dtype=torch.cfloat)
    ys = []
    for t in range(u.shape[1]):
        x = A * x + u[:, t].to(torch.cfloat) @ Bb.T
        ys.append((x @ C.T).real + m.D * u[:, t])
    return torch.stack(ys, 1), x


def test_s5_scan_equals_recurrence_equals_convolution():
    x = torch.randn(2, 11, 16, requires_grad=True)
    m = make_mixer("s5", True, state_size=6)
    y_scan, _ = m(x, ctx(x))
    y_lin, x_last = s5_loop(m, x)
    # the MIMO convolution: K_l = 2Re(C̃ diag(Ā^l) B̄) (d × d), y_t = Σ_l K_l u_{t-l} + D u_t
    A, Bb, C = m.discrete()
    K = torch.stack([(C * A ** l) @ Bb for l in range(11)]).real          # (L, d, d)
    y_cv = torch.stack([sum(x[:, t - l] @ K[l].T for l in range(t + 1)) for t in range(11)], 1)
    y_cv = y_cv + m.D * x
    torch.testing.assert_close(y_cv, y_lin, **TOL)
    torch.testing.assert_close(y_scan, out(m, y_lin), **TOL)
    y_dec, st = decode(m, x)
    torch.testing.assert_close(y_dec, y_scan, **TOL)
    torch.testing.assert_close(st["x"], x_last, **TOL)
    w = torch.randn_like(y_scan)
    params = [x, m.Lambda_re, m.Lambda_im, m.B, m.C, m.log_dt]
    for a, b in zip(torch.autograd.grad((y_scan * w).sum(), params),
                    torch.autograd.grad((out(m, y_lin) * w).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_s5_hippo_n_init_diagonalises_the_normal_hippo():
    """Λ are eigenvalues of the normal part S of HiPPO-LegS (Re = −1/2) with S V = V Λ."""
    P = 4
    lam, V = hippo_n(P)
    M = 2 * P
    q = torch.sqrt(1 + 2 * torch.arange(M, dtype=torch.float64))
    A = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(torch.arange(M, dtype=torch.float64)))
    p = torch.sqrt(torch.arange(M, dtype=torch.float64) + 0.5)
    S = (A + p[:, None] * p[None, :]).to(torch.cfloat)
    torch.testing.assert_close(S @ V, V * lam, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lam.real, torch.full((P,), -0.5))


@pytest.mark.parametrize("name,opts,field", [
    ("s4d", {"state_size": 0}, "state_size"), ("s4d", {"state_size": 5}, "state_size"),
    ("s4d", {"discretization": "euler"}, "discretization"), ("s4d", {"form": "fft"}, "form"),
    ("s5", {"state_size": -1}, "state_size"), ("s5", {"dt_min": 0.0}, "dt_min"),
])
def test_bad_options_are_one_line_config_errors(name, opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer(name, True, **opts)
    assert "\n" not in str(e.value)
