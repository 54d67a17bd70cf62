"""Command line: ``tevo list | info | catalog`` and the commands of the other packages
(train / eval / generate, bench, convert, analyze), each added by its package's ``commands``
module so that a package owns its own CLI."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from .errors import TevoError

# (package module providing add_commands(subparsers))
COMMAND_MODULES = ("tevo.train.commands", "tevo.train.sweep", "tevo.inference.knn",
                   "tevo.bench.commands", "tevo.interop.commands", "tevo.analysis.commands")


def _list(args) -> int:
    from .registry import REGISTRIES
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    if args.kind and args.kind not in REGISTRIES:
        raise TevoError(f"unknown kind {args.kind!r} (valid: {', '.join(REGISTRIES)})")
    out = []
    for k in kinds:
        for e in REGISTRIES[k].entries():
            out.append(e.info())
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"tevo components ({len(out)})")
    for c in ("kind", "name", "paper", "time", "memory"):
        t.add_column(c, overflow="fold")
    for r in out:
        t.add_row(r["kind"], r["name"], r["paper"][:60], r["time"], r["memory"])
    Console().print(t)
    return 0


def _info(args) -> int:
    from .registry import find
    hits = find(args.name)
    if not hits:
        from .registry import REGISTRIES
        every = sorted({n for r in REGISTRIES.values() for n in r.names()})
        close = [n for n in every if args.name.lower() in n.lower()][:10]
        raise TevoError(f"no component named {args.name!r}"
                        + (f" (did you mean: {', '.join(close)})" if close else ""))
    infos = [h.info() for h in hits]
    for h, i in zip(hits, infos):
        import inspect
        i["doc"] = inspect.getdoc(h.obj) or ""
        mod = inspect.getmodule(h.obj)
        i["module_doc"] = (inspect.getdoc(mod) or "") if mod else ""
    if args.json:
        print(json.dumps(infos, indent=1, default=str))
        return 0
    for i in infos:
        print(f"{i['kind']} {i['name']}")
        for k in ("paper", "equation", "time", "memory", "paper_test", "capabilities"):
            if i.get(k):
                print(f"  {k}: {i[k]}")
        if i["kind"] == "mixer" and i.get("capabilities"):
            print(f"  runs on: {_runs_on(i['capabilities'])}")
        if i["module_doc"]:
            print("\n" + i["module_doc"])
    return 0


def _runs_on(c: dict) -> str:
    """Where a mixer fits: an image grid (read in 2-D or flattened) and/or 1-D text."""
    where = []
    if c.get("grid"):
        where.append("image grids (reads the 2-D grid)")
    elif c.get("flat_grid"):
        where.append("image grids (flattened, order-free)")
    if c.get("text", True):
        modes = [m for m, ok in (("causal", c.get("causal")),
                                 ("bidirectional", c.get("bidirectional"))) if ok]
        where.append(f"1-D text ({' and '.join(modes)})")
    return "; ".join(where) or "nowhere"


def _catalog(args) -> int:
    from .catalog import catalog
    rows = catalog()
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table
    colors = {"done": "green", "registered": "yellow", "partial": "yellow", "todo": "red"}
    t = Table(title="tevo catalogue")
    for c in ("section", "name", "kind", "status", "check"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["section"][:24], r["name"], r["kind"],
                  f"[{colors[r['status']]}]{r['status']}[/]", r["check"][:50])
    Console().print(t)
    n_done = sum(r["status"] == "done" for r in rows)
    print(f"{n_done} of {len(rows)} rows done")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tevo", description="Transformer EVOlution")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="list registered components")
    s.add_argument("kind", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_list)
    s = sub.add_parser("info", help="show one component's paper, equation and capabilities")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_info)
    s = sub.add_parser("catalog", help="every catalogue row and its status")
    s.add_argument("--json", action="store_true")
    s.add_argument("--status", choices=["done", "registered", "partial", "todo"])
    s.set_defaults(fn=_catalog)
    for modname in COMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name in (modname, modname.rsplit(".", 1)[0]):
                continue
            raise
        mod.add_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except TevoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
