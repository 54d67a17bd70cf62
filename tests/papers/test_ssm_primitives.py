"""Shared primitives of the state-space / long-convolution family: FFT convolution == direct
convolution, the SSM kernel == the unrolled recurrence == the parallel scan, ZOH and bilinear
discretisation against their closed forms, and the fixed-size convolution buffer."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.nn.fftconv import (check_kernel_len, conv_buffer, conv_with_state, direct_conv,
                             fft_conv, fft_size)
from tevo.nn.ssm import (discretize, ssm_kernel, ssm_kernel_dense, ssm_loop, ssm_scan,
                         ssm_step)
from tevo.registry import TOOLS

TOL = dict(rtol=1e-5, atol=1e-5)


def naive_conv(u, k, D=None):
    """y[b, t, c] = Σ_{j ≤ t, j < L} k[c, j] u[b, t - j, c] (+ D u): a triple loop."""
    B, n, d = u.shape
    y = torch.zeros(B, n, d, dtype=torch.float64)
    for t in range(n):
        for j in range(min(t + 1, k.shape[-1])):
            y[:, t] += k[..., j].double() * u[:, t - j].double()
    if D is not None:
        y += D.double() * u.double()
    return y.float()


@pytest.mark.parametrize("n", [1, 7, 8, 13, 32])
@pytest.mark.parametrize("L", [1, 3, 8, 40])
def test_fft_conv_equals_direct_conv(n, L):
    """Odd and even lengths, kernels shorter and longer than the input, with the skip term."""
    u = torch.randn(2, n, 5, requires_grad=True)
    k = torch.randn(5, L, requires_grad=True)
    D = torch.randn(5)
    fast, slow = fft_conv(u, k, D), naive_conv(u.detach(), k.detach(), D)
    torch.testing.assert_close(fast, slow, **TOL)
    torch.testing.assert_close(direct_conv(u, k, D), slow, **TOL)
    w = torch.randn_like(fast)
    g1 = torch.autograd.grad((fast * w).sum(), (u, k))
    g2 = torch.autograd.grad((direct_conv(u, k, D) * w).sum(), (u, k))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)
    assert TOOLS.get("fft_conv").obj is fft_conv


def test_fft_conv_per_sample_kernel_and_bf16_input():
    u, k = torch.randn(3, 11, 4), torch.randn(3, 4, 6)
    ref = torch.stack([naive_conv(u[i:i + 1], k[i]) for i in range(3)]).squeeze(1)
    torch.testing.assert_close(fft_conv(u, k), ref, **TOL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = fft_conv(u.bfloat16(), k[0])
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), naive_conv(u.bfloat16().float(), k[0]),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("L", [3, 20])
def test_fft_conv_left_padding_contributes_nothing(L):
    """Real tokens of a left-padded row equal the unpadded row's outputs: padded positions
    (large random values) contribute nothing through the mask."""
    n, pad = 9, 4
    u = torch.randn(1, n, 3)
    k, D = torch.randn(3, L), torch.randn(3)
    junk = torch.randn(1, pad, 3) * 100
    up = torch.cat([junk, u], 1)
    mask = torch.ones(1, n + pad, dtype=torch.bool)
    mask[:, :pad] = False
    ref = fft_conv(u, k, D)
    torch.testing.assert_close(fft_conv(up, k, D, mask)[:, pad:], ref, **TOL)
    torch.testing.assert_close(direct_conv(up, k, D, mask)[:, pad:], ref, **TOL)
    # without the mask the junk would leak: the check above can fail
    assert not torch.allclose(fft_conv(up, k, D)[:, pad:], ref, atol=1e-3)


@pytest.mark.parametrize("L", [1, 4, 30])
def test_conv_buffer_prefill_then_steps_equals_full_conv(L):
    """The fixed-size buffer (last L-1 inputs) continues the convolution exactly."""
    n, d = 17, 3
    u, k, D = torch.randn(2, n, d), torch.randn(d, L), torch.randn(d)
    full = fft_conv(u, k, D)
    buf = conv_buffer(2, L, d)
    ys = []
    y, buf = conv_with_state(u[:, :6], k, buf, D)
    ys.append(y)
    for t in range(6, n):
        y, buf = conv_with_state(u[:, t:t + 1], k, buf, D)
        assert buf.shape == (2, L - 1, d)                    # fixed size, never grows
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), full, **TOL)


def test_bad_kernel_length_and_fft_overflow_are_config_errors():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="kernel_len"):
            check_kernel_len("mixer.kernel_len", bad)
    with pytest.raises(ConfigError, match="max_len"):
        check_kernel_len("mixer.kernel_len", 65, max_len=64)
    assert check_kernel_len("mixer.kernel_len", 64, max_len=64) == 64
    assert fft_size(8, 8) == 16 and fft_size(9, 1) == 16 and fft_size(1, 1) == 1
    with pytest.raises(ConfigError, match="FFT") as e:
        fft_size(1 << 26, 1 << 26)
    assert "\n" not in str(e.value)


def random_ssm(H=3, N=4):
    Lambda = torch.complex(-torch.rand(H, N) - 0.1, torch.randn(H, N) * 3)
    B = torch.randn(H, N, dtype=torch.cfloat)
    C = torch.randn(H, N, dtype=torch.cfloat)
    dt = torch.rand(H, 1) * 0.5 + 0.05
    return Lambda, B, C, dt


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_discretization_closed_forms(method):
    """ZOH equals the exact solution of x' = λx + bu with u held constant over Δ (matrix
    exponential of the augmented system); bilinear equals the trapezoid rule's update."""
    Lambda, B, _, dt = random_ssm(1, 1)
    A_bar, B_bar = discretize(Lambda, B, dt, method)
    lam, b, h = Lambda[0, 0].cdouble(), B[0, 0].cdouble(), dt[0, 0].double()
    if method == "zoh":
        M = torch.tensor([[lam * h, b * h], [0, 0]], dtype=torch.cdouble)
        E = torch.linalg.matrix_exp(M)                    # [[Ā, B̄], [0, 1]]
        want_A, want_B = E[0, 0], E[0, 1]
    else:                                                 # (1 - hλ/2) x₁ = (1 + hλ/2) x₀ + h b u
        want_A = (1 + h * lam / 2) / (1 - h * lam / 2)
        want_B = h * b / (1 - h * lam / 2)
    torch.testing.assert_close(A_bar[0, 0].cdouble(), want_A, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(B_bar[0, 0].cdouble(), want_B, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("n", [1, 9, 16])
def test_ssm_kernel_equals_recurrence(method, n):
    """Convolution with K_l = Re(Σ C B̄ Ā^l) == the recurrence loop == the parallel scan,
    outputs and gradients (scan == recurrence == convolution)."""
    Lambda, B, C, dt = random_ssm()
    Lambda.requires_grad_(True)
    u = torch.randn(2, n, 3, requires_grad=True)
    A_bar, B_bar = discretize(Lambda, B, dt, method)
    K = ssm_kernel(A_bar, B_bar, C, n)                     # (H, n)
    y_conv = fft_conv(u, K)
    y_loop, x_loop = ssm_loop(u, A_bar, B_bar, C)
    y_scan, xs = ssm_scan(u, A_bar, B_bar, C)
    torch.testing.assert_close(y_conv, y_loop, **TOL)
    torch.testing.assert_close(y_scan, y_loop, **TOL)
    torch.testing.assert_close(xs[:, -1], x_loop, **TOL)
    w = torch.randn_like(y_loop)
    grads = [torch.autograd.grad((y * w).sum(), (u, Lambda), retain_graph=True)
             for y in (y_conv, y_loop, y_scan)]
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ssm_kernel_is_the_vandermonde_sum():
    Lambda, B, C, dt = random_ssm(2, 3)
    A_bar, B_bar = discretize(Lambda, B, dt)
    K = ssm_kernel(A_bar, B_bar, C, 6)
    for h in range(2):
        for l in range(6):
            want = sum((C[h, s] * B_bar[h, s] * A_bar[h, s] ** l) for s in range(3)).real
            assert math.isclose(K[h, l].item(), want.item(), rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("L", [1, 2, 10, 37, 200])
def test_blocked_ssm_kernel_equals_dense_vandermonde(L):
    """The blocked fast path (Ā^{gT+t} = Ā^{gT} Ā^t, two real matmuls) == the dense (H, N, L)
    Vandermonde form: values and gradients, with a channel dim on C (bidirectional S4D), for
    lengths that are and are not a whole number of blocks."""
    Lambda, B, C, dt = random_ssm(4, 6)
    Lambda.requires_grad_(True)
    C = torch.stack([C, 0.5 * C.conj()]).requires_grad_(True)      # (2, H, N)
    A_bar, B_bar = discretize(Lambda, B, dt)
    fast, dense = ssm_kernel(A_bar, B_bar, C, L), ssm_kernel_dense(A_bar, B_bar, C, L)
    assert fast.shape == dense.shape == (2, 4, L)
    torch.testing.assert_close(fast, dense, **TOL)
    w = torch.randn_like(dense)
    g1 = torch.autograd.grad((fast * w).sum(), (Lambda, C), retain_graph=True)
    g2 = torch.autograd.grad((dense * w).sum(), (Lambda, C), retain_graph=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ssm_scan_continues_from_state_and_step():
    Lambda, B, C, dt = random_ssm()
    A_bar, B_bar = discretize(Lambda, B, dt, "bilinear")
    u = torch.randn(2, 10, 3)
    y_full, xs = ssm_scan(u, A_bar, B_bar, C)
    _, x_mid = ssm_scan(u[:, :6], A_bar, B_bar, C)
    y_rest, _ = ssm_scan(u[:, 6:], A_bar, B_bar, C, x0=x_mid[:, -1])
    torch.testing.assert_close(y_rest, y_full[:, 6:], **TOL)
    y7, x7 = ssm_step(x_mid[:, -1], u[:, 6], A_bar, B_bar, C)
    torch.testing.assert_close(y7, y_full[:, 6], **TOL)
    torch.testing.assert_close(x7, xs[:, 6], **TOL)
    with pytest.raises(ConfigError, match="discretization"):
        discretize(Lambda, B, dt, "euler")


def test_fft_conv_input_gradient_is_exactly_causal_and_per_sample_kernel_grads():
    """No gradient reaches inputs after the differentiated output, bit for bit (the FFT's
    rounding would leave ~1e-10 there); per-sample kernels get the direct convolution's grads."""
    u = torch.randn(2, 20, 3, requires_grad=True)
    k = torch.randn(3, 20)
    fft_conv(u, k)[:, 7].sum().backward()
    assert (u.grad[:, 8:] == 0).all() and (u.grad[:, :8] != 0).all()
    u = torch.randn(2, 9, 3, requires_grad=True)
    kb = torch.randn(2, 3, 5, requires_grad=True)
    w = torch.randn(2, 9, 3)
    g1 = torch.autograd.grad((fft_conv(u, kb) * w).sum(), (u, kb))
    g2 = torch.autograd.grad((direct_conv(u, kb) * w).sum(), (u, kb))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)
