"""Registries: one per kind of component, with the metadata that `tevo list/info/catalog` print
and the conformance suite iterates.

    @MIXERS.register("softmax", paper="Attention Is All You Need (Vaswani et al., 2017)",
                     equation="softmax(QK^T/sqrt(d))V, eq. 1", complexity=("O(n^2 d)", "O(n^2)"),
                     test="tests/papers/test_softmax.py::test_equals_torch_mha")
    class SoftmaxAttention(Mixer): ...

A component's capabilities (causal, bidirectional, cross, cache, which position hooks it takes)
live on the class as ``supports`` so that config validation, tests and benchmarks read one
source of truth.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError

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

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, paper: str = "", equation: str = "",
                 complexity: tuple[str, str] = ("", ""), test: str = "",
                 tiny: dict | None = None, **extra) -> Callable:
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
        check_kwargs(entry.obj, kwargs, f"{field_name or self.kind}({name})")
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


def accepted_kwargs(obj) -> set[str] | None:
    """Keyword names a constructor takes (None: it takes **kwargs)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n in sig.parameters if n != "self"}


def check_kwargs(obj, kwargs: dict, where: str) -> None:
    acc = accepted_kwargs(obj)
    if acc is None:
        return
    for k in kwargs:
        if k not in acc:
            raise ConfigError(where, k, sorted(acc), why=f"unknown option {k!r}")


MIXERS = Registry("mixer")
POSITIONS = Registry("position")
FFNS = Registry("ffn")
ACTIVATIONS = Registry("activation")
NORMS = Registry("norm")
RESIDUALS = Registry("residual")
INITS = Registry("init")
MEMORIES = Registry("memory")
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
