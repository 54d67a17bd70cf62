"""Registries: one per kind of component, with the metadata that `tevo list/info/catalog` print
and the conformance suite iterates.

    @MIXERS.register("softmax", paper="Attention Is All You Need (Vaswani et al., 2017)",
                     equation="softmax(QK^T/sqrt(d))V, eq. 1", complexity=("O(n^2 d)", "O(n^2)"),
                     test="tests/papers/test_softmax.py::test_equals_torch_mha")
    class SoftmaxAttention(Mixer): ...

A component's capabilities (causal, bidirectional, cross, cache, which position hooks it takes)
live on the class as ``supports`` so that config validation, tests and benchmarks read one
source of truth.

Options: a component's options are its constructor's keyword parameters, read through the MRO
(an ``__init__(self, window=16, **kwargs)`` that hands ``kwargs`` to its base also takes the
base's options, so a variant states only what it adds). Each option is typed (annotation or
default) and may declare a range: ``options = {"window": Option(ge=1)}`` on the class (merged
over the MRO, so a base class declares what its subclasses share) or ``options=`` on
``register``. ``check_kwargs`` checks names, types and ranges before anything is built.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError
from .options import _MISSING as _NO_DEFAULT
from .options import Option, check, param_hints  # noqa: F401  (Option: re-exported)

KINDS = ("mixer", "position", "ffn", "activation", "norm", "residual", "init", "memory",
         "model", "objective", "task", "inference", "peft", "benchmark", "feature_map",
         "embedding", "tokenizer", "corpus", "tool")


@dataclass
class Entry:
    name: str
    kind: str
    obj: Any
    paper: str = ""
    equation: str = ""
    complexity: tuple[str, str] = ("", "")   # (time, memory)
    test: str = ""                           # "tests/papers/file.py::test_fn" paper test
    tiny: dict = field(default_factory=dict)  # kwargs for a tiny instance (conformance suite)
    summary: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def supports(self):
        return getattr(self.obj, "supports", None)

    def info(self) -> dict:
        sup = self.supports
        caps = sup.as_dict() if sup is not None and hasattr(sup, "as_dict") else {}
        return {"name": self.name, "kind": self.kind, "paper": self.paper,
                "equation": self.equation, "time": self.complexity[0],
                "memory": self.complexity[1], "paper_test": self.test,
                "summary": self.summary, "capabilities": caps, "tiny": self.tiny, **self.extra}


class Registry:
    """A name → component table of one kind."""

    def __init__(self, kind: str, options: dict | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.options = dict(options or {})   # ranges of options every entry of the kind shares

    def register(self, name: str, *, paper: str = "", equation: str = "",
                 complexity: tuple[str, str] = ("", ""), test: str = "",
                 tiny: dict | None = None, options: dict | None = None, **extra) -> Callable:
        """``options``: {option: Option(...)} ranges of this entry (merged over the class's)."""
        def deco(obj):
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = inspect.getdoc(obj) or ""
            self._entries[name] = Entry(name, self.kind, obj, paper, equation, tuple(complexity),
                                        test, dict(tiny or {}), doc.split("\n")[0], extra)
            try:
                obj.registry_name = name
            except (AttributeError, TypeError):
                pass
            if options:
                _ENTRY_OPTIONS[id(obj)] = {**_ENTRY_OPTIONS.get(id(obj), {}), **options}
            _KIND_OPTIONS[id(obj)] = self.options
            return obj
        return deco

    # -- lookup -------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        _discover()
        return name in self._entries

    def __iter__(self):
        _discover()
        return iter(sorted(self._entries))

    def __len__(self):
        _discover()
        return len(self._entries)

    def names(self) -> list[str]:
        _discover()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str, field_name: str | None = None) -> Entry:
        _discover()
        if name not in self._entries:
            raise ConfigError(field_name or self.kind, name, self.names(),
                              why=f"unknown {self.kind} {name!r}")
        return self._entries[name]

    def build(self, spec, field_name: str | None = None, **dims):
        """Build from a spec: a name, or a dict ``{name: ..., **kwargs}``; ``dims`` are the
        dimensions the caller supplies (d_model, heads, ...) and are passed only where the
        constructor accepts them."""
        name, kwargs = split_spec(spec, field_name or self.kind)
        entry = self.get(name, field_name)
        kwargs = check_kwargs(entry.obj, kwargs, f"{field_name or self.kind}({name})")
        accepted = accepted_kwargs(entry.obj)
        all_kw = {k: v for k, v in dims.items() if accepted is None or k in accepted}
        all_kw.update(kwargs)
        return entry.obj(**all_kw)


def split_spec(spec, field_name: str) -> tuple[str, dict]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ConfigError(field_name, spec, why="component spec needs a 'name' key")
        kw = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], kw
    raise ConfigError(field_name, spec, why="expected a name or a {name: ..., ...} mapping")


_ENTRY_OPTIONS: dict[int, dict] = {}     # id(obj) -> options given to register()
_KIND_OPTIONS: dict[int, dict] = {}      # id(obj) -> its registry's shared options


def _own_init(klass):
    """``klass``'s own __init__, or None when it inherits it."""
    return vars(klass).get("__init__")


def _terminal(klass) -> bool:
    """A base whose constructor takes no component options (object, torch's Module, ...)."""
    return klass is object or klass.__module__.split(".")[0] in ("torch", "builtins")


