"""QRNN, SRU, SRU++: each equals a plain per-sample loop of its paper's equations on the real
tokens of a left-padded batch (outputs, final state, gradients); the scan and step forms agree;
decoding continues the state."""
import math

import pytest
import torch
import torch.nn.functional as F

from tevo.errors import ConfigError
from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def _grads_agree(m, x, mask, y, y_ref):
    """Gradients of the same weighted loss through the mixer and through the reference."""
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    params = [p for p in m.parameters()]
    g = torch.autograd.grad((y * w)[mask].sum(), [x] + params, allow_unused=True)
    g_ref = torch.autograd.grad((y_ref * w)[mask].sum(), [x] + params, allow_unused=True)
    for a, b in zip(g, g_ref):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert_rel_close(a, b, 1e-5, "gradient")


# -- QRNN ---------------------------------------------------------------------------------------
def _qrnn_reference(m, x, mask):
    B, n, d = x.shape
    k = m.window
    W, bias = m.conv.weight, m.conv.bias                               # (G d, k d)
    y, cs = torch.zeros(B, n, d), []
    for b in range(B):
        idx = [t for t in range(n) if mask[b, t]]
        xr = x[b, idx]                                                 # the real tokens only
        c = torch.zeros(d)
        for s, t in enumerate(idx):
            taps = [xr[s - j] if s - j >= 0 else torch.zeros(d) for j in range(k)]
            g = (W @ torch.cat(taps) + bias).split(d)
            z, f = torch.tanh(g[0]), torch.sigmoid(g[1])
            if m.pooling == "ifo":
                c = f * c + torch.sigmoid(g[3]) * z                    # eq. 5
            else:
                c = f * c + (1 - f) * z                                # eqs. 3, 4
            y[b, t] = c if m.pooling == "f" else torch.sigmoid(g[2]) * c
        cs.append(c)
    return y, torch.stack(cs)


@pytest.mark.parametrize("pooling", ["fo", "f", "ifo"])
def test_qrnn_fo_pooling_equals_loop(pooling):
    m = make_mixer("qrnn", True, window=3, pooling=pooling)
    x, mask = left_padded(n=10)
    x = x.requires_grad_(True)
    y, st = m(x, ctx(x, True, mask), m.init_state(2))
    y_ref, c_ref = _qrnn_reference(m, x, mask)
    assert_rel_close(y[mask], y_ref[mask], 1e-5, "outputs")
    assert_rel_close(st["c"], c_ref, 1e-5, "final c")
    _grads_agree(m, x, mask, y, y_ref)
    forms_agree(m, ["scan", "recurrent"], x.detach(), mask)


def test_qrnn_decoding_keeps_a_fixed_size_state():
    m = make_mixer("qrnn", True, window=3)
    x, mask = left_padded(n=12)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["buf"].shape == (2, 2, 16) and st["c"].shape == (2, 16)


# -- SRU ----------------------------------------------------------------------------------------
def _sru_loop(U, x, v, bias, mask):
    """Eqs. 3–6 per sample on the real tokens. U (B, n, 3d)."""
    B, n, d = x.shape
    y, cs = torch.zeros(B, n, d), []
    for b in range(B):
        c = torch.zeros(d)
        for t in range(n):
            if not mask[b, t]:
                continue
            xt, (wx, fx, rx) = x[b, t], U[b, t].split(d)
            pf = v[0] * c if v is not None else 0
            pr = v[1] * c if v is not None else 0
            f = torch.sigmoid(fx + pf + bias[0])                      # eq. 3
            r = torch.sigmoid(rx + pr + bias[1])                      # eq. 5 (c_{t-1})
            c = f * c + (1 - f) * wx                                  # eq. 4
            y[b, t] = r * c + (1 - r) * xt                            # eq. 6
        cs.append(c)
    return y, torch.stack(cs)


def _perturb(m):
    with torch.no_grad():
        m.bias.normal_(0, 0.5)
        if getattr(m, "alpha", None) is not None:
            m.alpha.fill_(0.7)


@pytest.mark.parametrize("peephole", [True, False])
def test_sru_equals_loop_of_the_equations(peephole):
    m = make_mixer("sru", True, peephole=peephole)
    _perturb(m)
    x, mask = left_padded(n=10)
    x = x.requires_grad_(True)
    y, st = m(x, ctx(x, True, mask), m.init_state(2))
    y_ref, c_ref = _sru_loop(m.W(x), x, m.v, m.bias, mask)
    assert_rel_close(y[mask], y_ref[mask], 1e-5, "outputs")
    assert_rel_close(st["c"], c_ref, 1e-5, "final c")
    _grads_agree(m, x, mask, y, y_ref)
    if not peephole:
        forms_agree(m, ["scan", "recurrent", "loop"], x.detach(), mask)


