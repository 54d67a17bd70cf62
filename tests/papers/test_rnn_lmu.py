"""LMU: A and B are the paper's Legendre (Padé) matrices, discretised by zero-order hold; the
memory decodes the delayed input through shifted Legendre polynomials (the defining property);
the parallel (FFT convolution) form equals the recurrent one (outputs, final state, gradients),
also when continuing from a state; decoding keeps a fixed (m_d, q) state."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.mixers.rnn.lmu import matrix_powers_apply
from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def test_lmu_matrices_are_the_legendre_pade_ones():
    q, theta = 6, 10.0
    m = make_mixer("lmu", True, order=q, theta=theta)
    A = torch.zeros(q, q, dtype=torch.float64)
    B = torch.zeros(q, dtype=torch.float64)
    for i in range(q):                                     # eq. 2, written entry by entry
        B[i] = (2 * i + 1) * (-1) ** i
        for j in range(q):
            A[i, j] = (2 * i + 1) * (-1 if i < j else (-1) ** (i - j + 1))
    assert torch.equal(m.A.double(), A) and torch.equal(m.B.double(), B)
    # ZOH with unit step: Ā = Σ (A/θ)^k / k!,  B̄ = Σ (A/θ)^k / (k+1)! · B/θ  (power series)
    Ac, Bc = A / theta, B / theta
    A_bar, B_bar = torch.eye(q, dtype=torch.float64), Bc.clone()
    P = torch.eye(q, dtype=torch.float64)
    for k in range(1, 60):
        P = P @ Ac
        A_bar = A_bar + P / float(math.factorial(k))
        B_bar = B_bar + P @ Bc / float(math.factorial(k + 1))
    assert_rel_close(m.A_bar, A_bar, 1e-6)
    assert_rel_close(m.B_bar, B_bar, 1e-6)


def _shifted_legendre(i, r):
    return (-1) ** i * sum(math.comb(i, j) * math.comb(i + j, j) * (-r) ** j
                           for j in range(i + 1))


def test_memory_decodes_the_delayed_input_with_legendre_polynomials():
    """u(t − θ') ≈ Σ_i P̃_i(θ'/θ) m_i(t) (Voelker et al., eq. 3) over the whole window."""
    q, theta = 12, 32.0
    m = make_mixer("lmu", True, order=q, theta=theta)
    t = torch.arange(300, dtype=torch.float64)
    u = torch.sin(2 * math.pi * t / 80) + 0.5 * torch.cos(2 * math.pi * t / 50)
    mem = torch.zeros(q, dtype=torch.float64)
    A_bar, B_bar = m.A_bar.double(), m.B_bar.double()
    for s in range(300):
        mem = A_bar @ mem + B_bar * u[s]
    errs = []
    for delay in (0, 8, 16, 24, 31):
        est = sum(_shifted_legendre(i, delay / theta) * mem[i] for i in range(q))
        errs.append(abs(est.item() - u[299 - delay].item()))
    assert max(errs) < 0.05, errs


def test_lmu_parallel_equals_recurrent():
    m = make_mixer("lmu", True, order=5, memory=2, theta=6.0)
    x, mask = left_padded(n=13)
    forms_agree(m, ["conv", "recurrent"], x, mask)
    # continuing from a non-zero state: the conv form adds Ā^{t+1} m_{-1}
    st = {"m": torch.randn(2, 2, 5)}
    outs = []
    for form in ("conv", "recurrent"):
        m.form = form
        y, s = m(x, ctx(x, True), dict(st))
        outs.append((y, s["m"]))
    assert_rel_close(outs[0][0], outs[1][0], 1e-5)
    assert_rel_close(outs[0][1], outs[1][1], 1e-5)


def test_matrix_powers_by_squaring():
    A = torch.randn(4, 4, dtype=torch.float64) * 0.5
    v = torch.randn(3, 4, dtype=torch.float64)
    P = matrix_powers_apply(A, v, 11)
    ref = torch.stack([v @ torch.linalg.matrix_power(A, k).T for k in range(11)], 1)
    assert_rel_close(P, ref, 1e-10)


def test_lmu_decoding_keeps_a_fixed_state():
    m = make_mixer("lmu", True)
    x, mask = left_padded(n=12)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["m"].shape == (2, 2, 4)


@pytest.mark.parametrize("bad", [{"order": 0}, {"memory": -1}, {"theta": 0.0},
                                 {"form": "scan"}])
def test_lmu_bad_options_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        make_mixer("lmu", True, **bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