def parameters(obj) -> dict | None:
    """{name: inspect.Parameter} of the options a constructor takes, read through the MRO while
    each ``__init__`` forwards ``**kwargs`` to its base; None when some constructor takes
    arbitrary keywords that no base names."""
    if not inspect.isclass(obj):
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return None
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        return {n: p for n, p in sig.parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    out: dict = {}
    for klass in obj.__mro__:
        init = _own_init(klass)
        if init is None:
            continue
        if _terminal(klass):
            return out
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            return None
        for n, p in list(sig.parameters.items())[1:]:          # skip self
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out.setdefault(n, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return out
    return out


def accepted_kwargs(obj) -> set[str] | None:
    """Keyword names a constructor takes, through the MRO (None: it takes any keyword)."""
    params = parameters(obj)
    return None if params is None else set(params)


def option_specs(obj) -> dict:
    """{option: Option} declared for ``obj``: its registry's shared options, then ``options``
    class attributes merged from the most basic class to ``obj`` (a subclass's declaration
    refines its base's), then the registry entry's ``options=``."""
    out: dict = dict(_KIND_OPTIONS.get(id(obj), {}))
    for klass in reversed(getattr(obj, "__mro__", ())):
        own = vars(klass).get("options")
        if isinstance(own, dict):
            for k, v in own.items():
                out[k] = out[k].merged(v) if k in out else v
    for k, v in _ENTRY_OPTIONS.get(id(obj), {}).items():
        out[k] = out[k].merged(v) if k in out else v
    return out


def _annotations(obj) -> dict:
    """Resolved annotations of the constructor parameters, through the MRO."""
    if not inspect.isclass(obj):
        return param_hints(obj)
    out: dict = {}
    for klass in obj.__mro__:
        init = _own_init(klass)
        if init is None:
            continue
        if _terminal(klass):
            break
        for k, v in param_hints(init).items():
            out.setdefault(k, v)
    return out


def check_kwargs(obj, kwargs: dict, where: str) -> dict:
    """Check option names, types and declared ranges; return the options with values coerced
    (4.0 -> 4 for an integer option, "1e-3" -> 0.001 for a float one)."""
    params = parameters(obj)
    if params is None:
        return dict(kwargs)
    for k in kwargs:
        if k not in params:
            raise ConfigError(where, k, sorted(params), why=f"unknown option {k!r}")
    specs, hints = option_specs(obj), _annotations(obj)
    out = {}
    for k, v in kwargs.items():
        p = params[k]
        default = p.default if p.default is not p.empty else _NO_DEFAULT
        out[k] = check(f"{where}.{k}", v, hints.get(k), specs.get(k), default)
    return out



# Options whose meaning (and so range) every component of a kind shares; a component refines
# them or adds its own with ``options`` (class attribute) or ``register(..., options=...)``.
_COUNT = Option(ge=1)
_DROPOUT = Option(ge=0, lt=1)
_WIDTH = Option(gt=0, doc="a multiple of d_model")
_EPS = Option(gt=0, doc="a stabiliser added to a denominator")
MIXERS = Registry("mixer", options={"heads": _COUNT, "head_dim": _COUNT, "dropout": _DROPOUT,
                                    "mult": _WIDTH, "mlp_mult": _WIDTH, "chunk": _COUNT,
                                    "eps": _EPS})
POSITIONS = Registry("position", options={"heads": _COUNT, "head_dim": _COUNT, "hidden": _COUNT,
                                          "init_std": Option(ge=0), "freq_std": Option(ge=0)})
FFNS = Registry("ffn", options={"heads": _COUNT, "dropout": _DROPOUT, "mult": _WIDTH,
                                "multiple_of": _COUNT})
ACTIVATIONS = Registry("activation")
NORMS = Registry("norm", options={"eps": _EPS})
RESIDUALS = Registry("residual", options={"dropout": _DROPOUT})
INITS = Registry("init")
MEMORIES = Registry("memory", options={"dropout": _DROPOUT})
MODELS = Registry("model")
OBJECTIVES = Registry("objective")
TASKS = Registry("task")
INFERENCE = Registry("inference")
PEFT = Registry("peft")
BENCHMARKS = Registry("benchmark")
FEATURE_MAPS = Registry("feature_map")
EMBEDDINGS = Registry("embedding")
TOKENIZERS = Registry("tokenizer")
CORPORA = Registry("corpus")
TOOLS = Registry("tool")

REGISTRIES: dict[str, Registry] = {
    "mixer": MIXERS, "position": POSITIONS, "ffn": FFNS, "activation": ACTIVATIONS,
    "norm": NORMS, "residual": RESIDUALS, "init": INITS, "memory": MEMORIES, "model": MODELS,
    "objective": OBJECTIVES, "task": TASKS, "inference": INFERENCE, "peft": PEFT,
    "benchmark": BENCHMARKS, "feature_map": FEATURE_MAPS, "embedding": EMBEDDINGS,
    "tokenizer": TOKENIZERS, "corpus": CORPORA, "tool": TOOLS,
}


def registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        raise ConfigError("kind", kind, REGISTRIES)
    return REGISTRIES[kind]


def find(name: str) -> list[Entry]:
    """Every entry called ``name`` across registries."""
    return [r.get(name) for r in REGISTRIES.values() if name in r]


# Component packages: every module below them is imported once, so that a new file is
# registered without editing any __init__ (a broken module raises, never hides).
_COMPONENT_PACKAGES = ("nn", "mixers", "positions", "ffn", "norms", "residuals", "memory",
                       "models", "objectives", "tasks", "inference", "peft", "bench", "data",
                       "analysis")
_discovered = False


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for pkg_name in _COMPONENT_PACKAGES:
        full = f"tevo.{pkg_name}"
        try:
            pkg = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name == full:
                continue
            raise
        if not hasattr(pkg, "__path__"):
            continue
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=full + "."):
            if mod.name.rsplit(".", 1)[-1].startswith("_") or ".naive" in mod.name:
                continue
            importlib.import_module(mod.name)
