"""Mamba (Gu & Dao, 2023): the selective SSM block (Alg. 2 inside Fig. 3) in its parallel-scan
form, its one-token recurrent form and a naive float64 loop of the equations agree — outputs,
final states (conv window, SSM state) and gradients; Δ, B, C really depend on the input; a
Mamba language model (layout "a", no FFN) decodes from a fixed-size state like the full pass,
with left padding."""
import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from tiny import assert_step_gradients_equal_full, cached_logits, make_mixer

D, N = 16, 20


def mamba_mixer(seed=0, **over):
    torch.manual_seed(seed)
    m = make_mixer("mamba", True, **over)
    with torch.no_grad():
        m.A_log.add_(0.3 * torch.randn_like(m.A_log))
        m.D.uniform_(-1, 1)
        m.conv_bias.uniform_(-0.5, 0.5)
    return m


def naive_mamba(m, h):
    """The block one token at a time, float64: explicit conv taps, h_t = exp(Δ_t A) h_{t-1} +
    Δ_t B_t x_t, y_t = C_t·h_t + D x_t, gated by SiLU(z)."""
    m = m.double()
    h = h.double()
    Bsz, n, _ = h.shape
    E, S, K, R = m.d_inner, m.d_state, m.d_conv, m.dt_rank
    xz = h @ m.in_proj.weight.T
    x_in, z = xz[..., :E], xz[..., E:]
    A = -torch.exp(m.A_log)
    state = torch.zeros(Bsz, E, S, dtype=torch.float64)
    ys = []
    for t in range(n):
        conv = m.conv_bias.clone().expand(Bsz, E).clone()
        for j in range(K):
            if t - j >= 0:
                conv = conv + m.conv_weight[:, j] * x_in[:, t - j]
        x = conv * torch.sigmoid(conv)                                   # SiLU
        dbc = x @ m.x_proj.weight.T
        dt = F.softplus(dbc[:, :R] @ m.dt_proj.weight.T + m.dt_proj.bias)  # (B, E)
        Bt, Ct = dbc[:, R:R + S], dbc[:, R + S:]
        state = torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * Bt[:, None, :]
        y = (state * Ct[:, None, :]).sum(-1) + m.D * x
        ys.append((y * F.silu(z[:, t])) @ m.out_proj.weight.T)
    m.float()
    return torch.stack(ys, 1), state, x_in[:, n - (K - 1):]


def test_mamba_scan_equals_step_and_naive_loop():
    m = mamba_mixer()
    x = torch.randn(2, N, D)
    y_scan, st_scan = m(x, MixerContext(causal=True), m.init_state(2))
    st, ys = m.init_state(2), []
    for t in range(N):
        yt, st = m(x[:, t:t + 1], MixerContext(causal=True), st)
        ys.append(yt)
    y_step = torch.cat(ys, 1)
    y_ref, h_ref, conv_ref = naive_mamba(m, x)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_scan, y_ref.float(), **tol)
    torch.testing.assert_close(y_step, y_ref.float(), **tol)
    torch.testing.assert_close(st_scan["ssm"], h_ref.float(), **tol)
    torch.testing.assert_close(st["ssm"], h_ref.float(), **tol)
    torch.testing.assert_close(st_scan["conv"], conv_ref.float(), **tol)
    torch.testing.assert_close(st["conv"], conv_ref.float(), **tol)
    assert st["ssm"].shape == (2, m.d_inner, m.d_state)            # fixed size, any n
    assert st["conv"].shape == (2, m.d_conv - 1, m.d_inner)


def test_mamba_gradients_of_scan_equal_the_recurrent_form():
    assert_step_gradients_equal_full(mamba_mixer().train(), torch.randn(2, N, D))


def test_mamba_is_selective_step_size_depends_on_the_input():
    """S6 vs S4: Δ, B, C are functions of the token, so the same token decays the state
    differently in different contexts (an LTI SSM would give one Δ per channel)."""
    m = mamba_mixer()
    x = torch.randn(2, N, m.d_inner)
    dt, Bm, Cm = m.selection(x)
    assert dt.std(1).min() > 0 and Bm.std(1).min() > 0 and Cm.std(1).min() > 0


def test_mamba_lm_decodes_from_fixed_state_with_left_padding():
    torch.manual_seed(0)
    model = tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": D, "n_layers": 2,
                              "max_len": 64, "mixer": {"name": "mamba", "d_state": 4},
                              "norm": "rmsnorm", "layout": "a", "position": "none",
                              "dropout": 0.0}).eval()
    ids = torch.randint(0, 50, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, :5] = False
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc = cached_logits(model, ids, mask, prefill=7)
        solo = model(ids[1:, 5:]).logits
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full[1, 5:], solo[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("over,field", [
    ({"d_state": 0}, "d_state"), ({"d_conv": -1}, "d_conv"), ({"expand": 0}, "expand"),
    ({"dt_rank": 0}, "dt_rank"), ({"dt_rank": "big"}, "dt_rank"),
    ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"), ({"causal": False}, "causal"),
])
def test_mamba_bad_options_are_one_line_config_errors(over, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("mamba", over.pop("causal", True), **over)
    assert "\n" not in str(e.value)
