"""Hyena (Poli et al., 2023): the FFT-convolution operator equals a loop of direct convolutions
(outputs and gradients), the ring-buffer decode equals both, and the implicit filter is the
positional FFN times the exponential modulation window."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps
from tiny import make_mixer


def direct(u, k, mask):
    """y_t = Σ_{j ≤ t} k_j u_{t-j} with padded inputs zeroed: an explicit double loop."""
    u = u * mask[..., None]
    y = torch.zeros_like(u)
    for t in range(u.shape[1]):
        for j in range(min(t + 1, k.shape[-1])):
            y[:, t] = y[:, t] + k[:, j] * u[:, t - j]
    return y


def hyena_loop(m, x, mask):
    d, N = m.d_model, m.order
    u = m.in_proj(x)
    uc = direct(u, m.short_w, mask) + m.short_b
    *xs, z = uc.split(d, -1)
    k = m.filters(min(x.shape[1], m.L))
    for i, x_i in enumerate(reversed(xs[1:])):
        z = z * x_i
        z = direct(z, k[i], mask) + m.bias[i] * z * mask[..., None]
    return m.out_proj(xs[0] * z)


@pytest.mark.parametrize("order", [2, 3])
def test_hyena_fft_conv_equals_direct_conv_loop(order):
    m = make_mixer("hyena", True, order=order, filter_width=8)
    x, mask = left_padded(n=14)
    xr = x.clone().requires_grad_(True)
    y_fft, _ = m(xr, ctx(xr, True, mask))
    y_dir = hyena_loop(m, xr, mask)
    assert_rel_close(y_fft[mask], y_dir[mask], 1e-5, "FFT vs direct")
    w = torch.randn(x.shape)
    params = [xr] + [p for p in m.parameters()]
    g1 = torch.autograd.grad(((y_fft * w)[mask]).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(((y_dir * w)[mask]).sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert_rel_close(a, b, 1e-4, "gradient")
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5, "decode vs parallel")
    assert m.L == 8 < x.shape[1]                                     # kernel shorter than n
    assert [b.shape for b in st["long"]] == [(2, m.L - 1, 16)] * (order - 1)   # fixed size


def test_hyena_filter_is_modulated_positional_ffn():
    m = make_mixer("hyena", True, order=2, filter_width=8, kernel_len=20)
    f = m.filter
    L = 20
    h = m.filters(L)[0]                                               # (d, L)
    for t in (0, 7, 19):
        tt = t / (L - 1)
        wpos = 2 * math.pi * t / L
        z = torch.tensor([tt, math.cos(-1e-4 * wpos), math.sin(-1e-4 * wpos)])
        a = z
        for layer in f.mlp:
            a = layer(a[None])[0]
        decay = torch.exp(-tt * f.deltas[0].abs())
        torch.testing.assert_close(h[:, t], a * decay, rtol=1e-5, atol=1e-6)
    # taps are fixed on the kernel grid: a shorter input sees a prefix of the same filter
    torch.testing.assert_close(m.filters(5), m.filters(L)[..., :5])
    # the window decays: fastest channel at t = 1 is damped to the target (1e-2) of its FFN
    assert math.isclose(math.exp(-f.deltas.abs().max().item()), 1e-2 ** (1 / 0.3), rel_tol=1e-4)


@pytest.mark.parametrize("opts,field", [({"order": 1}, "order"), ({"kernel_len": 0}, "kernel_len"),
                                        ({"kernel_len": 65}, "kernel_len"),
                                        ({"emb_dim": 4}, "emb_dim"),
                                        ({"filter_width": 0}, "filter_width")])
def test_hyena_bad_options(opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("hyena", True, **opts)
    assert "\n" not in str(e.value)
