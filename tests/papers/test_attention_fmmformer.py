"""FMMformer: the near field is softmax under a band mask; the far field is the row-normalised
multi-feature-map kernel; the output is their learned blend."""
import math

import torch
import torch.nn.functional as F

from tevo.nn.attention import eager_attention
from tevo.nn.context import MixerContext
from tiny import make_mixer


def _band(n, k, causal):
    i = torch.arange(n)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d <= k) if causal else d.abs() <= k


def test_fmmformer_near_field_equals_banded_softmax():
    n, k = 12, 3
    for causal in (True, False):
        m = make_mixer("fmmformer", causal, heads=2, band=k)
        with torch.no_grad():
            m.blend[1].zero_()                                # w₂ = 0: near field only
        x = torch.randn(2, n, 16)
        y, _ = m(x, MixerContext(causal=causal))
        q, k_, v = (m._split(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))
        ref = eager_attention(q, k_, v, mask=_band(n, k, causal)[None, None])
        ref = m.o_proj(ref.transpose(1, 2).reshape(2, n, 16))
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_fmmformer_blend_of_near_and_far_fields():
    n, k = 10, 2
    m = make_mixer("fmmformer", True, heads=2, band=k)
    with torch.no_grad():
        m.blend.copy_(torch.tensor([[0.3, 1.5], [0.7, -0.2]]).view(2, 2, 1, 1))
    x = torch.randn(1, n, 16)
    y, _ = m(x, MixerContext(causal=True))
    q, k_, v = (m._split(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    near = eager_attention(q, k_, v, mask=_band(n, k, True)[None, None])
    phi = lambda t: torch.cat([F.elu(t) + 1, F.elu(-t) + 1], -1)
    a = (phi(q) @ phi(k_).transpose(-1, -2)).tril()           # causal low-rank kernel
    far = (a / a.sum(-1, keepdim=True)) @ v
    w = m.blend.detach()
    ref = m.o_proj((w[0] * near + w[1] * far).transpose(1, 2).reshape(1, n, 16))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
