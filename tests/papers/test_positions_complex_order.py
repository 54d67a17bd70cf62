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


def test_complex_order_embed_equals_the_papers_formula_token_by_token():
    """embed against an explicit loop of f(j, pos) = r_j e^{i(ω_j pos + θ_j)} built from the three
    word maps (r = W_r x, ω = W_ω x̂, θ = W_θ x̂) with Python complex numbers, for different words
    at scattered positions; a swapped cos/sin, a position-dependent amplitude, a phase that is
    not word-dependent or a missing θ would fail."""
    import cmath
    torch.manual_seed(8)
    d = 8
    pe = ComplexOrderPosition(d, freq_std=0.5)
    x = torch.randn(2, 5, d)
    pos = torch.tensor([[0, 3, 7, 20, 21], [1, 2, 9, 100, 4]])
    out = pe.embed(x, pos)
    Wr, Ww, Wt = (m.weight.detach().double() for m in (pe.amplitude, pe.frequency, pe.phase))
    for b in range(2):
        for t in range(5):
            xv = x[b, t].double()
            xn = xv / xv.pow(2).mean().sqrt()
            r, w, th = Wr @ xv, Ww @ xn, Wt @ xn
            f = [float(r[j]) * cmath.exp(1j * (float(w[j]) * int(pos[b, t]) + float(th[j])))
                 for j in range(d // 2)]
            want = torch.tensor([z.real for z in f] + [z.imag for z in f], dtype=torch.float32)
            torch.testing.assert_close(out[b, t], want, atol=1e-5, rtol=1e-4)
    # two different words at the same position advance at different frequencies
    a = pe.embed(x[:1, :2], torch.tensor([[5, 5]]))
    b2 = pe.embed(x[:1, :2], torch.tensor([[6, 6]]))
    rot = torch.complex(b2[..., :d // 2], b2[..., d // 2:]) / torch.complex(a[..., :d // 2],
                                                                            a[..., d // 2:])
    assert not torch.allclose(rot[0, 0], rot[0, 1], atol=1e-3)
