"""Typed, ranged options: one declaration next to each option, checked before anything is built
or written, with a one-line ``ConfigError`` naming the option and what is valid.

Config fields declare theirs with ``option`` in place of a dataclass default:

    steps: int = option(1000, ge=1)
    grad_clip: float = option(1.0, ge=0, doc="0 = no clipping")

Component options declare theirs on the class (read through the MRO, so a base class declares
the options every subclass shares) or on the registry entry:

    class MyMixer(Mixer):
        options = {"window": Option(ge=1), "decay": Option(gt=0, le=1)}

    @MIXERS.register("mine", ..., options={"window": Option(ge=1)})

The type comes from the annotation (``int``, ``float``, ``bool``, ``int | None``,
``Literal[...]``) or, without one, from the default's type. Checks: ``int`` takes integers (an
integral float such as 4.0 becomes 4; 2.5, "abc" and booleans are refused); ``float`` takes
numbers (a numeric string such as "1e-3", which YAML 1.1 leaves a string, becomes a float);
``bool`` takes only true/false (never "false" or 0); ``None`` only where the default is None or
the annotation allows it. Ranges (``ge``, ``gt``, ``le``, ``lt``) apply to numbers.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """A range (and optionally a type or a set of choices) for one option. ``doc`` says what a
    special value means (e.g. "0 = off"); it is shown in the error."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    type: Any = None
    choices: tuple | None = None
    doc: str = ""

    def describe(self) -> str:
        parts = []
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.lt is not None:
            parts.append(f"< {self.lt:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:g}")
        return " and ".join(parts)

    def merged(self, other: "Option") -> "Option":
        """``other``'s non-default settings over this one's."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for f in dataclasses.fields(other):
            v = getattr(other, f.name)
            if v is not None and v != "":
                kw[f.name] = v
        return Option(**kw)


def option(default=_MISSING, *, default_factory=_MISSING, **spec):
    """A dataclass field with its ``Option`` (``ge``, ``gt``, ``le``, ``lt``, ``choices``,
    ``doc``) in the field's metadata."""
    kw = {"metadata": {"option": Option(**spec)}}
    if default_factory is not _MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


# -- types ------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    if tp in (list, tuple):
        return "a list"
    if tp is dict:
        return "a mapping"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _members(tp) -> list:
    """The alternatives of a Union / Optional, else [tp]."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def checked_type(tp) -> list | None:
    """The alternatives among int/float/bool/None/Literal that are enforced, or None when the
    type is not one tevo checks (strings, specs, containers, Any: the component checks them)."""
    if tp is None or tp is Any:
        return None
    members = _members(tp)
    out = []
    for m in members:
        m = typing.get_origin(m) if typing.get_origin(m) in (list, tuple, dict) else m
        if m in (int, float, bool, type(None), list, tuple, dict) \
                or typing.get_origin(m) is typing.Literal:
            out.append(m)
        else:
            return None              # a type we do not check (str, a spec): let it through
    return out


def coerce(value, members: list):
    """``value`` as one of the member types, or raise ValueError with what is valid."""
    for m in members:
        if m is type(None) and value is None:
            return None
    for m in members:
        if m is bool and isinstance(value, bool):
            return value
        if m is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if m is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if m is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if isinstance(value, int) else value
        if m is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if m in (list, tuple) and isinstance(value, (list, tuple)):
            return value                 # YAML has no tuples: either sequence will do
        if m is dict and isinstance(value, dict):
            return value
        if m is str and isinstance(value, str):
            return value
        if m is str and isinstance(value, int) and not isinstance(value, bool):
            return str(value)            # a name YAML read as a number (out_dir=2024)
        if typing.get_origin(m) is typing.Literal and value in typing.get_args(m) \
                and type(value) in {type(a) for a in typing.get_args(m)}:
            return value
    names = []
    for m in members:
        if typing.get_origin(m) is typing.Literal:
            names.append("one of " + ", ".join(map(repr, typing.get_args(m))))
        else:
            names.append(_type_name(m))
    raise ValueError(" or ".join(names))


def check(where: str, value, tp=None, spec: Option | None = None, default=_MISSING):
    """The checked (possibly coerced) value of one option, or a one-line ConfigError."""
    spec = spec or Option()
    if tp is None and default is not _MISSING and default is not None:
        tp = type(default) if type(default) in (int, float, bool) else None
    # an explicit Option(type=...) is enforced whatever it is (str too); an annotation only
    # for the types every caller means literally
    members = _members(spec.type) if spec.type is not None else checked_type(tp)
    if members is not None and default is None and type(None) not in members:
        members = members + [type(None)]
    rng = spec.describe()
    note = f"; {spec.doc}" if spec.doc else ""
    given = value
    if members is not None:
        try:
            value = coerce(value, members)
        except ValueError as e:
            want = str(e) + (f" {rng}" if rng else "")
            raise ConfigError(where, value, why=f"expected {want}, got {value!r}{note}") from None
    if spec.choices is not None and value not in spec.choices \
            and not (value is None and members is not None and type(None) in members):
        raise ConfigError(where, value, [repr(c) for c in spec.choices],
                          why=f"invalid value {value!r}{note}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and rng:
        v = float(value)
        bad = (math.isnan(v)
               or (spec.ge is not None and not v >= spec.ge)
               or (spec.gt is not None and not v > spec.gt)
               or (spec.le is not None and not v <= spec.le)
               or (spec.lt is not None and not v < spec.lt))
        if bad:
            raise ConfigError(where, value, why=f"must be {rng}, got {given!r}{note}")
    return value


# -- dataclass fields ---------------------------------------------------------------------------
def check_fields(obj, prefix: str) -> None:
    """Check (and coerce in place) every field of a dataclass instance against its annotation
    and its ``option`` metadata."""
    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        spec = f.metadata.get("option")
        tp = hints.get(f.name)
        default = f.default if f.default is not _MISSING else _MISSING
        v = check(f"{prefix}{f.name}", getattr(obj, f.name), tp, spec, default)
        object.__setattr__(obj, f.name, v)


_HINTS: dict = {}


def _hints(obj) -> dict:
    key = obj
    if key not in _HINTS:
        try:
            _HINTS[key] = typing.get_type_hints(obj)
        except Exception:                   # an annotation that cannot be resolved: unchecked
            _HINTS[key] = {}
    return _HINTS[key]


def param_hints(fn) -> dict:
    """Resolved annotations of a function's parameters ({} when they cannot be resolved)."""
    hints = _hints(fn)
    if hints or not getattr(fn, "__annotations__", None):
        return hints
    out = {}                                 # resolve one by one: one bad name spoils no other
    g = getattr(fn, "__globals__", {})
    for k, v in fn.__annotations__.items():
        try:
            out[k] = eval(v, g) if isinstance(v, str) else v
        except Exception:
            pass
    _HINTS[fn] = out
    return out
