"""Complex order: f(j, pos) = r_j e^{i(ω_j pos + θ_j)}; a shift by k is the position-free
element-wise rotation e^{i ω_j k}, the amplitude does not depend on the position, and the input
hook returns [Re f, Im f]."""
import torch

from tevo.positions.complex_order import ComplexOrderPosition


def test_complex_order_shift_is_a_position_free_rotation():
    torch.manual_seed(7)
    d = 16
    pe = ComplexOrderPosition(d)
    x = torch.randn(2, 1, d).expand(2, 12, d) * 0.02          # one word repeated at 12 positions
    pos = torch.arange(12).expand(2, -1)
    f = pe.complex(x, pos)                                    # (2, 12, d/2) complex
    xn = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    omega = pe.frequency(xn)
    for k in (1, 5, 40):
        shifted = pe.complex(x, pos + k)
        torch.testing.assert_close(shifted, f * torch.exp(1j * omega * k), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f.abs(), f[:, :1].abs().expand_as(f), atol=1e-6, rtol=1e-5)
    out = pe.embed(x, pos)
    torch.testing.assert_close(out, torch.cat([f.real, f.imag], -1).float(), atol=1e-6, rtol=1e-5)
    # different positions of the same word are distinguishable
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-4)
