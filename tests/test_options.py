"""Component options are typed and ranged: every integer/float option of every registered
component, set to 0, -1 or a wrong type, gives a one-line ConfigError or a working component
(a valid meaning, e.g. ``window=0``), never another exception. Registry-driven: a newly
registered component is swept with no test edit. Also: options read through the MRO."""
from __future__ import annotations

import inspect

import pytest
import torch

from tevo.errors import ConfigError, TevoError
from tevo.nn.context import MixerContext
from tevo.registry import (FFNS, MIXERS, NORMS, POSITIONS, RESIDUALS, Option, Registry,
                           accepted_kwargs, check_kwargs, parameters)
from tiny import ctx_for, make_mixer, modes

DIMS = {"d_model", "max_len", "causal", "layer", "n_layers"}     # supplied by the model


def _numeric_options(obj) -> list[str]:
    params = parameters(obj) or {}
    return [n for n, p in params.items() if n not in DIMS and p.default is not p.empty
            and type(p.default) in (int, float)]


def _run_mixer(name, kw):
    causal = modes(name)[0]
    m = make_mixer(name, causal, **kw)
    x = torch.randn(2, 12, 16)
    return m(x, ctx_for(x, causal), None)[0]


def _run_ffn(name, kw):
    f = FFNS.build({"name": name, **FFNS.get(name).tiny, **kw}, d_model=16, dropout=0.0,
                   layer=0, n_layers=2, max_len=64).eval()
    x = torch.randn(2, 12, 16)
    y = f(x, MixerContext()) if getattr(f, "uses_ctx", False) else f(x)
    return y[0] if isinstance(y, tuple) else y


def _run_norm(name, kw):
    return NORMS.build({"name": name, **NORMS.get(name).tiny, **kw}, d_model=16)(
        torch.randn(2, 12, 16))


def _run_residual(name, kw):
    r = RESIDUALS.build({"name": name, **RESIDUALS.get(name).tiny, **kw}, d_model=16,
                        norm="layernorm", dropout=0.0, layer=0, n_layers=2)
    return r(torch.randn(2, 12, 16), torch.nn.Identity(), block_input=torch.randn(2, 12, 16))


def _run_position(name, kw):
    POSITIONS.build({"name": name, **POSITIONS.get(name).tiny, **kw}, d_model=16, max_len=64,
                    heads=2, head_dim=8)
    return None


RUNNERS = {"mixer": (MIXERS, _run_mixer), "ffn": (FFNS, _run_ffn), "norm": (NORMS, _run_norm),
           "residual": (RESIDUALS, _run_residual), "position": (POSITIONS, _run_position)}
CASES = [pytest.param(kind, name, id=f"{kind}-{name}")
         for kind, (reg, _) in RUNNERS.items() for name in reg.names()
         if _numeric_options(reg.get(name).obj)]


@pytest.mark.parametrize("kind,name", CASES)
def test_numeric_options_zero_negative_wrong_type(kind, name):
    reg, run = RUNNERS[kind]
    torch.manual_seed(0)
    failures = []
    for opt in _numeric_options(reg.get(name).obj):
        for value in (0, -1, "x", True):
            try:
                y = run(name, {opt: value})
            except ConfigError as e:
                assert "\n" not in str(e), f"{opt}={value!r}: {e}"
                continue
            except TevoError:
                continue
            except Exception as e:                  # noqa: BLE001 - the point of the test
                failures.append(f"{opt}={value!r}: {type(e).__name__}: {str(e)[:80]}")
                continue
            if isinstance(value, (str, bool)):
                failures.append(f"{opt}={value!r}: a wrong type was accepted")
            elif y is not None and not torch.isfinite(y).all():
                failures.append(f"{opt}={value!r}: accepted but the output is not finite")
    assert not failures, f"{kind} {name}: " + "; ".join(failures)


def test_pkm_one_token_training_batch():
    f = FFNS.build({"name": "pkm", **FFNS.get("pkm").tiny}, d_model=16).train()
    x = torch.randn(1, 1, 16, requires_grad=True)
    y = f(x)
    y.sum().backward()
    assert y.shape == (1, 1, 16) and torch.isfinite(y).all() and x.grad is not None
    f.eval()
    torch.testing.assert_close(f(x), y)       # one token: the running statistics, as in eval


# -- the mechanism --------------------------------------------------------------------------
class _Base(torch.nn.Module):
    options = {"heads": Option(ge=1), "scale": Option(gt=0)}

    def __init__(self, d_model: int, heads: int = 4, scale: float = 1.0, flag: bool = False,
                 maybe: int | None = None):
        super().__init__()
        self.d_model, self.heads, self.scale, self.flag, self.maybe = (
            d_model, heads, scale, flag, maybe)


class _Variant(_Base):
    """States only what it adds; the base's options come through the MRO."""
    options = {"window": Option(ge=1), "scale": Option(le=10)}

    def __init__(self, window: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.window = window


def test_options_read_through_the_mro():
    reg = Registry("mixer")
    reg.register("variant", options={"heads": Option(le=8)})(_Variant)
    assert accepted_kwargs(_Variant) == {"window", "d_model", "heads", "scale", "flag", "maybe"}
    m = reg.build({"name": "variant", "window": 4, "heads": 2}, d_model=16, causal=True)
    assert (m.window, m.heads, m.d_model) == (4, 2, 16)      # causal: not an option, not passed
    for bad, where in (({"heads": 0}, "heads"), ({"heads": 9}, "heads"),    # base + entry
                       ({"scale": 0.0}, "scale"), ({"scale": 11}, "scale"),  # base + subclass
                       ({"window": 0}, "window"), ({"nope": 1}, "nope")):
        with pytest.raises(ConfigError, match=where):
            reg.build({"name": "variant", **bad}, d_model=16)


def test_types_from_annotations_and_defaults():
    def fn(flag: bool = False, n: int = 3, x: float = 1.0, maybe: int | None = None, untyped=2):
        return None
    ok = check_kwargs(fn, {"n": 4.0, "x": "1e-3", "maybe": None, "untyped": 5}, "f")
    assert ok == {"n": 4, "x": 1e-3, "maybe": None, "untyped": 5}
    assert type(ok["n"]) is int
    for bad in ({"flag": "false"}, {"flag": 0}, {"n": 2.5}, {"n": "abc"}, {"n": True},
                {"x": "abc"}, {"maybe": "x"}, {"untyped": 2.5}, {"n": None}):
        with pytest.raises(ConfigError) as e:
            check_kwargs(fn, bad, "f")
        assert str(e.value).startswith(f"f.{next(iter(bad))}:") and "\n" not in str(e.value)


def test_every_declared_option_names_a_parameter():
    """A range declared for an option the constructor does not take is a typo."""
    from tevo.registry import REGISTRIES, option_specs
    bad = []
    for reg in REGISTRIES.values():
        shared = set(reg.options)
        for e in reg.entries():
            params = parameters(e.obj)
            if params is None or not inspect.isclass(e.obj) and not callable(e.obj):
                continue
            for k in set(option_specs(e.obj)) - shared:
                if k not in params:
                    bad.append(f"{reg.kind} {e.name}: {k}")
    assert not bad, bad
