"""Conformance for FFNs, norms, residual schemes, activations and position encodings."""
from __future__ import annotations

import pytest
import torch

from tevo.registry import ACTIVATIONS, FFNS, MIXERS, NORMS, POSITIONS, RESIDUALS
from tiny import cached_logits, B, D, N, make_ffn, make_norm, make_position, make_residual

TOL = dict(atol=2e-5, rtol=1e-4)


def _grad_check(module, y):
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient reaches {pname}"
            assert torch.isfinite(p.grad).all(), pname


def _call_ffn(f, x):
    if getattr(f, "stateful", False):                      # y, state = ffn(x, ctx, state)
        from tevo.nn.context import MixerContext
        return f(x, MixerContext())[0]
    if getattr(f, "uses_ctx", False):
        from tevo.nn.context import MixerContext
        return f(x, MixerContext())
    return f(x)


@pytest.mark.parametrize("name", FFNS.names())
def test_ffn_shape_finite_grad(name):
    f = make_ffn(name).train()
    x = torch.randn(B, N, D, requires_grad=True)
    y = _call_ffn(f, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(_call_ffn(f, x).float()).all()
    _grad_check(f, y)


@pytest.mark.parametrize("name", FFNS.names())
def test_ffn_is_position_wise(name):
    """Output at t depends on x_t alone (unless declared otherwise, e.g. capacity-limited MoE)."""
    f = make_ffn(name)
    if not getattr(f, "position_wise", True):
        pytest.skip("declared not position-wise")
    x = torch.randn(B, N, D)
    y = _call_ffn(f, x)
    x2 = x.clone()
    x2[:, 3] += 1.0
    y2 = _call_ffn(f, x2)
    keep = [i for i in range(N) if i != 3]
    torch.testing.assert_close(y2[:, keep], y[:, keep], **TOL)


@pytest.mark.parametrize("name", NORMS.names())
def test_norm_shape_finite_grad_and_per_token(name):
    m = make_norm(name).train()
    x = torch.randn(B, N, D, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    m.eval()
    y_a = m(x.detach())
    y_b = m(x.detach()[:, :5])
    torch.testing.assert_close(y_a[:, :5], y_b, **TOL)
    m.train()
    _grad_check(m, m(x))


@pytest.mark.parametrize("name", RESIDUALS.names())
def test_residual_shape_finite_grad(name):
    r = make_residual(name).train()
    lin = torch.nn.Linear(D, D)
    x = torch.randn(B, N, D, requires_grad=True)
    y = r(x, lin, block_input=x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    _grad_check(r, y)


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activation_shape_and_finite(name):
    a = ACTIVATIONS.build(name)
    x = torch.linspace(-6, 6, 101)
    y = a(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def _mixer_for(pos_name: str) -> str | None:
    hooks = set(POSITIONS.get(pos_name).obj.hooks)
    if hooks <= set(MIXERS.get("softmax").supports.positions):
        return "softmax"
    for n in MIXERS.names():
        s = MIXERS.get(n).supports
        if hooks <= set(s.positions) and s.causal and s.cache:
            return n
    return None


@pytest.mark.parametrize("name", POSITIONS.names())
def test_position_in_a_model_cache_and_grad(name):
    """Each position encoding inside a tiny causal LM: finite, gradients reach its parameters,
    and prefill + steps == full pass with left padding (positions come from the context)."""
    import tevo
    mixer = _mixer_for(name)
    if mixer is None:
        pytest.skip("no registered mixer accepts this encoding's hooks")
    spec = {"name": name, **POSITIONS.get(name).tiny}
    mspec = {"name": mixer, **MIXERS.get(mixer).tiny}
    model = tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": D, "n_layers": 2,
                              "max_len": 64, "mixer": mspec, "position": spec}).eval()
    ids = torch.randint(0, 50, (B, N))
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, :3] = False
    full = model(ids, attention_mask=mask).logits
    assert torch.isfinite(full).all()
    if MIXERS.get(mixer).supports.cache:
        cached = cached_logits(model, ids, mask, prefill=5)
        torch.testing.assert_close(cached[mask], full[mask], **TOL)
    model.train()
    loss = model(ids, attention_mask=mask).logits.float().logsumexp(-1).mean()
    loss.backward()
    for pname, p in model.pos.named_parameters():
        assert p.grad is not None, f"no gradient reaches position parameter {pname}"
