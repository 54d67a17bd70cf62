"""SGConv (Li et al., 2023): the kernel is the concatenation of sub-kernels, sub-kernel i
upsampled (linear interpolation, written out here) by 2^{max(i-1,0)} and weighted by α^i,
normalised by its initial norm; it covers taps [m 2^{i-1}, m 2^i); FFT form == loop == decode."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from papers.ssm_reference import bidirectional_matches_loop, forms_match_loop
from tiny import make_mixer


def upsample_linear(w, r):
    """Linear interpolation by an integer factor r (half-pixel centres, edges clamped)."""
    m = w.shape[-1]
    out = []
    for j in range(m * r):
        src = min(max((j + 0.5) / r - 0.5, 0.0), m - 1)
        lo = int(math.floor(src))
        hi = min(lo + 1, m - 1)
        a = src - lo
        out.append((1 - a) * w[..., lo] + a * w[..., hi])
    return torch.stack(out, -1)


def test_sgconv_kernel_is_multiscale_concat_with_decay():
    m = make_mixer("sgconv", True, kernel_dim=4, decay=0.3, kernel_len=64)  # 4,4,8,16,32
    assert m.scales == 1 + math.ceil(math.log2(64 / 4)) == 5
    parts = [upsample_linear(w.detach(), 2 ** max(i - 1, 0)) * 0.3 ** i
             for i, w in enumerate(m.weights)]
    raw = torch.cat(parts, -1)[0]                                # (d, 64)
    want = raw / raw.norm(dim=-1, keepdim=True)                  # Z: the norm at initialisation
    torch.testing.assert_close(m.kernels(64)[0], want, rtol=1e-5, atol=1e-6)
    # sub-kernel i lives exactly on taps [m 2^{i-1}, m 2^i)
    with torch.no_grad():
        for i, w in enumerate(m.weights):
            if i != 3:
                w.zero_()
    support = (m.kernels(64)[0].abs().sum(0) > 0).nonzero().flatten()
    assert support.min().item() == 16 and support.max().item() == 31
    # parameters grow with log L, not L
    assert sum(w.numel() for w in m.weights) == 5 * 16 * 4


def test_sgconv_fft_equals_loop_and_decode():
    m = make_mixer("sgconv", True, kernel_dim=3, kernel_len=20)
    forms_match_loop(m)


def test_sgconv_bidirectional_equals_loop():
    bidirectional_matches_loop(make_mixer("sgconv", False, kernel_dim=4))


@pytest.mark.parametrize("opts,field", [({"kernel_dim": 0}, "kernel_dim"),
                                        ({"decay": 0.0}, "decay"), ({"decay": 1.5}, "decay"),
                                        ({"kernel_len": 100}, "kernel_len")])
def test_sgconv_bad_options(opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("sgconv", True, **opts)
    assert "\n" not in str(e.value)
