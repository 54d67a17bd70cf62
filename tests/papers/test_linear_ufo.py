"""UFO-ViT: equals XNorm(Q)·XNorm(KᵀV) written out; outputs are bounded by γ² (cosine
similarities); cost linear in n."""
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, flops


def test_ufo_equals_cross_normalised_formula():
    m = make_mixer("ufo", False)
    with torch.no_grad():
        m.gamma.copy_(torch.tensor([0.7, 1.5]).view(2, 1, 1))
    x = torch.randn(2, 9, 16)
    y, _ = m(x, ctx(x, False))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    inner = torch.zeros(B, n, h * e)
    for b in range(B):
        for hh in range(h):
            sl = slice(hh * e, (hh + 1) * e)
            Q, K, V = (p(x[b])[:, sl] for p in (m.q_proj, m.k_proj, m.v_proj))
            g = m.gamma[hh, 0, 0]
            KV = K.T @ V
            xq = g * Q / Q.norm(dim=1, keepdim=True)
            xkv = g * KV / KV.norm(dim=0, keepdim=True)
            inner[b, :, sl] = xq @ xkv
            assert (inner[b, :, sl].abs() <= g ** 2 + 1e-5).all()     # |cos| ≤ 1
    assert_rel_close(y, m.o_proj(inner), 1e-5)
    f = {n: flops(lambda n=n: m(torch.randn(1, n, 16), ctx(torch.randn(1, n, 16), False)))
         for n in (256, 512)}
    assert 1.95 < f[512] / f[256] < 2.05
