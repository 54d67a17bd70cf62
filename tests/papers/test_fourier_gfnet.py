"""GFNet (Rao et al., 2021): the global filter equals a depthwise circular convolution of the
grid with the filter's inverse FFT, computed here by a slow loop over every offset."""
import pytest
import torch

from tevo.errors import ConfigError, InputError
from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def circular_conv(x, k):
    """x (H, W, d), k (H, W, d): y[i, j] = Σ_{a,b} k[a, b] · x[(i−a) mod H, (j−b) mod W]."""
    H, W, _ = x.shape
    y = torch.zeros_like(x)
    for i in range(H):
        for j in range(W):
            for a in range(H):
                for b in range(W):
                    y[i, j] += k[a, b] * x[(i - a) % H, (j - b) % W]
    return y


@pytest.mark.parametrize("hw", [(3, 4), (4, 5)])
def test_gfnet_equals_circular_convolution(hw):
    torch.manual_seed(0)
    H, W = hw
    d = 6
    m = MIXERS.build({"name": "gfnet", "grid": list(hw)}, d_model=d)
    with torch.no_grad():
        m.weight.normal_()                                      # a filter far from identity
    x = torch.randn(2, H * W, d, dtype=torch.float64)
    y, _ = m(x.float(), MixerContext(grid=hw))
    k = torch.fft.irfft2(m.filter().to(torch.complex128), s=hw, dim=(0, 1))  # spatial kernel
    for b in range(2):
        ref = circular_conv(x[b].view(H, W, d), k)
        torch.testing.assert_close(y[b].double().view(H, W, d), ref, atol=1e-4, rtol=1e-4)
    # a per-token mixer would not move a delta: the filter spreads it over the whole grid
    delta = torch.zeros(1, H * W, d)
    delta[0, 0] = 1
    yd, _ = m(delta, MixerContext(grid=hw))
    assert (yd[0].abs().sum(-1) > 1e-6).sum() > H * W // 2


def test_gfnet_needs_its_grid():
    with pytest.raises(ConfigError, match="grid"):
        MIXERS.build("gfnet", d_model=4)
    m = MIXERS.build({"name": "gfnet", "grid": [3, 4]}, d_model=4)
    with pytest.raises(ConfigError, match="3×4"):
        m(torch.randn(1, 12, 4), MixerContext(grid=(4, 3)))
    with pytest.raises(InputError):
        m(torch.randn(1, 11, 4), MixerContext())
