"""``tevo bench ...``: one subcommand per study command of every registered benchmark, plus
``tevo bench all`` (every study in turn) and ``tevo bench list``."""
from __future__ import annotations

import json
import shlex
import sys


def _add_options(p, options, common=True) -> None:
    from ._common import COMMON
    p.add_argument("--quick", action="store_true",
                   help="small sizes: each study in minutes on 2 CPU cores")
    for o in (COMMON if common else ()) + tuple(options):
        kw = {"default": None, "help": o.help + (f" (default: {o.default})"
                                                  if o.default is not None else "")}
        if o.type == "bool":
            kw["action"] = "store_true"
        else:
            kw["metavar"] = o.type.upper()
            if o.choices:
                kw["choices"] = o.choices
        p.add_argument(o.flag, dest=o.name, **kw)


def _invoked() -> str | None:
    """The command as typed, when this process is the ``tevo`` command line."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith(("tevo", "__main__.py")) and "bench" in sys.argv[1:]:
        return shlex.join(["tevo"] + sys.argv[1:])
    return None


def _run_one(args) -> int:
    from ._common import all_commands
    from ._run import run
    _, cmd = all_commands()[args.bench_command]
    names = [o.name for o in cmd.options] + ["out", "device", "seed", "max_minutes", "threads"]
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    reports = run(args.bench_command, quick=args.quick, cli=_invoked(), **given)
    for r in reports:
        print(f"{r.title}: {len(r.skipped)} skipped, {len(r.errors)} errors, "
              f"{r.wall_s:.1f} s → {given.get('out', r.options.get('out'))}/{r.name}.md")
    return 0


def _run_all(args) -> int:
    from ._run import run_all
    common = {k: getattr(args, k) for k in ("device", "seed", "max_minutes", "threads")
              if getattr(args, k, None) is not None}
    summary = run_all(quick=args.quick, out=args.out or "bench_results",
                      only=args.only.split(",") if args.only else None,
                      skip=args.skip.split(",") if args.skip else None, cli=_invoked(), **common)
    for s in summary:
        print(f"{s['command']:>14}: {s['status']} ({s['wall_s']:.0f} s)")
    return 0 if all(s["status"] == "ok" for s in summary) else 1


def _list(args) -> int:
    from ._common import all_commands
    rows = [{"command": name, "study": e.name, "paper": e.paper, "help": c.help,
             "options": [o.name for o in c.options]} for name, (e, c) in all_commands().items()]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['command']:>14}  [{r['study']}]  {r['help']}")
    return 0


def add_commands(subparsers) -> None:
    from ._common import all_commands
    p = subparsers.add_parser("bench", help="benchmark studies (speed, flops, quality, "
                                            "extrapolate, recall, reference, ...)")
    sub = p.add_subparsers(dest="bench_command", required=True)
    for name, (entry, cmd) in all_commands().items():
        s = sub.add_parser(name, help=cmd.help, description=f"{cmd.help}. Study "
                                                             f"{entry.name!r}: {entry.paper}")
        _add_options(s, cmd.options)
        s.set_defaults(fn=_run_one)
    s = sub.add_parser("all", help="every study in turn; --quick: under 20 minutes on 2 cores")
    _add_options(s, ())
    s.add_argument("--only", default=None, help="comma list of commands to run")
    s.add_argument("--skip", default=None, help="comma list of commands to leave out")
    s.set_defaults(fn=_run_all)
    s = sub.add_parser("list", help="the registered studies and their commands")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_list)
