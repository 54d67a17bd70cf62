"""CKConv and FlexConv (Romero et al., 2022): the kernel is a SIREN of the normalised relative
position — the same network at any resolution —, FlexConv's learned Gaussian width sets how many
taps are nonzero (and which inputs can matter), and FFT form == loop == decode."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from papers.ssm_reference import bidirectional_matches_loop, forms_match_loop
from tiny import make_mixer


def siren(net, delta):
    """The SIREN written out: h = sin(ω₀(W h + b)) per hidden layer, then the linear output."""
    h = delta[:, None]
    for lin in net.hidden:
        h = torch.sin(net.omega_0 * (h @ lin.weight.T + lin.bias))
    return (h @ net.out.weight.T + net.out.bias).T


def test_ckconv_kernel_is_an_mlp_of_relative_positions():
    m = make_mixer("ckconv", True, hidden=8, layers=2, kernel_len=21)
    delta = -torch.arange(21) / 20.0                              # key τ = t − j  →  Δ = −j/20
    torch.testing.assert_close(m.kernels(21)[0], siren(m.net, delta), rtol=1e-5, atol=1e-6)
    # resolution independence: a kernel on a grid twice as fine, same network, agrees on the
    # shared relative positions (a table of taps, or unnormalised positions, would not)
    fine = make_mixer("ckconv", True, hidden=8, layers=2, kernel_len=41)
    fine.net.load_state_dict(m.net.state_dict())
    torch.testing.assert_close(fine.kernels(41)[0][:, ::2], m.kernels(21)[0])
    assert sum(p.numel() for p in m.net.parameters()) == sum(
        p.numel() for p in fine.net.parameters())                 # parameters independent of L


@pytest.mark.parametrize("name", ["ckconv", "flexconv"])
def test_continuous_kernel_fft_equals_loop_and_decode(name):
    m = make_mixer(name, True, hidden=8, layers=2, kernel_len=20)
    forms_match_loop(m)


@pytest.mark.parametrize("name", ["ckconv", "flexconv"])
def test_continuous_kernel_bidirectional_reads_positive_positions(name):
    m = make_mixer(name, False, hidden=8, layers=2, kernel_len=20)
    bidirectional_matches_loop(m)
    k_f, k_b = m.kernels(10)
    delta = torch.arange(10) / 19.0
    want = siren(m.net, delta)
    if name == "flexconv":
        want = want * m.window(delta)
    torch.testing.assert_close(k_b, want, rtol=1e-5, atol=1e-6)


def test_flexconv_learned_width_sets_the_kernel_size():
    m = make_mixer("flexconv", True, hidden=8, layers=2, init_size=0.26, kernel_len=41)
    k = m.kernels(41)[0]
    delta = -torch.arange(41) / 40.0
    w = torch.exp(-delta ** 2 / (2 * m.log_sigma.exp() ** 2))
    torch.testing.assert_close(k, siren(m.net, delta) * w * (w >= 0.1), rtol=1e-5, atol=1e-6)
    size = int((k[0] != 0).sum())
    assert size == int(m.effective_size()[0]) == math.floor(0.26 * 40) + 1 == 11
    with torch.no_grad():
        m.log_sigma.add_(math.log(2))                            # double σ: double the reach
    assert int((m.kernels(41)[0][0] != 0).sum()) == int(m.effective_size()[0]) == 21
    # inputs beyond the window cannot reach the output; inside they do
    x = torch.randn(1, 30, 16)
    from tevo.nn.context import MixerContext
    y = m(x, MixerContext(causal=True))[0][:, -1]
    x2 = x.clone()
    x2[:, :30 - 21] += 10.0                                      # more than 20 steps back
    torch.testing.assert_close(m(x2, MixerContext(causal=True))[0][:, -1], y)
    x2[:, 30 - 21] += 10.0                                       # exactly 20 steps back
    assert not torch.allclose(m(x2, MixerContext(causal=True))[0][:, -1], y)
    # and the width is learned: the loss gradient reaches σ
    m(x, MixerContext(causal=True))[0].pow(2).sum().backward()
    assert m.log_sigma.grad is not None and m.log_sigma.grad.abs().sum() > 0


@pytest.mark.parametrize("name,opts,field", [
    ("ckconv", {"hidden": 0}, "hidden"), ("ckconv", {"kernel_len": 65}, "kernel_len"),
    ("ckconv", {"omega_0": -1.0}, "omega_0"), ("flexconv", {"init_size": 0.0}, "init_size"),
    ("flexconv", {"init_size": 1.5}, "init_size"), ("flexconv", {"layers": 0}, "layers")])
def test_continuous_kernel_bad_options(name, opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer(name, True, **opts)
    assert "\n" not in str(e.value)
