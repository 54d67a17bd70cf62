"""NAP: attention weights are the scores standardised over the visible keys (naive loop)."""
import math

import torch

from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_nap_equals_naive_loop():
    n, d, h = 7, 16, 2
    for causal in (True, False):
        m = make_mixer("nap", causal, heads=h)
        x = torch.randn(2, n, d)
        mask = torch.ones(2, n, dtype=torch.bool)
        if causal:
            mask[1, :2] = False
        else:
            mask[1, 5:] = False
        y, _ = m(x, MixerContext(causal=causal, key_padding_mask=mask))
        B = 2
        sp = lambda t: t.view(B, n, h, -1).transpose(1, 2)
        q, k, v = sp(m.q_proj(x)), sp(m.k_proj(x)), sp(m.v_proj(x))
        out = torch.zeros_like(q)
        for b in range(B):
            for hh in range(h):
                for i in range(n):
                    js = [j for j in range(n) if mask[b, j] and (not causal or j <= i)]
                    if not js:                               # a padded query: no keys
                        continue
                    s = torch.stack([q[b, hh, i] @ k[b, hh, j] / math.sqrt(d // h) for j in js])
                    a = (s - s.mean()) / torch.sqrt(s.var(unbiased=False) + 1e-5)
                    out[b, hh, i] = sum(a[t] * v[b, hh, j] for t, j in enumerate(js))
        ref = m.o_proj(out.transpose(1, 2).reshape(B, n, d))
        torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


def test_nap_weights_sum_to_zero_and_leave_the_simplex():
    from tevo.mixers.attention.nap import normalized_weights
    s = torch.randn(3, 5, 5)
    w = normalized_weights(s, None)
    torch.testing.assert_close(w.sum(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    assert (w < 0).any()
    torch.testing.assert_close(w.pow(2).mean(-1), torch.ones(3, 5), atol=1e-3, rtol=0)
