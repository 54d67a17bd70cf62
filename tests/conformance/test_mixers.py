"""The conformance suite for every registered mixer: a new name is tested with no test edit.
Skips come from the mixer's declared ``supports`` only."""
from __future__ import annotations

import pytest
import torch

from tevo.registry import MIXERS
from tiny import B, D, GRID, N, ctx_for, grid_for, make_mixer, mixer_params

PARAMS = mixer_params()
TOL = dict(atol=2e-5, rtol=1e-4)


def run(m, x, causal, mask=None, state=None, **kw):
    if x.shape[1] == N:                      # image-only mixers read the 12 tokens as a grid
        kw.setdefault("grid", grid_for(m.registry_name))
    y, st = m(x, ctx_for(x, causal, mask, **kw), state)
    return y, st


@pytest.mark.parametrize("name,causal", PARAMS)
def test_shape_and_finite_fp32_and_bf16(name, causal):
    m = make_mixer(name, causal)
    x = torch.randn(B, N, D)
    y, _ = run(m, x, causal)
    assert y.shape == (B, N, D)
    assert torch.isfinite(y).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb, _ = run(m, x, causal)
    assert yb.shape == (B, N, D) and torch.isfinite(yb.float()).all()


@pytest.mark.parametrize("name,causal", PARAMS)
def test_gradient_reaches_every_parameter(name, causal):
    m = make_mixer(name, causal).train()
    x = torch.randn(B, N, D, requires_grad=True)
    y, _ = run(m, x, causal)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize("name,causal", PARAMS)
def test_batch_independence(name, causal):
    if not MIXERS.get(name).supports.batch_independent:
        pytest.skip("declared batch-dependent")
    m = make_mixer(name, causal)
    x = torch.randn(B, N, D)
    y, _ = run(m, x, causal)
    y0, _ = run(m, x[:1], causal)
    torch.testing.assert_close(y[:1], y0, **TOL)


@pytest.mark.parametrize("name,causal", PARAMS)
def test_padding_invariance(name, causal):
    """Real tokens' outputs do not depend on padding (left padding for causal, right for
    bidirectional), given the mask and the positions that skip padding."""
    sup = MIXERS.get(name).supports
    if not sup.padding:
        pytest.skip("declared without padding support")
    m = make_mixer(name, causal)
    n_real, n_pad = N - 4, 4
    x = torch.randn(1, n_real, D)
    y, _ = run(m, x, causal)
    pad = torch.randn(1, n_pad, D) * 3
    mask = torch.ones(1, N, dtype=torch.bool)
    if causal:
        xp = torch.cat([pad, x], 1)
        mask[:, :n_pad] = False
        yp, _ = run(m, xp, causal, mask)
        yp = yp[:, n_pad:]
    else:
        xp = torch.cat([x, pad], 1)
        mask[:, n_real:] = False
        yp, _ = run(m, xp, causal, mask)
        yp = yp[:, :n_real]
    torch.testing.assert_close(yp, y, **TOL)


@pytest.mark.parametrize("name,causal", [p for p in PARAMS if p.values[1]])
def test_causality(name, causal):
    m = make_mixer(name, True)
    x = torch.randn(B, N, D, requires_grad=True)
    t = N // 2
    y, _ = run(m, x, True)
    x2 = x.detach().clone()
    x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 5
    y2, _ = run(m, x2, True)
    torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1].detach(), **TOL)
    y[:, t].sum().backward()
    assert (x.grad[:, t + 1:] == 0).all(), "gradient leaks from future tokens"


@pytest.mark.parametrize("name,causal", [p for p in PARAMS if p.values[1]
                                         and MIXERS.get(p.values[0]).supports.cache])
def test_prefill_then_steps_equals_full_pass(name, causal):
    """State continues exactly where the input ended, with left padding in the batch."""
    m = make_mixer(name, causal)
    x = torch.randn(B, N, D)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, :3] = False                                  # sample 1 is left-padded
    y_full, _ = run(m, x, causal, mask)
    state = m.init_state(B, x.device, x.dtype)
    k = N // 2
    ys = []
    ctx = ctx_for(x[:, :k], causal, mask[:, :k])
    y, state = m(x[:, :k], ctx, state)
    ys.append(y)
    for t in range(k, N):
        from tevo.nn.context import MixerContext, positions_from_mask
        c = MixerContext(causal=causal, key_padding_mask=mask[:, :t + 1],
                         positions=positions_from_mask(mask[:, :t + 1], 1))
        y, state = m(x[:, t:t + 1], c, state)
        ys.append(y)
    y_inc = torch.cat(ys, 1)
    torch.testing.assert_close(y_inc[mask], y_full[mask], **TOL)


@pytest.mark.parametrize("name", [n for n in MIXERS.names() if MIXERS.get(n).supports.cross])
def test_cross_attention(name):
    m = make_mixer(name, False, cross=True)
    x = torch.randn(B, N, D, requires_grad=True)
    mem = torch.randn(B, 7, D)
    cmask = torch.ones(B, 7, dtype=torch.bool)
    cmask[1, 5:] = False
    y, _ = run(m, x, False, context=mem, context_mask=cmask)
    assert y.shape == (B, N, D) and torch.isfinite(y).all()
    mem2 = mem.clone()
    mem2[1, 5:] = 100.0                                   # masked memory must not matter
    y2, _ = run(m, x, False, context=mem2, context_mask=cmask)
    torch.testing.assert_close(y2, y, **TOL)


@pytest.mark.parametrize("name", [n for n in MIXERS.names() if MIXERS.get(n).supports.grid])
def test_grid_mixers_read_the_grid(name):
    """A mixer that declares ``grid`` reads ctx.grid: the same 12 tokens as a 3×4 grid and as
    its transpose-shaped 4×3 grid (or a 1-D row) give different outputs, and a token set that
    is not the declared grid is refused, never silently reshaped."""
    from tevo.errors import InputError
    from tevo.registry import accepted_kwargs
    built_for = "grid" in (accepted_kwargs(MIXERS.get(name).obj) or ())
    m = make_mixer(name, False, **({"grid": list(GRID)} if built_for else {}))
    x = torch.randn(B, N, D)
    y, _ = m(x, ctx_for(x, False, grid=GRID))
    assert y.shape == (B, N, D) and torch.isfinite(y).all()
    other = (1, N) if MIXERS.get(name).supports.text else None
    if other is not None:
        y1, _ = m(x, ctx_for(x, False, grid=other))
        assert not torch.allclose(y1, y, atol=1e-5), "the grid shape changes nothing"
    with pytest.raises((InputError, ValueError)):
        m(x[:, :N - 1], ctx_for(x[:, :N - 1], False, grid=GRID))
