"""TaLK: the summed-area-table computation with interpolated fractional ends equals the explicit
windowed average (1/K) Σ_j w_ij x_j with partial edge weights; gradients reach the offsets; the
decoder form is causal and decodes from a fixed buffer."""
import pytest
import torch
import torch.nn.functional as F

from tevo.errors import ConfigError
from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, left_padded, prefill_then_steps)


def _explicit(m, x, mask, causal):
    """Per sample, per real token i: (1/K) Σ_j clip(j − a + 1, 0, 1)·clip(b − j + 1, 0, 1) x_j
    over the real tokens j (a = i − α^l l_max, b = i + α^r r_max)."""
    B, n, d = x.shape
    u = F.glu(m.w1(x), -1)
    R = d // m.heads
    out = torch.zeros(B, n, d)
    for b in range(B):
        idx = [t for t in range(n) if mask[b, t]]
        ur = u[b, idx]                                               # real tokens, 0..L-1
        al = torch.sigmoid(m.offsets(ur))                            # (L, H or 2H)
        for i in range(len(idx)):
            for c in range(d):
                h = c // R
                a = i - al[i, h] * m.max_left
                e = i + (al[i, m.heads + h] * m.max_right if not causal else 0.0)
                acc = 0.0
                for j in range(len(idx)):
                    w = (j - a + 1).clamp(0, 1) * (e - j + 1).clamp(0, 1) if not causal \
                        else ((j - a + 1).clamp(0, 1) if j <= i else 0.0)
                    acc = acc + w * ur[j, c]
                out[b, idx[i], c] = acc / m.K
    return m.w2(out)


@pytest.mark.parametrize("causal", [True, False])
def test_summed_area_table_equals_explicit_window_average(causal):
    m = make_mixer("talk", causal, heads=2, max_left=4, max_right=3)
    with torch.no_grad():
        m.offsets.bias.normal_(0, 1.5)                               # varied window sizes
    x, mask = left_padded(n=9)
    if not causal:
        mask = mask.flip(1)
    x = x.requires_grad_(True)
    y, _ = m(x, ctx(x, causal, mask))
    ref = _explicit(m, x, mask, causal)
    assert_rel_close(y[mask], ref[mask], 1e-5, "outputs")
    w = torch.randn(y.shape)
    params = [x, m.offsets.weight, m.offsets.bias, m.w1.weight]
    g = torch.autograd.grad((y * w)[mask].sum(), params)
    g_ref = torch.autograd.grad((ref * w)[mask].sum(), params)
    for a, b in zip(g, g_ref):
        assert_rel_close(a, b, 1e-5, "gradient")
    assert g[1].abs().sum() > 0                                      # window sizes are learned


def test_window_follows_the_offsets():
    """α^l → 1 averages the whole l_max + 1 window, α^l → 0 keeps the token itself alone."""
    m = make_mixer("talk", True, heads=1, max_left=3)
    x = torch.randn(1, 8, 16)
    with torch.no_grad():
        m.offsets.weight.zero_()
        u = F.glu(m.w1(x), -1)
        for bias, want in ((30.0, sum(F.pad(u, (0, 0, k, 0))[:, :8] for k in range(4)) / 4),
                           (-30.0, u / 4)):
            m.offsets.bias.fill_(bias)
            y, _ = m(x, ctx(x, True))
            assert_rel_close(y, m.w2(want), 1e-5)


def test_talk_decoding_keeps_a_fixed_buffer():
    m = make_mixer("talk", True)
    with torch.no_grad():
        m.offsets.bias.normal_(0, 1.5)
    x, mask = left_padded(n=12)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["buf"].shape == (2, 4, 16)


@pytest.mark.parametrize("bad", [{"max_left": 0}, {"heads": 3}, {"max_right": -1}])
def test_talk_bad_options_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        make_mixer("talk", False, **bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
