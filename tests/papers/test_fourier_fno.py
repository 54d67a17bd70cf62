"""FNO (Li et al., 2021): with every mode kept the spectral layer is the full spectral
convolution F⁻¹(R_k F(v)_k) for all k (a dense per-mode d×d product computed with an explicit
DFT), and with fewer modes the output's spectrum is zero past them."""
import torch

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def dft_matrix(n):
    k = torch.arange(n, dtype=torch.float64)
    return torch.exp(-2j * torch.pi * torch.outer(k, k) / n)          # F[k, t]


def test_fno_all_modes_is_full_spectral_conv_and_truncation_zeroes():
    torch.manual_seed(0)
    d, n = 4, 10
    m = MIXERS.build({"name": "fno", "modes": n // 2 + 1, "linear": False}, d_model=d)
    x = torch.randn(2, n, d, dtype=torch.float64)
    y, _ = m(x.float(), MixerContext())
    # reference: full DFT, every mode k multiplied by R_k (Hermitian partner k' = n−k gets the
    # conjugate, so the result is real), inverse DFT
    F = dft_matrix(n)
    R = torch.view_as_complex(m.weight.detach().double())            # (n/2+1, d, d)
    X = torch.einsum("kt,btd->bkd", F, x.to(torch.complex128))
    Y = torch.zeros_like(X)
    for k in range(n):
        if k <= n // 2:
            Y[:, k] = X[:, k] @ R[k]
        else:
            Y[:, k] = X[:, k] @ R[n - k].conj()
    Y[:, 0] = (X[:, 0] @ R[0]).real                   # DC and Nyquist: real-valued modes
    Y[:, n // 2] = (X[:, n // 2] @ R[n // 2]).real
    ref = torch.einsum("tk,bkd->btd", F.conj(), Y).real / n
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)

    # truncation: 2 modes kept → the spectrum of the output is zero from mode 2 on
    m2 = MIXERS.build({"name": "fno", "modes": 2, "linear": False}, d_model=d)
    y2, _ = m2(x.float(), MixerContext())
    S = torch.fft.rfft(y2.double(), dim=1)
    assert S[:, 2:].abs().max() < 1e-5
    assert S[:, :2].abs().max() > 1e-2


def test_fno_2d_truncation_zeroes_the_high_modes():
    torch.manual_seed(1)
    d, H, W = 4, 6, 8
    m = MIXERS.build({"name": "fno", "modes": [2, 3], "linear": False, "grid": [H, W]},
                     d_model=d)
    x = torch.randn(2, H * W, d)
    y, _ = m(x, MixerContext(grid=(H, W)))
    S = torch.fft.rfft2(y.view(2, H, W, d).double(), dim=(1, 2)).abs()   # (2, H, W/2+1, d)
    kept = torch.zeros(H, W // 2 + 1, dtype=torch.bool)
    kept[:2, :3] = True
    kept[H - 2:, :3] = True
    # a real output has a Hermitian spectrum: in column 0 the row partners (H − h) of the kept
    # rows carry the conjugates (the authors' layout keeps rows 0..m-1 and H-m..H-1)
    for h in range(H):
        if kept[h, 0]:
            kept[(H - h) % H, 0] = True
    assert S[:, ~kept].max() < 1e-5
    assert kept.sum() < kept.numel() // 2
    assert S[:, kept].max() > 1e-2
