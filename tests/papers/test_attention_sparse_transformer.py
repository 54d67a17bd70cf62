"""Sparse Transformer strided and fixed patterns: match dense attention with the equivalent mask
(every mode, causal and bidirectional, with padding); decode == full pass; memory O(n√n) at
l = √n rather than O(n²)."""
import pytest
import torch

from papers.attention_reference import (ToyBias, ToyRotary, ctx, dense_pattern_attention,
                                        largest_intermediate, prefill_then_steps)
from tiny import make_mixer

D = 16


def strided_sets(i, j, l, causal):
    """The paper's A1, A2 for the strided pattern (as sets on positions)."""
    if causal and j > i:
        return False, False
    return abs(i - j) <= l, (i - j) % l == 0


def fixed_sets(i, j, l, c, causal, g=0):
    if causal and j > i:
        return False, False
    lo, hi = l - c * (g + 1), l - c * g
    return i // l == j // l, lo <= j % l < hi


def combine(mode, a1, a2, head, heads, layer):
    if mode == "merged":
        return a1 or a2
    if mode == "heads":
        return a1 if head < heads // 2 else a2
    return a1 if layer % 2 == 0 else a2


def _inputs(causal, n=15):
    x = torch.randn(3, n, D)
    mask = torch.ones(3, n, dtype=torch.bool)
    if causal:
        mask[1, :4], mask[2, :1] = False, False
    else:
        mask[1, 10:], mask[2, 14:] = False, False
    return x, mask


@pytest.mark.parametrize("mode,layer", [("merged", 0), ("heads", 0), ("interleaved", 0),
                                        ("interleaved", 1)])
def test_strided_matches_dense_attention_with_equivalent_mask(mode, layer):
    for causal in (True, False):
        for l in (3, 4):
            m = make_mixer("sparse_strided", causal, d=D, heads=2, block=l, mode=mode, layer=layer)
            x, mask = _inputs(causal)
            y, _ = m(x, ctx(x, causal, mask))
            ref, _ = dense_pattern_attention(
                m, x, lambda i, j, h: combine(mode, *strided_sets(i, j, l, causal), h, 2, layer),
                mask)
            torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode,layer,vary", [("merged", 0, False), ("merged", 0, True),
                                             ("heads", 0, False), ("interleaved", 0, False),
                                             ("interleaved", 1, True)])
def test_fixed_matches_dense_attention_with_equivalent_mask(mode, layer, vary):
    heads = 4
    for causal in (True, False):
        for l, c in ((4, 1), (5, 2)):
            m = make_mixer("sparse_fixed", causal, d=D, heads=heads, block=l, summary=c,
                           mode=mode, layer=layer, vary_heads=vary)
            x, mask = _inputs(causal)
            y, _ = m(x, ctx(x, causal, mask))

            def allowed(i, j, h):
                heads_a2 = heads - heads // 2 if mode == "heads" else heads
                groups = min(heads_a2, l // c) if vary else 1
                h2 = h - heads // 2 if mode == "heads" else h          # index among A2 heads
                sizes = [heads_a2 // groups + (t < heads_a2 % groups) for t in range(groups)]
                g = next(t for t in range(groups) if h2 < sum(sizes[:t + 1])) if h2 >= 0 else 0
                return combine(mode, *fixed_sets(i, j, l, c, causal, g), h, heads, layer)
            ref, _ = dense_pattern_attention(m, x, allowed, mask)
            torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,kw", [("sparse_strided", {"block": 3}),
                                     ("sparse_strided", {"block": 4, "mode": "heads"}),
                                     ("sparse_fixed", {"block": 4, "summary": 1}),
                                     ("sparse_fixed", {"block": 3, "summary": 1, "mode": "heads",
                                                       "vary_heads": True})])
@pytest.mark.parametrize("enc", [None, "bias", "rotary"])
def test_decode_equals_full_pass(name, kw, enc):
    m = make_mixer(name, True, d=D, heads=2, **kw)
    pos = {None: None, "bias": ToyBias(2), "rotary": ToyRotary()}[enc]
    x = torch.randn(3, 16, D)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1, :3], mask[2, :6] = False, False
    for k, chunk in ((5, 1), (3, 4)):
        inc, full, _ = prefill_then_steps(m, x, mask, k, pos, chunk)
        torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)


def test_memory_is_n_sqrt_n_at_stride_sqrt_n():
    """With l = √n the largest intermediate grows as n^1.5 (×8 when n ×4), not n² (×16)."""
    for name, kw in (("sparse_strided", {}), ("sparse_fixed", {"summary": 1})):
        s = [largest_intermediate(make_mixer(name, True, d=D, heads=2, block=int(n ** 0.5), **kw),
                                  torch.randn(1, n, D), True) for n in (256, 1024)]
        assert s[1] / s[0] < 10 and s[1] < 2 * 1024 * 1024 / 8


def test_bad_options_are_config_errors():
    from tevo.errors import ConfigError
    for name, kw in (("sparse_strided", {"mode": "union"}), ("sparse_strided", {"block": 0}),
                     ("sparse_fixed", {"summary": 9, "block": 4}),
                     ("sparse_fixed", {"heads": 1, "mode": "heads"})):
        with pytest.raises(ConfigError):
            make_mixer(name, True, d=D, **{"heads": 2, **kw})
