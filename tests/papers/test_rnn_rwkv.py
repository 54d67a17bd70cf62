"""RWKV-4 (Peng et al., 2023): the WKV recurrence of eq. 14 in its parallel (scan) form, its
one-token recurrent form and a naive float64 loop of the equation agree — outputs, final
(num, den, max) states and gradients; the channel mix is eq. 17–19 with its own shift state;
an RWKV language model decodes from a fixed-size state exactly like the full pass."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from tiny import assert_step_gradients_equal_full, cached_logits, make_ffn, make_mixer

D, N = 16, 20


def rwkv_mixer(seed=0, key_scale=1.0):
    torch.manual_seed(seed)
    m = make_mixer("rwkv", True).double()
    with torch.no_grad():
        m.time_decay.uniform_(-3.0, 1.5)          # w = e^td ∈ [0.05, 4.5]
        m.time_first.uniform_(-1.0, 1.0)
        for p in (m.mix_k, m.mix_v, m.mix_r):
            p.uniform_(0.0, 1.0)
        m.key.weight.mul_(key_scale)
    return m


def naive_wkv(w, u, k, v):
    """eq. 14 literally: wkv_t = (Σ_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same, v=1),
    float64, no stabilisation; also the final num/den Σ_{i≤n-1} e^{-(n-1-i)w + k_i} (v_i | 1)."""
    n = k.shape[1]
    out = []
    for t in range(n):
        num = torch.exp(u + k[:, t]) * v[:, t]
        den = torch.exp(u + k[:, t])
        for i in range(t):
            wt = torch.exp(-(t - 1 - i) * w + k[:, i])
            num, den = num + wt * v[:, i], den + wt
        out.append(num / den)
    wts = torch.stack([torch.exp(-(n - 1 - i) * w + k[:, i]) for i in range(n)], 1)
    return torch.stack(out, 1), (wts * v).sum(1), wts.sum(1)


def naive_time_mix(m, x):
    xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    k = m.key(x * m.mix_k + xx * (1 - m.mix_k))
    v = m.value(x * m.mix_v + xx * (1 - m.mix_v))
    r = torch.sigmoid(m.receptance(x * m.mix_r + xx * (1 - m.mix_r)))
    y, num, den = naive_wkv(torch.exp(m.time_decay), m.time_first, k, v)
    return m.out_proj(r * y), num, den


def step_by_step(m, x):
    st = m.init_state(x.shape[0], dtype=x.dtype)
    st = {k: v.double() for k, v in st.items()}
    ys = []
    for t in range(x.shape[1]):
        y, st = m(x[:, t:t + 1], MixerContext(causal=True), st)
        ys.append(y)
    return torch.cat(ys, 1), st


@pytest.mark.parametrize("key_scale", [1.0, 60.0])
def test_rwkv_scan_equals_recurrence_and_naive_loop(key_scale):
    """key_scale 60: keys up to ~110, where e^k overflows fp32 (> e^88) without the (num, den,
    max) stabilisation; the float64 naive loop still represents them."""
    if key_scale > 1:
        probe = rwkv_mixer(key_scale=key_scale).float()
        k = probe.key(torch.randn(2, N, D))
        assert torch.isinf(torch.exp(k)).any()               # the case is really out of range
    m = rwkv_mixer(key_scale=key_scale)
    x = torch.randn(2, N, D, dtype=torch.float64)
    st0 = {k: v.double() for k, v in m.init_state(2).items()}
    y_scan, st_scan = m(x, MixerContext(causal=True), st0)
    y_step, st_step = step_by_step(m, x)
    y_ref, num, den = naive_time_mix(m, x)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_scan, y_ref, **tol)
    torch.testing.assert_close(y_step, y_ref, **tol)
    for key in ("num", "den", "max"):
        torch.testing.assert_close(st_scan[key], st_step[key], **tol)
    scale = torch.exp(st_scan["max"])                       # state is relative to e^max
    torch.testing.assert_close(st_scan["num"] * scale, num, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(st_scan["den"] * scale, den, rtol=1e-6, atol=1e-12)


def test_rwkv_gradients_of_scan_equal_the_recurrent_form_fp32():
    assert_step_gradients_equal_full(rwkv_mixer().float(), torch.randn(2, N, D))


def test_channel_mix_matches_equation_and_carries_shift():
    torch.manual_seed(1)
    f = make_ffn("rwkv_channel_mix")
    with torch.no_grad():
        f.mix_k.uniform_(0, 1)
        f.mix_r.uniform_(0, 1)
    x = torch.randn(2, N, D)
    xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    k = f.key(f.mix_k * x + (1 - f.mix_k) * xx)
    r = f.receptance(f.mix_r * x + (1 - f.mix_r) * xx)
    ref = torch.sigmoid(r) * f.out_proj(torch.relu(k) ** 2)            # eq. 17-19
    y, _ = f(x, MixerContext())
    torch.testing.assert_close(y, ref)
    st = f.init_state(2)
    y1, st = f(x[:, :7], MixerContext(), st)
    ys = [y1]
    for t in range(7, N):
        yt, st = f(x[:, t:t + 1], MixerContext(), st)
        ys.append(yt)
        assert st["shift"].shape == (2, D)                          # O(d) state, not O(n)
    torch.testing.assert_close(torch.cat(ys, 1), ref)


def rwkv_lm():
    torch.manual_seed(0)
    return tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": D, "n_layers": 2,
                             "max_len": 64, "mixer": "rwkv",
                             "ffn": {"name": "rwkv_channel_mix", "d_ff": 32},
                             "norm": "layernorm", "layout": "a f", "position": "none",
                             "embedding_norm": True, "dropout": 0.0}).eval()


def test_rwkv_lm_decodes_from_fixed_state_with_left_padding():
    model = rwkv_lm()
    ids = torch.randint(0, 50, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, :4] = False
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc = cached_logits(model, ids, mask, prefill=6)
        solo = model(ids[1:, 4:]).logits                         # row 1 without its padding
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full[1, 4:], solo[0], atol=1e-5, rtol=1e-4)
    sizes = {k: tuple(v.shape) for k, v in model.init_state(2)["layers"][0][0].items()}
    assert sizes == {"num": (2, D), "den": (2, D), "max": (2, D), "shift": (2, D)}


@pytest.mark.parametrize("spec,field", [
    ({"name": "rwkv", "d_att": 0}, "d_att"),
    ({"name": "rwkv", "d_att": "wide"}, "d_att"),
])
def test_rwkv_bad_options_are_one_line_config_errors(spec, field):
    with pytest.raises(ConfigError, match=field) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": D, "n_layers": 1,
                          "mixer": spec, "ffn": "rwkv_channel_mix", "position": "none"})
    assert "\n" not in str(e.value)


def test_channel_mix_bad_width_and_parallel_layout_are_config_errors():
    with pytest.raises(ConfigError, match="d_ff"):
        tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": D, "n_layers": 1,
                          "mixer": "rwkv", "ffn": {"name": "rwkv_channel_mix", "d_ff": -3},
                          "position": "none"})
    with pytest.raises(ConfigError, match="model.layout"):
        tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": D, "n_layers": 1,
                          "mixer": "rwkv", "ffn": "rwkv_channel_mix", "layout": "p",
                          "position": "none"})
