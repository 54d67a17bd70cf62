"""LRU: the scan form equals a plain loop of the paper's equation (outputs, final state,
gradients); eigenvalues lie in the unit disk for any parameters; γ starts at sqrt(1 − |λ|²);
decoding continues the state exactly."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def _reference(m, x, mask):
    """x_t = λ x_{t-1} + γ ⊙ B u_t, y_t = Re(C x_t) + D u_t, one step at a time in complex128."""
    nu, th = m.nu_log.double(), m.theta_log.double()
    lam = torch.exp(-torch.exp(nu)) * torch.complex(torch.cos(torch.exp(th)),
                                                    torch.sin(torch.exp(th)))
    gamma = torch.exp(m.gamma_log.double())
    Bm = torch.complex(m.B_re.double(), m.B_im.double())
    Cm = torch.complex(m.C_re.double(), m.C_im.double())
    B, n, H = x.shape
    ys, hs = [], []
    for b in range(B):
        h = torch.zeros(m.state_size, dtype=torch.complex128)
        row = []
        for t in range(n):
            u = x[b, t].double()
            if mask[b, t]:
                h = lam * h + gamma * (Bm @ u.to(torch.complex128))
            row.append((Cm @ h).real + m.D.double() * u)
        ys.append(torch.stack(row))
        hs.append(h)
    return torch.stack(ys), torch.stack(hs)


def test_lru_scan_equals_loop_of_the_equation():
    m = make_mixer("lru", True, state=6, r_min=0.5, r_max=0.99)
    x, mask = left_padded(n=11)
    x = x.requires_grad_(True)
    y, st = m(x, ctx(x, True, mask), m.init_state(2))
    y_ref, h_ref = _reference(m, x, mask)
    assert_rel_close(y[mask], y_ref[mask], 1e-5, "outputs")
    assert_rel_close(st["h"], torch.view_as_real(h_ref), 1e-5, "final state")
    w = torch.randn(y.shape)
    g = torch.autograd.grad((y * w)[mask].sum(), [x] + list(m.parameters()))
    g_ref = torch.autograd.grad((y_ref * w)[mask].sum(), [x] + list(m.parameters()))
    for a, b in zip(g, g_ref):
        assert_rel_close(a, b, 1e-5, "gradient")
    # and the mixer's own recurrent (decoding) form agrees with its scan
    forms_agree(m, ["scan", "recurrent"], x.detach(), mask)


def test_lru_eigenvalues_stay_in_unit_disk_for_any_parameters():
    m = make_mixer("lru", True, state=64, r_min=0.5, r_max=0.9, max_phase=1.0)
    lam = m.eigenvalues().detach()
    assert ((lam.abs() >= 0.5 - 1e-6) & (lam.abs() <= 0.9 + 1e-6)).all()   # the init ring
    assert (lam.angle().abs() <= 1.0 + 1e-6).all()
    with torch.no_grad():
        for p in (m.nu_log, m.theta_log):
            p.copy_(torch.randn_like(p) * 6)                              # arbitrary values
    lam = m.eigenvalues().detach()
    assert (lam.abs() < 1).all() and (lam.abs() >= 0).all()
    # an unconstrained (ν ↦ λ = exp(ν + iθ)) parametrisation would leave the disk here
    assert (torch.exp(m.nu_log.detach()) > 1).any()


def test_lru_gamma_normalisation():
    m = make_mixer("lru", True, state=64, r_min=0.9, r_max=0.999)
    lam = m.eigenvalues().detach()
    gamma = torch.exp(m.gamma_log.detach())
    assert_rel_close(gamma, torch.sqrt(1 - lam.abs() ** 2), 1e-6)
    # the point of γ: a unit-variance drive keeps unit state variance, whatever |λ| (→ 1)
    g = torch.Generator().manual_seed(0)
    n, h, var = 4000, torch.zeros(64, dtype=torch.complex64), []
    for t in range(n):
        drive = torch.complex(torch.randn(64, generator=g), torch.randn(64, generator=g))
        h = lam * h + gamma * drive / math.sqrt(2)
        if t > n // 2:
            var.append(h.abs() ** 2)
    assert abs(torch.stack(var).mean().item() - 1.0) < 0.15


def test_lru_decoding_continues_the_state():
    m = make_mixer("lru", True)
    x, mask = left_padded()
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)


@pytest.mark.parametrize("bad", [{"state": 0}, {"state": -3}, {"r_min": 0.9, "r_max": 0.5},
                                 {"r_max": 1.5}, {"max_phase": 0.0}, {"form": "fft"}])
def test_lru_bad_options_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        make_mixer("lru", True, **bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
