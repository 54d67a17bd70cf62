"""EL-attention equals softmax multi-head attention (self, causal with padding, cross, cached
decoding) with copied weights, while its cache is smaller."""
import torch

from tevo.nn.context import MixerContext, positions_from_mask
from tiny import make_mixer


def _pair(causal, cross=False):
    el = make_mixer("el_attention", causal, heads=2, cross=cross)
    sm = make_mixer("softmax", causal, heads=2, cross=cross, impl="eager")
    with torch.no_grad():
        sm.k_proj.bias.normal_()                      # a key bias must not matter
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(el, name).weight.copy_(getattr(sm, name).weight)
        for name in ("q_proj", "v_proj", "o_proj"):
            getattr(el, name).bias.copy_(getattr(sm, name).bias.normal_())
    return el, sm


def _numel(state):
    return sum(t.numel() for t in state.values() if torch.is_tensor(t))


def test_el_attention_equals_softmax_and_cache_is_smaller():
    el, sm = _pair(True)
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    ctx = MixerContext(causal=True, key_padding_mask=mask, positions=positions_from_mask(mask, 10))
    torch.testing.assert_close(el(x, ctx)[0][mask], sm(x, ctx)[0][mask], atol=1e-5, rtol=1e-4)
    # cached decoding: same outputs, half the cache (H: n·d vs K, V: 2·n·h·e)
    states = {m: m.init_state(2) for m in (el, sm)}
    for t in range(10):
        c = MixerContext(causal=True, key_padding_mask=mask[:, :t + 1],
                         positions=positions_from_mask(mask[:, :t + 1], 1))
        ys = {}
        for m in (el, sm):
            ys[m], states[m] = m(x[:, t:t + 1], c, states[m])
        torch.testing.assert_close(ys[el][:, 0][mask[:, t]], ys[sm][:, 0][mask[:, t]], atol=1e-5, rtol=1e-4)
    kv = {k: states[sm][k] for k in ("k", "v")}
    assert 2 * _numel(states[el]) == _numel(kv)


def test_el_cross_attention_equals_softmax_and_caches_nothing_new():
    el, sm = _pair(False, cross=True)
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    cm = torch.ones(2, 7, dtype=torch.bool)
    cm[0, 4:] = False
    ctx = MixerContext(context=mem, context_mask=cm)
    y_el, st_el = el(x, ctx, el.init_state(2))
    y_sm, st_sm = sm(x, ctx, sm.init_state(2))
    torch.testing.assert_close(y_el, y_sm, atol=1e-5, rtol=1e-4)
    assert st_el["h"] is mem                          # the encoder output itself, no copy
    assert _numel(st_sm) == 2 * mem.numel()
