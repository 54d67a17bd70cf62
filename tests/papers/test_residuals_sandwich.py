"""Sandwich-LN (CogView, Ding et al., 2021): x + LN(F(LN(x))); res-post-norm (Swin V2, Liu et
al., 2022): x + LN(F(x))."""
import torch

from tiny import make_residual


def test_sandwich_and_res_post_norm_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3
    f = torch.nn.Linear(16, 16)
    sw, rp = make_residual("sandwich"), make_residual("res_post_norm")
    with torch.no_grad():
        for n in (sw.norm_in, sw.norm_out, rp.norm):
            n.weight.uniform_(0.5, 1.5)
            n.bias.normal_()
    torch.testing.assert_close(sw(x, f), x + sw.norm_out(f(sw.norm_in(x))))
    torch.testing.assert_close(rp(x, f), x + rp.norm(f(x)))
    assert sw.final_norm and rp.final_norm
    # the branch is normalised before the add: scaling the branch output up does not change
    # how much it adds to the main path (the point of both schemes at depth)
    g = torch.nn.Linear(16, 16)
    with torch.no_grad():
        g.weight.copy_(f.weight * 100)
        g.bias.copy_(f.bias * 100)
    torch.testing.assert_close(rp(x, g), rp(x, f), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sw(x, g), sw(x, f), atol=1e-4, rtol=1e-4)
