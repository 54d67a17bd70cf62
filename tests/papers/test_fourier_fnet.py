import math

import torch

from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_fnet_matches_torch_fft_reference():
    """Re(DFT_seq · X · DFT_hidden) with explicit DFT matrices equals the mixer; no parameters."""
    m = make_mixer("fnet", False)
    assert sum(p.numel() for p in m.parameters()) == 0
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    n, d = 7, 16

    def dft(k):
        idx = torch.arange(k, dtype=torch.float64)
        ang = -2 * math.pi * idx[:, None] * idx[None, :] / k
        return torch.complex(torch.cos(ang), torch.sin(ang))
    ref = (dft(n) @ x.to(torch.complex128) @ dft(d)).real
    y, _ = m(x.float(), MixerContext())
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)
