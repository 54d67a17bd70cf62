"""Running studies: one command (``run``) or every one in turn (``run_all``), writing reports."""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from ..errors import TevoError
from ._common import (Report, _atomic_write, all_commands, command_line, machine_info,
                      machine_line, md_table, pick_device, resolve_options, stderr)

# the order of `tevo bench all`: cheap checks first; flops after speed (it reads speed.json)
ALL_ORDER = ("symmetry", "decoder_only", "speed", "flops", "quality", "extrapolate", "recall",
             "reference")


def run(command: str, *, quick: bool = False, write: bool = True, cli: str | None = None,
        **options) -> list[Report]:
    """Run one ``tevo bench`` command; options as on the CLI (``lengths=[256, 512]``).

    >>> run("speed", quick=True, mixers=["softmax"], lengths=[64, 128], out="/tmp/bench")
    """
    import torch
    cmds = all_commands()
    if command not in cmds:
        raise TevoError(f"unknown benchmark command {command!r} (valid: {', '.join(cmds)})")
    _, cmd = cmds[command]
    opts = resolve_options(cmd, options, quick)
    opts["cli"] = cli or command_line(command, options, quick)
    torch.manual_seed(opts["seed"])
    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    t0 = time.perf_counter()
    reports = cmd.run(opts)
    for r in reports:
        if not r.wall_s:
            r.wall_s = time.perf_counter() - t0
        if write:
            paths = r.write(opts["out"])
            stderr(f"[bench] wrote {paths['md']}")
    return reports


def run_all(*, quick: bool = False, out: str = "bench_results", only=None, skip=None,
            cli: str | None = None, **common) -> list[dict]:
    """Every study in turn (``ALL_ORDER``, then any other registered command); a study that
    fails is reported in the index, never stops the others. Writes ``<out>/README.md``."""
    cmds = all_commands()
    order = [c for c in ALL_ORDER if c in cmds] + [c for c in cmds if c not in ALL_ORDER]
    if only:
        order = [c for c in order if c in set(only)]
    if skip:
        order = [c for c in order if c not in set(skip)]
    cli = cli or command_line("all", dict(out=out, **common), quick)
    t_all = time.perf_counter()
    if common.get("threads"):
        import torch
        torch.set_num_threads(int(common["threads"]))
    machine = machine_info(pick_device(common.get("device") or "auto"))   # at the start
    summary = []
    for name in order:
        t0 = time.perf_counter()
        stderr(f"[bench all] {name}")
        try:
            reps = run(name, quick=quick, out=out, cli=cli, **common)
            summary.append({"command": name, "status": "ok", "wall_s": time.perf_counter() - t0,
                            "reports": [r.name for r in reps],
                            "skipped": sum(len(r.skipped) for r in reps),
                            "errors": sum(len(r.errors) for r in reps)})
        except Exception as e:                      # one failing study never stops the rest
            summary.append({"command": name, "status": f"failed: {type(e).__name__}: {e}",
                            "wall_s": time.perf_counter() - t0, "reports": [],
                            "traceback": traceback.format_exc(limit=6)})
            stderr(f"[bench all] {name} failed: {e}")
    total = time.perf_counter() - t_all
    _write_index(Path(out), summary, cli, total, machine)
    return summary


def _write_index(out: Path, summary: list[dict], cli: str, total: float, m: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in summary:
        links = ", ".join(f"[{r}]({r}.md)" for r in s["reports"]) or "—"
        rows.append([f"`tevo bench {s['command']}`", s["status"], f"{s['wall_s']:.0f} s", links,
                     s.get("skipped", "—"), s.get("errors", "—")])
    text = (f"# tevo benchmark results\n\nEvery number here was written by the harness "
            f"(`tevo.bench`), from the command below; each page repeats its exact command and "
            f"machine.\n\nCommand: `{cli}`\n\nMachine: {machine_line(m)}\n\n"
            f"Total wall time: {total:.0f} s ({total / 60:.1f} min).\n\n"
            + md_table(["study", "status", "wall time", "reports", "skipped items", "errors"],
                       rows) + "\n")
    _atomic_write(out / "README.md", text)
