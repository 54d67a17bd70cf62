"""Talking-heads attention: identity mixing equals softmax; with random mixing (and a different
number of mixed heads) it equals the paper's algorithm written head by head."""
import torch

from papers.attention_reference import ToyBias, ctx, prefill_then_steps, qkv
from tevo.nn.context import MixerContext
from tiny import make_mixer

D, H = 16, 4


def test_identity_mixing_equals_softmax():
    for causal in (True, False):
        t = make_mixer("talking_heads", causal, d=D, heads=H)
        s = make_mixer("softmax", causal, d=D, heads=H)
        s.load_state_dict(t.state_dict(), strict=False)
        x = torch.randn(2, 9, D)
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, :3] = False
        y, _ = t(x, ctx(x, causal, mask))
        r, _ = s(x, ctx(x, causal, mask))
        torch.testing.assert_close(y[mask], r[mask], atol=1e-5, rtol=1e-4)
    t = make_mixer("talking_heads", False, d=D, heads=H, cross=True)
    s = make_mixer("softmax", False, d=D, heads=H, cross=True)
    s.load_state_dict(t.state_dict(), strict=False)
    x, mem = torch.randn(2, 5, D), torch.randn(2, 7, D)
    torch.testing.assert_close(t(x, MixerContext(context=mem))[0], s(x, MixerContext(context=mem))[0],
                               atol=1e-5, rtol=1e-4)


def test_random_mixing_equals_the_algorithm_head_by_head():
    for mix in (H, 6):
        t = make_mixer("talking_heads", True, d=D, heads=H, mix_heads=mix)
        with torch.no_grad():
            t.pre_mix.normal_()
            t.post_mix.normal_()
        x = torch.randn(2, 7, D)
        y, _ = t(x, ctx(x, True))
        q, k, v = qkv(t, x)
        n, e = 7, D // H
        J = [(q[:, i] @ k[:, i].transpose(-1, -2)) / e ** 0.5 for i in range(H)]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        W = []
        for j in range(mix):                                   # logits mixed across heads
            L = sum(t.pre_mix[i, j] * J[i] for i in range(H))
            W.append(L.masked_fill(~causal, float("-inf")).softmax(-1))
        O = []
        for i in range(H):                                     # weights mixed across heads
            U = sum(t.post_mix[j, i] * W[j] for j in range(mix))
            O.append(U @ v[:, i])
        ref = t.o_proj(torch.cat(O, -1))
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_cache_with_mixing_and_a_bias_hook():
    t = make_mixer("talking_heads", True, d=D, heads=H, mix_heads=3)
    with torch.no_grad():
        t.pre_mix.normal_()
        t.post_mix.normal_()
    x = torch.randn(2, 10, D)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :4] = False
    inc, full, _ = prefill_then_steps(t, x, mask, 3, ToyBias(H), chunk=2)
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
