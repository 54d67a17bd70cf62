"""XCA: equals V·softmax(τ Q̂ᵀK̂)ᵀ with token-normalised Q̂, K̂ (the official code's orientation);
the d_h × d_h map makes the cost linear in n."""
import torch
import torch.nn.functional as F

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, flops


def test_xca_equals_formula_and_cost_is_linear():
    m = make_mixer("xca", False)
    with torch.no_grad():
        m.temperature.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    x = torch.randn(2, 10, 16)
    y, _ = m(x, ctx(x, False))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    out = torch.zeros(B, n, h * e)
    for b in range(B):
        for hh in range(h):
            sl = slice(hh * e, (hh + 1) * e)
            Q = F.normalize(m.q_proj(x[b])[:, sl], dim=0)             # (n, e): unit columns
            K = F.normalize(m.k_proj(x[b])[:, sl], dim=0)
            V = m.v_proj(x[b])[:, sl]
            A = (m.temperature[hh, 0, 0] * Q.T @ K).softmax(-1)       # (e, e)
            out[b, :, sl] = (A @ V.T).T
    assert_rel_close(y, m.o_proj(out), 1e-5)
    f = {n: flops(lambda n=n: m(torch.randn(1, n, 16), ctx(torch.randn(1, n, 16), False)))
         for n in (256, 512)}
    assert 1.95 < f[512] / f[256] < 2.05
