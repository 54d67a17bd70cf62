"""Transformer-MGK: one component is Gaussian-kernel attention; M components match a naive sum."""
import math

import torch

from tevo.nn.context import MixerContext
from tiny import make_mixer


def _parts(m, x):
    B, n, _ = x.shape
    h, e, M = m.heads, m.head_dim, m.components
    q = m.q_proj(x).view(B, n, h, e).transpose(1, 2)
    k = m.k_proj(x).view(B, n, M, h, e).permute(0, 2, 3, 1, 4)           # (B, M, h, n, e)
    v = m.v_proj(x).view(B, n, h, e).transpose(1, 2)
    return q, k, v


def test_mgk_one_component_equals_gaussian_attention():
    m = make_mixer("mgk", True, heads=2, components=1)
    x = torch.randn(2, 8, 16)
    y, _ = m(x, MixerContext(causal=True))
    q, k, v = _parts(m, x)
    var = m.log_var.exp().view(1, 2, 1, 1)                                # σ² per head
    s = -torch.cdist(q, k[:, 0]) ** 2 / (2 * var)
    s = s.masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), float("-inf"))
    ref = m.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 8, 16))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    # with σ² = √d it is scaled dot-product attention with a −‖k‖²/(2√d) key bias
    e = m.head_dim
    s2 = q @ k[:, 0].transpose(-1, -2) / math.sqrt(e) - (k[:, 0] ** 2).sum(-1)[:, :, None] / (2 * math.sqrt(e))
    s2 = s2.masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(s2.softmax(-1), s.softmax(-1), atol=1e-5, rtol=1e-4)


def test_mgk_mixture_equals_naive_sum():
    m = make_mixer("mgk", False, heads=2, components=3)
    with torch.no_grad():
        m.pi_logits.normal_()
        m.log_var.add_(torch.randn_like(m.log_var) * 0.3)
    x = torch.randn(1, 6, 16)
    y, _ = m(x, MixerContext())
    q, k, v = _parts(m, x)
    pi = m.pi_logits.softmax(-1)
    var = m.log_var.exp()
    out = torch.zeros_like(q)
    for hh in range(2):
        for i in range(6):
            a = torch.stack([sum(pi[hh, r] * torch.exp(-((q[0, hh, i] - k[0, r, hh, j]) ** 2).sum()
                                                         / (2 * var[hh, r])) for r in range(3))
                             for j in range(6)])
            out[0, hh, i] = (a / a.sum()) @ v[0, hh]
    ref = m.o_proj(out.transpose(1, 2).reshape(1, 6, 16))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
