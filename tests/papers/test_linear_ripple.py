"""Ripple attention (Zheng et al., 2022): the summed-area-table programme equals the dense
O(n²) definition, every key weighted by α of its Chebyshev ring around the query (rings past
r̂ − 1 sharing one weight); with γ → 1 it is plain linear attention."""
import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS

H, W, D = 4, 5, 8


def dense(m, x):
    B, n, d = x.shape
    q, k, v = m.qkv(x).view(B, n, 3, m.h, m.e).unbind(2)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    i = torch.arange(n)
    r = torch.maximum((i[:, None] // W - i[None, :] // W).abs(),
                      (i[:, None] % W - i[None, :] % W).abs()).clamp(max=m.rings)   # (n, n)
    alpha = m.ring_weights()[r]                                          # (n, n, h)
    s = torch.einsum("bihe,bjhe->bijh", q, k) * alpha                    # (B, n, n, h)
    y = torch.einsum("bijh,bjhe->bihe", s, v) / s.sum(2).unsqueeze(-1)
    return m.o_proj(y.reshape(B, n, d))


def test_ripple_equals_dense_ring_weighted_linear_attention():
    torch.manual_seed(0)
    for rings in (1, 2, 3):
        m = MIXERS.build({"name": "ripple", "heads": 2, "rings": rings, "decay": 0.3},
                         d_model=D)
        x = torch.randn(2, H * W, D)
        y, _ = m(x, MixerContext(grid=(H, W)))
        torch.testing.assert_close(y, dense(m, x), atol=1e-5, rtol=1e-4)
    # near tokens count more: the weights fall with the ring
    a = m.ring_weights()
    assert (a[1:] < a[:-1]).all()
    # γ → 1: every ring weighs the same, i.e. plain (elu+1) linear attention
    with torch.no_grad():
        m.theta.fill_(30.0)
    q, k, v = m.qkv(x).view(2, H * W, 3, 2, 4).unbind(2)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = torch.einsum("bjhe,bjhf->bhef", k, v)
    lin = torch.einsum("bihe,bhef->bihf", q, kv) / torch.einsum(
        "bihe,bhe->bih", q, k.sum(1)).unsqueeze(-1)
    torch.testing.assert_close(m(x, MixerContext(grid=(H, W)))[0],
                               m.o_proj(lin.reshape(2, H * W, D)), atol=1e-5, rtol=1e-4)
