"""sMLP (Tang et al., 2022): y = W_f [x·M_Wᵀ (along rows), M_H·x (along columns), x]; token
(i, j) depends only on row i and column j (axial sparsity, checked on the Jacobian)."""
import torch

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS

H, W, D = 3, 4, 6


def test_smlp_is_axial_and_matches_formula():
    torch.manual_seed(0)
    m = MIXERS.build({"name": "smlp", "grid": [H, W]}, d_model=D)
    x = torch.randn(2, H * W, D)
    ctx = MixerContext(grid=(H, W))
    y, _ = m(x, ctx)
    Mw, bw = m.mix_w.weight, m.mix_w.bias                            # (W, W)
    Mh, bh = m.mix_h.weight, m.mix_h.bias                            # (H, H)
    g = x.view(2, H, W, D)
    ref = torch.zeros(2, H, W, D)
    for i in range(H):
        for j in range(W):
            xw = sum(Mw[j, k] * g[:, i, k] for k in range(W)) + bw[j]
            xh = sum(Mh[i, k] * g[:, k, j] for k in range(H)) + bh[i]
            ref[:, i, j] = m.fuse(torch.cat([xw, xh, g[:, i, j]], -1))
    torch.testing.assert_close(y.view(2, H, W, D), ref, atol=1e-5, rtol=1e-5)
    J = torch.autograd.functional.jacobian(lambda t: m(t, ctx)[0], x[:1])     # (1,n,D,1,n,D)
    dep = J[0].abs().sum((1, 2, 4)) > 0                                      # (n, n)
    r, c = torch.arange(H * W) // W, torch.arange(H * W) % W
    axial = (r[:, None] == r[None, :]) | (c[:, None] == c[None, :])
    assert torch.equal(dep, axial)