@pytest.mark.parametrize("window", [4, 0])
def test_srupp_equals_attention_then_sru_loop(window):
    m = make_mixer("srupp", True, proj=8, heads=2, window=window)
    _perturb(m)
    x, mask = left_padded(n=10)
    x = x.requires_grad_(True)
    y, st = m(x, ctx(x, True, mask), m.init_state(2))
    B, n, d = x.shape
    H, e = 2, 4
    U = torch.zeros(B, n, 3 * d)
    for b in range(B):
        idx = [t for t in range(n) if mask[b, t]]
        Q = x[b, idx] @ m.q_proj.weight.T                             # Q = W^q x
        K = Q @ m.kv_proj.weight[:8].T                                # K = W^k Q
        V = Q @ m.kv_proj.weight[8:].T                                # V = W^v Q
        A = torch.zeros_like(Q)
        for h in range(H):
            sl = slice(h * e, (h + 1) * e)
            for s in range(len(idx)):                                 # causal softmax row
                lo = max(0, s - window + 1) if window else 0          # the last w keys
                w = torch.softmax(Q[s, sl] @ K[lo:s + 1, sl].T / math.sqrt(e), -1)
                A[s, sl] = w @ V[lo:s + 1, sl]
        Z = F.layer_norm(Q + m.alpha * A, (8,), m.norm.weight, m.norm.bias, m.norm.eps)
        U[b, idx] = Z @ m.o_proj.weight.T                             # U = W^o LN(Q + αA)
    y_ref, c_ref = _sru_loop(U, x, m.v, m.bias, mask)
    assert_rel_close(y[mask], y_ref[mask], 1e-5, "outputs")
    assert_rel_close(st["c"], c_ref, 1e-5, "final c")
    _grads_agree(m, x, mask, y, y_ref)


@pytest.mark.parametrize("name", ["sru", "srupp"])
def test_sru_decoding_continues_the_state(name):
    m = make_mixer(name, True)
    _perturb(m)
    x, mask = left_padded(n=12)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["c"].shape == (2, 16)
    if name == "srupp":                       # keys/values of the last window − 1 tokens only
        assert st["k"].shape == (2, 2, 4, 4) and st["v"].shape == (2, 2, 4, 4)


@pytest.mark.parametrize("name,bad", [("qrnn", {"window": 0}), ("qrnn", {"pooling": "o"}),
                                      ("sru", {"form": "scan"}), ("sru", {"form": "fft"}),
                                      ("srupp", {"proj": -4}), ("srupp", {"heads": 3}),
                                      ("srupp", {"heads": 0}), ("srupp", {"window": -1})])
def test_bad_options_are_one_line_config_errors(name, bad):
    with pytest.raises(ConfigError) as e:
        make_mixer(name, True, **bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)


def test_peephole_recurrence_backward_is_the_exact_adjoint():
    """The scan-based backward of the peephole loop equals finite differences (float64), for
    every input including the initial state and with a padded step."""
    from tevo.mixers.rnn.sru import PeepholeRecurrence
    g = torch.Generator().manual_seed(0)
    B, n, d = 2, 6, 3
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)  # noqa
    m = torch.ones(B, n, d, dtype=torch.float64)
    m[1, :2] = 0
    args = (mk(B, n, d), mk(B, n, d), mk(B, n, d), mk(2, d), mk(2, d), mk(B, d), m)
    assert torch.autograd.gradcheck(lambda *a: PeepholeRecurrence.apply(*a), args)


def test_srupp_chunked_prefill_equals_full_pass():
    """Chunks longer than the window (the tiled band path) continuing from a key/value state."""
    from tevo.nn.context import MixerContext, positions_from_mask
    m = make_mixer("srupp", True, proj=8, heads=2, window=3)
    _perturb(m)
    x, mask = left_padded(n=16)
    y, _ = m(x, ctx(x, True, mask))
    st, ys = m.init_state(2), []
    for a, b in [(0, 5), (5, 11), (11, 16)]:
        c = MixerContext(causal=True, key_padding_mask=mask[:, :b],
                         positions=positions_from_mask(mask[:, :b], b - a))
        yy, st = m(x[:, a:b], c, st)
        ys.append(yy)
    assert_rel_close(torch.cat(ys, 1)[mask], y[mask], 1e-5)
    assert st["k"].shape == (2, 2, 2, 4)
