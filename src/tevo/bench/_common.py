"""What every study shares: declared options, the report (JSON + Markdown + PNG), the machine
description, power-law fits, crossover lengths, time budgets and FLOP counting.

A study is a class registered in ``BENCHMARKS`` whose ``commands`` are the ``tevo bench``
subcommands it provides; each command is a function ``run(opts) -> list[Report]``. Options are
declared once (type, default, ``--quick`` value) and become CLI flags and keyword arguments of
``tevo.bench.run``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

NOTSET = object()


# -- options and commands ---------------------------------------------------------------------
@dataclass
class Option:
    """One option of a command: ``--name`` on the CLI, ``name=`` in Python.

    type: int | float | str | bool | ints | floats | strs (the plural ones are comma lists)."""

    name: str
    type: str
    default: Any
    help: str
    quick: Any = NOTSET
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value):
        """A CLI string (or a Python value) to the declared type."""
        if value is None:
            return None
        if self.type == "bool":
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if self.type in ("ints", "floats", "strs"):
            if isinstance(value, str):
                value = [v for v in (s.strip() for s in value.split(",")) if v]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            conv = {"ints": int, "floats": float, "strs": str}[self.type]
            return [conv(v) for v in value]
        if self.type == "int":
            return int(value)
        if self.type == "float":
            return float(value)
        return value


COMMON = (
    Option("out", "str", "bench_results", "folder for the JSON, Markdown and PNG files"),
    Option("device", "str", "auto", "cpu | cuda | auto"),
    Option("seed", "int", 0, "random seed"),
    Option("max_minutes", "float", None, "stop starting new items after this many minutes; "
                                         "the rest is reported as skipped"),
    Option("threads", "int", None, "torch CPU threads (default: torch's choice; 1 can be much "
                                   "faster on a machine shared with other jobs)"),
)


@dataclass
class Command:
    """A ``tevo bench NAME`` subcommand."""

    name: str
    help: str
    options: tuple
    run: Callable[[dict], list]
    quick_minutes: float | None = None     # default --max-minutes in --quick mode
    summary: str = ""


class Study:
    """Base class of registered studies (``BENCHMARKS``); ``commands`` lists its subcommands."""

    commands: tuple = ()


def all_commands() -> dict:
    """Every ``tevo bench`` subcommand of every registered study, in registry order."""
    from ..registry import BENCHMARKS
    out = {}
    for e in BENCHMARKS.entries():
        for c in getattr(e.obj, "commands", ()):
            out[c.name] = (e, c)
    return out


def resolve_options(cmd: Command, given: dict, quick: bool) -> dict:
    """given (not None) > the --quick value > the default, each parsed to its declared type."""
    opts = {"quick": bool(quick)}
    for o in COMMON + tuple(cmd.options):
        v = given.get(o.name)
        if v is None:
            if o.name == "max_minutes" and quick:
                v = cmd.quick_minutes
            elif quick and o.quick is not NOTSET:
                v = o.quick
            else:
                v = o.default
        opts[o.name] = o.parse(v)
        if o.choices and opts[o.name] is not None and opts[o.name] not in o.choices:
            from ..errors import TevoError
            raise TevoError(f"--{o.name.replace('_', '-')} {opts[o.name]!r}: choose one of "
                            f"{', '.join(map(str, o.choices))}")
    unknown = set(given) - set(opts) - {"cli"}
    if unknown:
        from ..errors import TevoError
        known = sorted(o.name for o in COMMON + tuple(cmd.options))
        raise TevoError(f"unknown option(s) {sorted(unknown)} for 'tevo bench {cmd.name}' "
                        f"(valid: {', '.join(known)})")
    return opts


def command_line(cmd_name: str, given: dict, quick: bool) -> str:
    """The exact command equivalent to a call: ``tevo bench NAME [--quick] [--opt value ...]``."""
    parts = ["tevo", "bench", cmd_name] + (["--quick"] if quick else [])
    for k, v in given.items():
        if v is None or k == "cli":
            continue
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        parts += ["--" + k.replace("_", "-"), str(v)]
    return shlex.join(parts)


def pick_device(name: str = "auto"):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- deadlines --------------------------------------------------------------------------------
class Deadline:
    """A study-wide wall-clock limit: items not started before it are reported as skipped."""

    def __init__(self, minutes: float | None):
        self.start = time.monotonic()
        self.end = math.inf if not minutes else self.start + 60.0 * float(minutes)
        self.minutes = minutes

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def left(self) -> float:
        return self.end - time.monotonic()

    def reason(self) -> str:
        return f"study time limit reached ({self.minutes:g} min, --max-minutes)"


# -- machine description ----------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb(key: str = "MemTotal") -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device=None) -> dict:
    """What the numbers were measured on (the load average matters on a shared machine)."""
    import torch

    import tevo
    info = {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(), "memory_gb": memory_gb(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "tevo": tevo.__version__, "git_commit": _git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
        else None,
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(m: dict) -> str:
    s = (f"{m['cpu']}, {m.get('cpus_usable') or m['cpu_count']} usable cores, "
         f"{m['torch_threads']} torch threads, {m['memory_gb']} GB RAM; {m['platform']}; "
         f"Python {m['python']}, torch {m['torch']}, tevo {m['tevo']}")
    if m.get("git_commit"):
        s += f" (commit {m['git_commit']})"
    if m.get("gpu"):
        s += f"; GPU {m['gpu']} (CUDA {m.get('cuda')})"
    s += f"; device {m['device']}; {m['date_utc']}"
    if m.get("load_avg_1_5_15"):
        s += f"; load average at start {m['load_avg_1_5_15']}"
    return s


# -- numbers ----------------------------------------------------------------------------------
def fmt(x, digits: int = 3) -> str:
    """Compact number formatting for tables (None/NaN → '—')."""
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10000 else str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if x == 0:
            return "0"
        a = abs(x)
        if a >= 1e5 or a < 1e-3:
            return f"{x:.{max(digits - 1, 1)}e}"
        return f"{x:.{digits}g}" if a < 1000 else f"{x:,.0f}"
    return str(x)


def fmt_seconds(s) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_bytes(b) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "—"
    b = float(b)
    for unit, k in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if abs(b) >= k:
            return f"{b / k:.3g} {unit}"
    return f"{b:.0f} B"


def mean_sd(xs) -> tuple[float, float]:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def median(xs) -> float:
    xs = sorted(float(x) for x in xs)
    if not xs:
        return float("nan")
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else 0.5 * (xs[k - 1] + xs[k])


def fit_power_law(ns, ys, upper_half: bool = True) -> dict | None:
    """Least-squares fit of log y = p log n + log a; with ``upper_half`` only the upper half of
    the lengths (at least two points) is used, where the leading term dominates.

    Returns {"exponent": p, "coef": a, "r2": ..., "lengths": [...]}, or None with fewer than
    two usable (positive, finite) points."""
    pts = sorted((float(n), float(y)) for n, y in zip(ns, ys)
                 if y is not None and n and n > 0 and y > 0 and math.isfinite(float(y)))
    if len(pts) < 2:
        return None
    if upper_half:
        k = max(2, math.ceil(len(pts) / 2))
        pts = pts[-k:]
    xs = [math.log(n) for n, _ in pts]
    ls = [math.log(y) for _, y in pts]
    mx, my = sum(xs) / len(xs), sum(ls) / len(ls)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ls)) / sxx
    b = my - p * mx
    ss_res = sum((y - (p * x + b)) ** 2 for x, y in zip(xs, ls))
    ss_tot = sum((y - my) ** 2 for y in ls)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"exponent": p, "coef": math.exp(min(b, 700.0)), "r2": r2,
            "lengths": [int(n) for n, _ in pts]}


def crossover(ns, t_mixer, t_ref, fit_mixer: dict | None = None,
              fit_ref: dict | None = None) -> dict:
    """The length from which a mixer stays faster than the reference (softmax).

    Measured points are compared where both exist; the crossing is interpolated on log–log
    axes between the bracketing lengths. If the mixer is still slower at the longest common
    length, the fitted power laws are solved for the crossing ("extrapolated") when the mixer's
    exponent is smaller and the crossing lies within 64× the longest length, else the answer
    is "never". Returns {"n": float|None, "kind":
    measured | extrapolated | always | never | n/a, "text": ...}."""
    pts = sorted((float(n), float(a), float(b)) for n, a, b in zip(ns, t_mixer, t_ref)
                 if a is not None and b is not None and a > 0 and b > 0)
    if not pts:
        return {"n": None, "kind": "n/a", "text": "—"}
    diff = [(n, math.log(a) - math.log(b)) for n, a, b in pts]
    if all(d < 0 for _, d in diff):
        return {"n": pts[0][0], "kind": "always",
                "text": f"≤ {int(pts[0][0])} (faster at every length)"}
    if diff[-1][1] < 0:
        # last sign change: from here on the mixer stays faster
        i = max(j for j in range(len(diff)) if diff[j][1] >= 0)
        (n0, d0), (n1, d1) = diff[i], diff[i + 1]
        ln = math.log(n0) + (math.log(n1) - math.log(n0)) * d0 / (d0 - d1)
        n = math.exp(ln)
        return {"n": n, "kind": "measured", "text": f"{n:,.0f}"}
    if fit_mixer and fit_ref and fit_mixer["exponent"] < fit_ref["exponent"] - 1e-6:
        # a_m n^p_m = a_r n^p_r, solved in logs (close exponents put n far away)
        ln_n = (math.log(fit_mixer["coef"]) - math.log(fit_ref["coef"])) / (
            fit_ref["exponent"] - fit_mixer["exponent"])
        limit = math.log(64 * pts[-1][0])          # extrapolate at most 64× past the data
        if math.log(pts[-1][0]) < ln_n <= limit:
            n = math.exp(ln_n)
            return {"n": n, "kind": "extrapolated", "text": f"≈ {n:,.0f} (extrapolated)"}
        if ln_n > limit:
            return {"n": None, "kind": "never",
                    "text": f"not faster up to {int(pts[-1][0])} (the fits cross beyond "
                            f"64× that)"}
    return {"n": None, "kind": "never",
            "text": f"not faster up to {int(pts[-1][0])}"}


def predict_cost(history: list[tuple[float, float]], n: float, default_exponent: float = 2.0,
                 lo: float = 1.0, hi: float = 3.0) -> float | None:
    """Predicted cost (time or memory) at length n from (length, cost) points already
    measured: the local log–log slope of the last two points, clipped to [lo, hi] (one point:
    ``default_exponent``). None without history."""
    pts = sorted((a, b) for a, b in history if b is not None and b > 0)
    if not pts:
        return None
    n1, c1 = pts[-1]
    p = default_exponent
    if len(pts) >= 2:
        n0, c0 = pts[-2]
        if n1 > n0:
            p = math.log(c1 / c0) / math.log(n1 / n0)
    p = min(max(p, lo), hi)
    return c1 * (n / n1) ** p


# -- FLOP counting ----------------------------------------------------------------------------
def flop_counter():
    """torch's FlopCounterMode, with the CPU fused attention kernels counted too (torch counts
    the CUDA ones only; on CPU ``scaled_dot_product_attention`` would count as zero)."""
    import torch
    from torch.utils import flop_counter as fc
    mapping = {}
    aten = torch.ops.aten

    def fwd(query_shape, key_shape, value_shape, *args, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    for name, f in (("_scaled_dot_product_flash_attention_for_cpu", fwd),
                    ("_scaled_dot_product_flash_attention_for_cpu_backward", bwd)):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = f
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)


def build_or_tiny(cfg: dict, fields: tuple[tuple[str, str], ...]):
    """``tevo.build_model(cfg)``; when the config refuses a component's default options, retry
    with the registry entry's ``tiny`` options of each named ``(field, kind)`` in turn. Returns
    (model, config used); raises the first error when no alternative builds."""
    import tevo
    from ..errors import ConfigError
    from ..registry import registry
    try:
        return tevo.build_model(cfg), cfg
    except (ConfigError, TypeError, ValueError) as first:
        for fld, kind in fields:
            spec = cfg.get(fld)
            name = spec.get("name") if isinstance(spec, dict) else spec
            if not isinstance(name, str) or name not in registry(kind):
                continue
            alt = {**cfg, fld: {"name": name, **registry(kind).get(name).tiny}}
            try:
                return tevo.build_model(alt), alt
            except Exception:
                pass
        raise first


def count_params(module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# -- the report -------------------------------------------------------------------------------
def md_table(headers, rows) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


@dataclass
class Report:
    """One study's result: written as ``<out>/<name>.json``, ``<name>.md`` and ``<name>_*.png``."""

    name: str                       # file stem, e.g. "speed", "quality-ffn"
    study: str                      # registry name, e.g. "complexity"
    title: str
    intro: str = ""
    cli: str = ""
    options: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    blocks: list = field(default_factory=list)      # ("md", text) | ("fig", name, caption)
    skipped: list = field(default_factory=list)     # {"item": ..., "reason": ...}
    errors: list = field(default_factory=list)      # {"item": ..., "error": ...}
    notes: list = field(default_factory=list)
    wall_s: float = 0.0
    _figures: dict = field(default_factory=dict, repr=False)

    def section(self, heading: str, text: str = "") -> None:
        self.blocks.append(("md", f"## {heading}\n\n{text}".rstrip() + "\n"))

    def text(self, text: str) -> None:
        self.blocks.append(("md", text.rstrip() + "\n"))

    def table(self, headers, rows, heading: str | None = None, note: str = "") -> None:
        s = (f"## {heading}\n\n" if heading else "") + md_table(headers, rows) + "\n"
        if note:
            s += f"\n{note}\n"
        self.blocks.append(("md", s))

    def figure(self, name: str, caption: str, draw: Callable) -> None:
        """``draw(fig)`` fills a matplotlib figure; rendered to ``<report>_<name>.png`` when the
        report is written (skipped with a note when matplotlib is missing)."""
        self._figures[name] = (caption, draw)
        self.blocks.append(("fig", name, caption))

    def skip(self, item, reason: str) -> None:
        self.skipped.append({"item": str(item), "reason": str(reason)})

    def error(self, item, err) -> None:
        msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        self.errors.append({"item": str(item), "error": msg.strip().splitlines()[0][:300]
                            if msg.strip() else repr(err)})

    # -- writing --------------------------------------------------------------------------
    def figure_file(self, name: str) -> str:
        return f"{self.name}_{name}.png"

    def render_figures(self, out: Path) -> dict:
        done = {}
        if not self._figures:
            return done
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.notes.append("matplotlib is not installed: no plots were drawn")
            return done
        for name, (_, draw) in self._figures.items():
            fig = plt.figure(figsize=(7.5, 5.0))
            try:
                draw(fig)
                path = out / self.figure_file(name)
                fig.savefig(path, dpi=110, bbox_inches="tight")
                done[name] = path.name
            except Exception as e:          # a plot never takes the numbers down with it
                self.notes.append(f"plot {name!r} failed: {type(e).__name__}: {e}")
            finally:
                plt.close(fig)
        return done

    def markdown(self, figures: dict | None = None) -> str:
        figures = figures or {}
        lines = [f"# {self.title}\n"]
        if self.intro:
            lines.append(self.intro.strip() + "\n")
        lines.append(f"Command: `{self.cli}`\n")
        if self.machine:
            lines.append(f"Machine: {machine_line(self.machine)}\n")
        lines.append(f"Wall time: {self.wall_s:.1f} s. Raw numbers: `{self.name}.json`.\n")
        for b in self.blocks:
            if b[0] == "md":
                lines.append(b[1])
            elif b[1] in figures:
                lines.append(f"![{b[2]}]({figures[b[1]]})\n\n*{b[2]}*\n")
        if self.skipped:
            lines.append(f"## Skipped ({len(self.skipped)})\n")
            lines.append(md_table(["item", "reason"],
                                  [(s["item"], s["reason"]) for s in self.skipped]) + "\n")
        if self.errors:
            lines.append(f"## Errors ({len(self.errors)})\n")
            lines.append(md_table(["item", "error"],
                                  [(e["item"], e["error"]) for e in self.errors]) + "\n")
        if self.notes:
            lines.append("## Notes\n")
            lines += [f"- {n}" for n in self.notes]
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def to_json(self, figures: dict | None = None) -> dict:
        return {"name": self.name, "study": self.study, "title": self.title, "command": self.cli,
                "options": self.options, "machine": self.machine, "wall_s": self.wall_s,
                "results": self.data, "skipped": self.skipped, "errors": self.errors,
                "notes": self.notes, "figures": sorted((figures or {}).values())}

    def write(self, out) -> dict:
        """Write JSON, Markdown and PNGs atomically; returns the paths written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        figs = self.render_figures(out)
        paths = {"json": out / f"{self.name}.json", "md": out / f"{self.name}.md"}
        _atomic_write(paths["json"],
                      json.dumps(self.to_json(figs), indent=1, default=_json_default))
        _atomic_write(paths["md"], self.markdown(figs))
        paths.update({k: out / v for k, v in figs.items()})
        return paths


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sanitize(obj):
    """NaN/inf → None recursively, so the JSON is valid for every reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def new_report(name: str, study: str, title: str, opts: dict, intro: str = "") -> Report:
    return Report(name=name, study=study, title=title, intro=intro, cli=opts.get("cli", ""),
                  options={k: v for k, v in opts.items() if k != "cli"},
                  machine=machine_info(pick_device(opts.get("device", "auto"))))


def loglog_plot(series: dict, xlabel: str, ylabel: str, title: str = "", base: int = 2):
    """A ``draw(fig)`` for a log–log plot of {label: (xs, ys)} (points with y None left out)."""
    def draw(fig):
        ax = fig.add_subplot(111)
        styles = ["-", "--", "-.", ":"]
        for i, (label, (xs, ys)) in enumerate(series.items()):
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    linestyle=styles[(i // 10) % len(styles)], label=label)
        ax.set_xscale("log", base=base)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            legend(ax, len(series))
    return draw


def legend(ax, n_series: int) -> None:
    """Inside the axes for a few series, outside on the right for many (figures are saved
    with a tight bounding box, so the legend widens the image instead of hiding the data)."""
    if n_series <= 10:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.legend(fontsize=6, ncol=1 + n_series // 30, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def time_call(fn: Callable, repeat: int, budget_s: float, sync: Callable | None = None,
              warmup: int = 1) -> list[float]:
    """Wall times of ``fn()`` after ``warmup`` calls: ``repeat`` calls, fewer when the measured
    calls already used ``budget_s`` (at least one timed call)."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times, spent = [], 0.0
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > budget_s:
            break
    return times


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
