"""CCNN (Knigge et al., 2023): the SepFlexConv kernel is MAGNet (products of anisotropic Gabor
filters, written out here) times the learned Gaussian window; the kernel network takes N-D
relative positions; FFT form == loop == decode."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.mixers.ssm.ccnn import MAGNet
from papers.ssm_reference import bidirectional_matches_loop, forms_match_loop
from tiny import make_mixer


def magnet(net, x):
    """h₁ = g₁, h_l = (U h + c) ⊙ g_l, k = V h + c; g = exp(−½‖γ(x−μ)‖²) sin(Wx + b), per unit."""
    def g(l):
        out = []
        for i in range(net.mu[l].shape[0]):
            z = (net.gamma[l][i] * (x - net.mu[l][i])).pow(2).sum(-1)
            out.append(torch.exp(-0.5 * z) * torch.sin(x @ net.filters[l].weight[i]
                                                       + net.filters[l].bias[i]))
        return torch.stack(out, -1)
    h = g(0)
    for l, lin in enumerate(net.linears, start=1):
        h = (h @ lin.weight.T + lin.bias) * g(l)
    return h @ net.out.weight.T + net.out.bias


def test_ccnn_kernel_is_a_windowed_magnet():
    m = make_mixer("ccnn", True, hidden=8, layers=3, init_size=0.5, kernel_len=21)
    delta = -torch.arange(21) / 20.0
    w = torch.exp(-delta ** 2 / (2 * m.log_sigma.exp() ** 2))
    want = magnet(m.net, delta[:, None]).T * w * (w >= 0.1)
    torch.testing.assert_close(m.kernels(21)[0], want, rtol=1e-5, atol=1e-6)
    assert (m.kernels(21)[0][:, 11:] == 0).all()                 # cropped beyond the window


def test_magnet_takes_nd_positions_and_is_anisotropic():
    torch.manual_seed(1)
    net = MAGNet(2, 6, 3, layers=2, omega_0=5.0)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 7),
                                      indexing="ij"), -1)        # (5, 7, 2) relative positions
    torch.testing.assert_close(net(grid), magnet(net, grid), rtol=1e-5, atol=1e-6)
    # anisotropic envelopes: with sin ≡ 1 a unit's response falls off at rate γ_d along axis d
    with torch.no_grad():
        net.filters[0].weight.zero_()
        net.filters[0].bias.fill_(math.pi / 2)
        net.mu[0].zero_()
        net.gamma[0].copy_(torch.tensor([[1.0, 3.0]]).expand(6, 2))
    a = 0.5
    g_x = net.gabor(0, torch.tensor([[a, 0.0]]))
    g_y = net.gabor(0, torch.tensor([[0.0, a]]))
    torch.testing.assert_close(g_x, torch.full((1, 6), math.exp(-0.5 * a ** 2)))
    torch.testing.assert_close(g_y, torch.full((1, 6), math.exp(-0.5 * (3 * a) ** 2)))


def test_ccnn_fft_equals_loop_and_decode_and_bidirectional():
    m = make_mixer("ccnn", True, hidden=8, layers=2, init_size=0.5, kernel_len=20)
    forms_match_loop(m)
    bidirectional_matches_loop(make_mixer("ccnn", False, hidden=8, layers=2, init_size=0.5))


@pytest.mark.parametrize("opts,field", [({"hidden": 0}, "hidden"),
                                        ({"init_size": 0.0}, "init_size"),
                                        ({"kernel_len": 0}, "kernel_len")])
def test_ccnn_bad_options(opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("ccnn", True, **opts)
    assert "\n" not in str(e.value)
