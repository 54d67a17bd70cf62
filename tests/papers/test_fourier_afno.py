"""AFNO (Guibas et al., 2022): the layer equals its equation evaluated frequency by frequency
(the block-diagonal complex MLP, soft shrinkage, inverse FFT, skip), and with the shrinkage off,
one block and the MLP made a linear complex diagonal map it is GFNet's global filter (with a
frequency-constant K) plus the skip."""
import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def reference(m, x, hw):
    """A loop over every frequency (h, w) and block, complex arithmetic written out."""
    B, n, d = x.shape
    H, W = hw
    X = torch.fft.rfft2(x.double().view(B, H, W, d), dim=(1, 2), norm="ortho")
    w1 = torch.complex(m.w1[0].double(), m.w1[1].double())          # (k, bs, hs)
    b1 = torch.complex(m.b1[0].double(), m.b1[1].double())
    w2 = torch.complex(m.w2[0].double(), m.w2[1].double())
    b2 = torch.complex(m.b2[0].double(), m.b2[1].double())
    Z = torch.zeros_like(X)
    for h in range(H):
        for w in range(X.shape[2]):
            for k in range(m.k):
                v = X[:, h, w, k * m.bs:(k + 1) * m.bs]                 # (B, bs)
                u = v @ w1[k] + b1[k]
                u = torch.complex(u.real.clamp(min=0), u.imag.clamp(min=0))   # ReLU on both
                o = u @ w2[k] + b2[k]
                o = torch.complex(F.softshrink(o.real, m.lam), F.softshrink(o.imag, m.lam))
                Z[:, h, w, k * m.bs:(k + 1) * m.bs] = o
    y = torch.fft.irfft2(Z, s=hw, dim=(1, 2), norm="ortho").reshape(B, n, d)
    return y + x.double()


def test_afno_equals_per_frequency_reference_and_gfnet_form():
    torch.manual_seed(0)
    d, hw = 8, (3, 4)
    for shrink in (0.0, 0.05):
        m = MIXERS.build({"name": "afno", "blocks": 2, "shrinkage": shrink}, d_model=d)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.5)
        x = torch.randn(2, 12, d)
        y, _ = m(x, MixerContext(grid=hw))
        torch.testing.assert_close(y.double(), reference(m, x, hw), atol=1e-4, rtol=1e-4)

    # GFNet's form: λ = 0, one block, W₁ = I with a bias c large enough that the ReLU is the
    # identity, W₂ = diag(a + ib), b₂ = −W₂ c  →  Z = K ⊙ X with K_c = a_c + i b_c everywhere
    m = MIXERS.build({"name": "afno", "blocks": 1, "shrinkage": 0.0}, d_model=d)
    a, b = torch.randn(d), torch.randn(d)
    c = 100.0
    with torch.no_grad():
        m.w1.zero_()
        m.w1[0, 0] = torch.eye(d)
        m.b1.fill_(c)
        m.w2.zero_()
        m.w2[0, 0] = torch.diag(a)
        m.w2[1, 0] = torch.diag(b)
        wc = torch.complex(a, b) * complex(c, c)                        # W₂ (c + ic)
        m.b2[0, 0] = -wc.real
        m.b2[1, 0] = -wc.imag
    g = MIXERS.build({"name": "gfnet", "grid": list(hw)}, d_model=d)
    with torch.no_grad():
        g.weight[..., 0] = a
        g.weight[..., 1] = b
    x = torch.randn(2, 12, d)
    y, _ = m(x, MixerContext(grid=hw))
    yg, _ = g(x, MixerContext(grid=hw))
    torch.testing.assert_close(y, yg + x, atol=2e-3, rtol=1e-3)


def test_afno_hard_threshold_drops_high_modes():
    torch.manual_seed(1)
    d, hw = 4, (8, 8)
    m = MIXERS.build({"name": "afno", "blocks": 1, "shrinkage": 0.0, "hard_threshold": 0.25},
                     d_model=d)
    x = torch.randn(1, 64, d)
    y, _ = m(x, MixerContext(grid=hw))
    S = torch.fft.rfft2((y - x).view(1, 8, 8, d).double(), dim=(1, 2)).abs()
    assert S[:, 3:6].max() < 1e-5 and S[:, :, 2:].max() < 1e-5      # only low rows/columns
    assert S[:, :2, :1].max() > 1e-4
