"""The catalogue of the Transformer family with each row's status.

A row is ``done`` when every one of its names is registered (or its preset ships) and each has
a paper test that exists in the test suite; ``registered`` when the names exist but a paper test
is missing; ``partial`` when some names exist; ``todo`` otherwise.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml

from .config import PRESET_DIR
from .registry import REGISTRIES

DATA = Path(__file__).parent / "catalog_data.yaml"
TESTS_DIR = Path(__file__).resolve().parents[2] / "tests"


@lru_cache(maxsize=None)
def rows() -> list[dict]:
    with open(DATA) as f:
        return yaml.safe_load(f)


def _find_entry(name: str, kind: str | None = None):
    if kind and kind in REGISTRIES and name in REGISTRIES[kind]:
        return REGISTRIES[kind].get(name)
    for reg in REGISTRIES.values():
        if name in reg:
            return reg.get(name)
    return None


@lru_cache(maxsize=None)
def _test_functions(path: str) -> frozenset:
    p = TESTS_DIR.parent / path
    if not p.exists():
        return frozenset()
    return frozenset(re.findall(r"^\s*(?:async\s+)?def\s+(test_\w+)", p.read_text(), re.M))


def paper_test_exists(ref: str) -> bool | None:
    """True/False when the test suite is present (source checkout), None when it is not."""
    if not ref or "::" not in ref:
        return False
    if not TESTS_DIR.exists():
        return None
    path, fn = ref.split("::", 1)
    return fn.split("[")[0] in _test_functions(path)


def _preset_test(name: str) -> str:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.exists():
        return ""
    data = yaml.safe_load(p.read_text()) or {}
    return data.get("paper_test", "")


def status(row: dict) -> dict:
    have, tested, missing = [], [], []
    for n in row.get("names", []):
        kind = row.get("kinds", {}).get(n, row.get("kind"))
        e = _find_entry(n, kind)
        if e is None:
            missing.append(n)
            continue
        have.append(n)
        ok = paper_test_exists(e.test)
        if ok or (ok is None and e.test):
            tested.append(n)
    for p in row.get("presets", []):
        ref = _preset_test(p)
        if not ref:
            missing.append(f"preset {p}")
            continue
        have.append(p)
        ok = paper_test_exists(ref)
        if ok or (ok is None and ref):
            tested.append(p)
    total = len(row.get("names", [])) + len(row.get("presets", []))
    if total and len(tested) == total:
        st = "done"
    elif total and len(have) == total:
        st = "registered"
    elif have:
        st = "partial"
    else:
        st = "todo"
    return {"name": row["row"], "names": row.get("names", []) + row.get("presets", []),
            "kind": row["kind"], "section": row["section"], "paper": row["paper"],
            "check": row.get("check", ""), "status": st, "missing": missing,
            "untested": [n for n in have if n not in tested]}


def catalog() -> list[dict]:
    return [status(r) for r in rows()]
