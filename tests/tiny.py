"""Tiny builders shared by the tests: every component at d=16, n≤24, built from its registry
entry's ``tiny`` options, so a newly registered name is tested with no test edit."""
from __future__ import annotations

import torch

from tevo.nn.context import MixerContext, positions_from_mask
from tevo.registry import FFNS, MIXERS, NORMS, POSITIONS, RESIDUALS

D, N, B = 16, 12, 2


def make_mixer(name: str, causal: bool, d: int = D, cross: bool = False, **over):
    e = MIXERS.get(name)
    spec = {"name": name, **e.tiny, **over}
    if cross:
        spec["cross"] = True
    m = MIXERS.build(spec, d_model=d, max_len=64, causal=causal, layer=0, n_layers=2,
                     dropout=0.0)
    return m.eval()


def ctx_for(x, causal: bool, mask=None, context=None, context_mask=None, pos=None, grid=None):
    positions = positions_from_mask(mask, x.shape[1], device=x.device)
    if mask is None:
        positions = positions.expand(x.shape[0], -1)
    return MixerContext(causal=causal, key_padding_mask=mask, positions=positions,
                        context=context, context_mask=context_mask, pos=pos, grid=grid)


GRID = (3, 4)          # N = 12 tokens as a 3×4 image grid, for mixers that need one


def grid_for(name: str):
    """The grid a mixer's conformance run gets: GRID for image-only mixers, else None."""
    return None if MIXERS.get(name).supports.text else GRID


def modes(name: str) -> list[bool]:
    s = MIXERS.get(name).supports
    return [c for c, ok in ((True, s.causal), (False, s.bidirectional)) if ok]


def mixer_params() -> list:
    import pytest
    out = []
    for name in MIXERS.names():
        for c in modes(name):
            out.append(pytest.param(name, c, id=f"{name}-{'causal' if c else 'bidir'}"))
    return out


def make_ffn(name: str, d: int = D):
    e = FFNS.get(name)
    return FFNS.build({"name": name, **e.tiny}, d_model=d, dropout=0.0, layer=0, n_layers=2,
                      max_len=64).eval()


def make_norm(name: str, d: int = D):
    e = NORMS.get(name)
    return NORMS.build({"name": name, **e.tiny}, d_model=d).eval()


def make_residual(name: str, d: int = D, norm="layernorm"):
    e = RESIDUALS.get(name)
    return RESIDUALS.build({"name": name, **e.tiny}, d_model=d, norm=norm, dropout=0.0,
                           layer=0, n_layers=2).eval()


def make_position(name: str, d: int = D, heads: int = 2):
    e = POSITIONS.get(name)
    return POSITIONS.build({"name": name, **e.tiny}, d_model=d, max_len=64, heads=heads,
                           head_dim=d // heads)


def hf_transfo_xl():
    """transformers' Transformer-XL module (transformers <= 4.37.2), or None."""
    import importlib
    for path in ("transformers.models.transfo_xl.modeling_transfo_xl",
                 "transformers.models.deprecated.transfo_xl.modeling_transfo_xl"):
        try:
            return importlib.import_module(path)
        except Exception:
            continue
    return None


def cached_logits(model, ids, mask=None, prefill: int = 0):
    """Logits from the incremental path: a prefill of the first ``prefill`` tokens (with their
    padding mask), then one-token decode steps on the returned state. (B, n) -> (B, n, V)."""
    st, outs = model.init_state(ids.shape[0]), []
    if prefill:
        o = model(ids[:, :prefill], attention_mask=None if mask is None else mask[:, :prefill],
                  state=st)
        outs.append(o.logits)
        st = o.state
    for t in range(prefill, ids.shape[1]):
        o = model(ids[:, t:t + 1], state=st)
        outs.append(o.logits)
        st = o.state
    return torch.cat(outs, 1)


def assert_step_gradients_equal_full(m, x, atol=1e-5, rtol=1e-4):
    """A causal mixer run one token at a time from ``init_state`` gives the input and parameter
    gradients of its full (parallel) pass, for a random output cotangent."""
    g = torch.randn_like(x)
    grads = []
    for run in ("full", "step"):
        m.zero_grad()
        xr = x.clone().requires_grad_(True)
        if run == "full":
            y, _ = m(xr, MixerContext(causal=True))
        else:
            st, ys = m.init_state(x.shape[0]), []
            for t in range(x.shape[1]):
                yt, st = m(xr[:, t:t + 1], MixerContext(causal=True), st)
                ys.append(yt)
            y = torch.cat(ys, 1)
        (y * g).sum().backward()
        grads.append([xr.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def tiny_text(n: int = 20_000, seed: int = 0) -> str:
    """A small deterministic English-like text (the embedded corpus takes seconds to load)."""
    import random
    rng = random.Random(seed)
    words = ("the king my lord queen of and to a love what light through yonder window "
             "breaks it is east sun fair night day sweet heart die live thou art").split()
    out, n_chars = [], 0
    while n_chars < n:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize()
        out.append(line + ".")
        n_chars += len(line) + 2
    return "\n".join(out)[:n]
