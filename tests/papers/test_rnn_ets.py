"""ETSformer: ESA equals its explicit weight matrix α(1−α)^{t−j} (plus the (1−α)^{t+1} v₀ term)
applied to successive differences; the scan and step forms agree (outputs, state, gradients);
FA keeps exactly the top-K Fourier components; the bidirectional form is the encoder update."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.mixers.rnn.ets import frequency_attention
from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def _esa_reference(m, r, mask):
    """−W_o (A_ES V + (1−α)^{t+1} v₀) per sample on its real tokens, with the explicit matrix."""
    B, n, d = r.shape
    al = torch.sigmoid(m.smoothing).repeat_interleave(d // m.heads)           # (d,)
    y = torch.zeros(B, n, d)
    for b in range(B):
        idx = [t for t in range(n) if mask is None or mask[b, t]]
        Z = m.in_proj(r[b, idx])                                              # (L, d)
        V = Z - torch.cat([m.z0[None], Z[:-1]])                               # differences
        L = len(idx)
        t = torch.arange(L)[:, None, None]
        j = torch.arange(L)[None, :, None]
        A = torch.where(j <= t, al * (1 - al) ** (t - j).clamp_min(0), torch.zeros(()))
        es = torch.einsum("tjd,jd->td", A, V) + (1 - al) ** (torch.arange(L)[:, None] + 1) * m.v0
        y[b, idx] = -m.out_proj(es)
    return y


def test_esa_equals_explicit_exponential_weight_matrix():
    m = make_mixer("ets", True, heads=2)
    x, mask = left_padded(n=11)
    x = x.requires_grad_(True)
    y, _ = m(x, ctx(x, True, mask), m.init_state(2))
    y_ref = _esa_reference(m, x, mask)
    assert_rel_close(y[mask], y_ref[mask], 1e-5, "outputs")
    w = torch.randn(y.shape)
    g = torch.autograd.grad((y * w)[mask].sum(), [x] + list(m.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad((y_ref * w)[mask].sum(), [x] + list(m.parameters()),
                                allow_unused=True)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, g, g_ref):
        if name in ("z0", "v0"):      # the decoding state starts from detached z₀, v₀
            continue
        assert_rel_close(a, b, 1e-5, f"gradient {name}")
    forms_agree(m, ["scan", "recurrent"], x.detach(), mask)
    y_inc, y_full, _ = prefill_then_steps(m, x.detach(), mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5, "decode")


def test_frequency_attention_keeps_the_top_k_fourier_components():
    n, t = 32, torch.arange(32.0)
    comps = [(3.0, 2, 0.3), (2.0, 5, -1.0), (1.0, 9, 2.0), (0.25, 12, 0.7)]  # amp, bin, phase
    x = sum(a * torch.cos(2 * math.pi * k * t / n + p) for a, k, p in comps) + 4.0   # + DC
    x = torch.stack([x, x.flip(0)], -1)[None]                                # (1, n, 2)
    # K = 3: the three largest sinusoids exactly, the smallest and the DC offset dropped
    want = sum(a * torch.cos(2 * math.pi * k * t / n + p) for a, k, p in comps[:3])
    got = frequency_attention(x, 3)
    assert_rel_close(got[0, :, 0], want, 1e-5)
    # equals the inverse DFT of the spectrum masked to the top-K bins (explicit form)
    X = torch.fft.rfft(x, dim=1)
    amp = X.abs()
    amp[:, 0] = -1
    amp[:, -1] = -1                                                          # DC, Nyquist
    keep = torch.zeros_like(amp, dtype=torch.bool)
    keep.scatter_(1, amp.topk(3, dim=1).indices, True)
    ref = torch.fft.irfft(torch.where(keep, X, torch.zeros_like(X)), n=n, dim=1)
    assert_rel_close(got, ref, 1e-5)
    # all four when K ≥ 4, never the DC term
    assert_rel_close(frequency_attention(x, 8)[0, :, 0], x[0, :, 0] - 4.0, 1e-5)


def test_bidirectional_form_is_the_encoder_update():
    """x + y = (x − S) − G(x − S): eq. 3's season and growth removal, on each real sequence."""
    m = make_mixer("ets", False, heads=2, top_k=2)
    x, mask = left_padded(n=12)
    mask = mask.flip(1)                                                      # right padding
    y, _ = m(x, ctx(x, False, mask))
    S = torch.zeros_like(x)
    for b in range(2):
        idx = mask[b].nonzero().squeeze(1)
        S[b, idx] = frequency_attention(x[b:b + 1, idx], 2)[0]
    ref = -S + _esa_reference(m, x - S, mask)
    assert_rel_close(y[mask], ref[mask], 1e-5)


@pytest.mark.parametrize("bad", [{"heads": 3}, {"top_k": 0}, {"form": "fft"}])
def test_ets_bad_options_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        make_mixer("ets", True, **bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
