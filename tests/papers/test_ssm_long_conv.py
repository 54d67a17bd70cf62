"""Long convolutions (Fu et al., 2023): the kernel the convolution uses is Squash(Smooth(K)) of
the explicit kernel (written out tap by tap here), the FFT form equals a loop, decoding equals
both, and Squash makes the kernel sparse."""
import pytest
import torch

from tevo.errors import ConfigError
from papers.ssm_reference import bidirectional_matches_loop, forms_match_loop
from tiny import make_mixer


def test_long_conv_kernel_is_squashed_smoothed_explicit_kernel():
    m = make_mixer("long_conv", True, lam=0.3, smooth_window=3, init_std=1.0)
    K = m.kernel[0].detach()                                     # (d, L)
    d, L = K.shape
    want = torch.zeros(d, L)
    for c in range(d):
        for j in range(L):
            # Smooth: average of taps j-1, j, j+1 (missing ends count as zero)
            s = sum(K[c, i] for i in (j - 1, j, j + 1) if 0 <= i < L) / 3
            # Squash: soft threshold at λ
            want[c, j] = torch.sign(s) * max(abs(s) - 0.3, 0.0)
    torch.testing.assert_close(m.kernels(L)[0], want, rtol=1e-5, atol=1e-6)
    assert (want == 0).float().mean() > 0.2                       # squash zeroes small taps


@pytest.mark.parametrize("window", [1, 5])
def test_long_conv_fft_equals_loop_and_decode(window):
    m = make_mixer("long_conv", True, lam=0.01, smooth_window=window, init_std=0.1,
                   kernel_len=20)
    forms_match_loop(m)


def test_long_conv_bidirectional_equals_loop():
    bidirectional_matches_loop(make_mixer("long_conv", False, lam=0.0, init_std=0.1))


@pytest.mark.parametrize("opts,field", [({"kernel_len": 0}, "kernel_len"),
                                        ({"kernel_len": 65}, "kernel_len"),
                                        ({"smooth_window": 2}, "smooth_window"),
                                        ({"lam": -1.0}, "lam"),
                                        ({"kernel_dropout": 1.0}, "kernel_dropout")])
def test_long_conv_bad_options(opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("long_conv", True, **opts)
    assert "\n" not in str(e.value)
