"""Sweeps: a family of ordinary training runs over a grid of dotted config keys and seeds,
trained by the one ``Trainer``, with statistics that survive a second seed.

A sweep is ``base config + overrides + grid (key → values) + seeds``, or, for points that
change several keys together (a study's variants), an explicit list of points. Every point is an
independent run folder ``OUT/runs/<point>-s<seed>`` whose ``command`` field is the
``tevo train ...`` line that reproduces it. Points run one per process (one thread each, the
same numbers as running them one by one), locally in sequence, in a local process pool, or
through Ray (``engine="ray"``, the optional extra ``tevo[ray]``) for users who outgrow one
machine; every engine writes the same files. A finished point (its ``summary.json`` exists) is
never trained again, so an interrupted sweep continues where it stopped.

Statistics (``aggregate``): per grid point the mean ± sd over seeds; against a baseline point,
the paired difference over the seeds both share with its 95 % t-interval. An interval that
holds 0 is reported as "no measurable difference", never as a win.

``match`` keeps the parameter count equal across the grid (Deeper vs Wider): for every point it
sets one key (e.g. ``model.d_model``) to the multiple of ``match_step`` whose model has the
parameter count closest to the first point's.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

RESULTS = "results.jsonl"
# two-sided 95 % quantiles of Student's t by degrees of freedom (normal beyond 30)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    if df < 1:
        return math.inf
    if df in T95:
        return T95[df]
    below = [k for k in T95 if k < df]
    return T95[max(below)] if df <= 30 else 1.96       # the next smaller df: conservative


def mean_sd(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of a_i − b_i with its 95 % t-interval; ``measurable`` iff the interval excludes 0
    (never with a single pair: one seed cannot tell a difference from noise)."""
    d = [x - y for x, y in zip(a, b)]
    m, sd = mean_sd(d)
    half = t95(len(d) - 1) * sd / math.sqrt(len(d)) if len(d) > 1 else math.inf
    lo, hi = m - half, m + half
    return {"mean": m, "lo": lo, "hi": hi, "n": len(d),
            "measurable": bool(len(d) > 1 and (lo > 0 or hi < 0))}


def verdict(diff: dict, lower_is_better: bool = True) -> str:
    if not diff["measurable"]:
        return "no measurable difference"
    better = diff["hi"] < 0 if lower_is_better else diff["lo"] > 0
    return "better than baseline" if better else "worse than baseline"


def _value_text(v) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": ")).replace('"', "")
    return str(v)


def slug(point: dict) -> str:
    """A folder name for a grid point: key=value pairs, filesystem-safe."""
    if not point:
        return "base"
    parts = [f"{k.split('.')[-1]}={_value_text(v)}" for k, v in point.items()]
    s = ",".join(parts)
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in s)[:120]


def parse_grid(items: list[str]) -> dict:
    """``["model.n_layers=2,4", "model.mixer.name=softmax,linear"]`` → {key: [values]};
    values are parsed as YAML (numbers stay numbers). A value holding commas inside braces or
    brackets (a mapping) is kept whole."""
    import yaml
    grid: dict = {}
    for it in items:
        if "=" not in it:
            raise ConfigError("--grid", it, why="expected KEY=V1,V2,...")
        k, vals = it.split("=", 1)
        out, depth, cur = [], 0, ""
        for ch in vals:
            depth += ch in "{["
            depth -= ch in "}]"
            if ch == "," and depth == 0:
                out.append(cur)
                cur = ""
            else:
                cur += ch
        out.append(cur)
        if not k.strip() or not all(v.strip() for v in out):
            raise ConfigError("--grid", it, why="expected KEY=V1,V2,... with no empty value")
        grid[k.strip()] = [yaml.safe_load(v) for v in out]
    return grid


@dataclass
class Sweep:
    """The sweep's definition; ``points()`` lists (grid point, seed) pairs in a fixed order."""
    out: Path
    config: str | None = None
    overrides: list = field(default_factory=list)
    grid: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    metric: str = "val_bits_per_char"
    lower_is_better: bool = True
    match: str | None = None            # key adjusted to keep the parameter count equal
    match_step: int = 16
    point_list: list | None = None      # explicit points ({dotted key: value}) instead of a grid

    def __post_init__(self):
        self.out = Path(self.out)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", self.seeds, why="expected distinct integers")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise ConfigError("seeds", self.seeds, why="expected integers")
        if self.match_step < 1:
            raise ConfigError("match_step", self.match_step, why="must be >= 1")
        if self.point_list is not None:
            if self.grid:
                raise ConfigError("grid", self.grid, why="give a grid or a list of points, "
                                                          "not both")
            slugs = [slug(p) for p in self.point_list]
            if len(set(slugs)) != len(slugs):
                raise ConfigError("points", slugs, why="two points have the same folder name")
        self._matched: dict | None = None

    def grid_points(self) -> list[dict]:
        if self.point_list is not None:
            pts = [dict(p) for p in self.point_list]
        else:
            keys = list(self.grid)
            pts = [dict(zip(keys, vs)) for vs in itertools.product(*(self.grid[k] for k in keys))]
        if self.match:
            pts = [{**p, self.match: v} for p, v in zip(pts, self._match_values(pts))]
        return pts

    def points(self) -> list[tuple[dict, int]]:
        return [(p, s) for p in self.grid_points() for s in self.seeds]

    def overrides_for(self, point: dict, seed: int) -> list[str]:
        base = [o for o in self.overrides if o.split("=", 1)[0] not in point]   # the point's win
        return [*base, *(f"{k}={_value_text(v)}" for k, v in point.items()),
                f"train.seed={seed}", f"train.out_dir={self.run_dir(point, seed)}",
                "train.progress=false", "train.threads=1"]

    def run_dir(self, point: dict, seed: int) -> Path:
        return self.out / "runs" / f"{slug(point)}-s{seed}"

    def command(self, point: dict, seed: int) -> str:
        return shlex.join(["tevo", "train", *([self.config] if self.config else []),
                           *self.overrides_for(point, seed)])

    def load(self, point: dict, seed: int):
        from ..config import load_config
        return load_config(self.config, self.overrides_for(point, seed))

    # -- equal parameter count ----------------------------------------------------------------
    def _params(self, point: dict) -> int:
        from .. import build_model
        from ..config import load_config
        cfg = load_config(self.config, [*self.overrides,
                                        *(f"{k}={_value_text(v)}" for k, v in point.items())])
        model = build_model(cfg)
        return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

    def _match_values(self, pts: list[dict]) -> list:
        if self._matched is not None:
            return self._matched
        if self.match in self.grid:
            raise ConfigError("match", self.match, why="the matched key cannot also be a grid key")
        from ..config import load_config
        base = load_config(self.config, list(self.overrides))
        node = base.to_dict()
        for part in self.match.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError("match", self.match, why="not a key of the config")
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, int):
            raise ConfigError("match", self.match, why=f"must be an integer key, got {node!r}")
        target = self._params({**pts[0], self.match: node})
        out = []
        for p in pts:
            best, best_gap, v = node, math.inf, self.match_step
            # parameter counts grow monotonically in a width: walk up until past the target
            while v <= 64 * max(node, self.match_step):
                try:
                    n = self._params({**p, self.match: v})
                except ConfigError:
                    v += self.match_step
                    continue
                if abs(n - target) < best_gap:
                    best, best_gap = v, abs(n - target)
                if n > target:
                    break
                v += self.match_step
            out.append(best)
        self._matched = out
        return out


def _train_point(args: tuple) -> dict:
    """One point in this process (a pool worker or Ray task): train, return its record."""
    config, overrides, point, seed, command = args
    import torch

    from ..config import load_config
    from .trainer import train
    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.train.out_dir)
    if run_dir.exists():                      # an interrupted point: start it again, whole
        shutil.rmtree(run_dir)
    summary = train(cfg, run_dir=run_dir)
    return {"point": point, "seed": seed, "command": command, "run_dir": str(run_dir),
            "summary": {k: v for k, v in summary.items() if k != "sample"}}


def finished(sweep: Sweep) -> dict:
    """(slug, seed) → record of every finished point in ``results.jsonl`` whose command is
    the one this sweep would run (a run of the same folder with another budget or base config
    is stale: it is trained again, never mixed in)."""
    path = sweep.out / RESULTS
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if (Path(r["run_dir"]) / "summary.json").exists() \
                        and r.get("command") == sweep.command(r["point"], r["seed"]):
                    done[(slug(r["point"]), r["seed"])] = r
    return done


def run_sweep(sweep: Sweep, jobs: int = 1, engine: str = "local", progress: bool = True,
              deadline: float | None = None) -> list[dict]:
    """Train every unfinished point; returns the records of the finished points, in sweep
    order. ``deadline`` (a ``time.monotonic()`` value): no point starts after it, so a study
    with a time limit stops between points and the same call later continues from there."""
    import time
    if engine not in ("local", "ray"):
        raise ConfigError("engine", engine, ["local", "ray"])
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError("jobs", jobs, why="expected an integer >= 1")
    pts = sweep.points()
    for p, s in pts:                           # every config valid before anything is written
        sweep.load(p, s)
    sweep.out.mkdir(parents=True, exist_ok=True)
    (sweep.out / "sweep.json").write_text(json.dumps(
        {"config": sweep.config, "overrides": sweep.overrides, "grid": sweep.grid,
         "seeds": sweep.seeds, "metric": sweep.metric, "match": sweep.match,
         "match_step": sweep.match_step, "points": sweep.point_list}, indent=1, default=str))
    done = finished(sweep)
    todo = [(sweep.config, sweep.overrides_for(p, s), p, s, sweep.command(p, s))
            for p, s in pts if (slug(p), s) not in done]
    results_path = sweep.out / RESULTS

    def record(r: dict) -> None:
        done[(slug(r["point"]), r["seed"])] = r
        with open(results_path, "a") as f:
            f.write(json.dumps(r, default=str) + "\n")

    def late() -> bool:
        return deadline is not None and time.monotonic() > deadline

    bar = _progress(len(pts), len(pts) - len(todo), progress)
    try:
        if engine == "ray":
            for r in _ray_map(todo, jobs, late):
                record(r)
                bar(r)
        elif jobs == 1 or len(todo) <= 1:
            for a in todo:
                if late():
                    break
                r = _train_point(a)
                record(r)
                bar(r)
        else:
            import concurrent.futures as cf
            import multiprocessing as mp
            env_threads = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = "1"
            try:
                with cf.ProcessPoolExecutor(max_workers=jobs,
                                            mp_context=mp.get_context("spawn")) as ex:
                    futs = [ex.submit(_train_point, a) for a in todo]
                    for fut in cf.as_completed(futs):
                        if fut.cancelled():
                            continue
                        r = fut.result()
                        record(r)
                        bar(r)
                        if late():                 # points not yet started are not started
                            for f in futs:
                                f.cancel()
            finally:
                if env_threads is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = env_threads
    finally:
        bar(None)
    return [done[(slug(p), s)] for p, s in pts if (slug(p), s) in done]


def _ray_map(todo: list, jobs: int, late=lambda: False):
    try:
        import ray
    except ImportError:
        raise ConfigError("engine", "ray", why="needs the optional extra: pip install 'tevo[ray]'"
                          ) from None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        task = ray.remote(num_cpus=1)(_train_point)
        pending = [task.remote(a) for a in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
            if late():
                for ref in pending:
                    ray.cancel(ref)
                break
    finally:
        if started:
            ray.shutdown()


def _progress(total: int, already: int, show: bool):
    """A rich progress bar over the sweep's points (plain lines when not a terminal)."""
    import sys
    if not show:
        return lambda r: None
    if not sys.stderr.isatty():
        count = [already]

        def plain(r):
            if r is not None:
                count[0] += 1
                print(f"[{count[0]}/{total}] {slug(r['point'])} seed {r['seed']}",
                      file=sys.stderr, flush=True)
        return plain
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    prog = Progress("sweep", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    prog.start()
    tid = prog.add_task("points", total=total, completed=already)

    def rich_bar(r):
        if r is None:
            prog.stop()
        else:
            prog.advance(tid)
    return rich_bar


def aggregate(sweep: Sweep, records: list[dict], baseline: dict | None = None) -> list[dict]:
    """One row per grid point: mean ± sd of the metric over seeds, params, tokens/s, and the
    paired difference against ``baseline`` (default: the first grid point)."""
    metric = sweep.metric
    by: dict = {}
    for r in records:
        v = r["summary"].get(metric)
        if v is None:
            raise ConfigError("metric", metric, sorted(r["summary"]),
                              why=f"not in the summary of {r['run_dir']}")
        by.setdefault(slug(r["point"]), []).append(r)
    pts = sweep.grid_points()
    base = slug(baseline if baseline is not None else pts[0])
    if base not in by:
        raise ConfigError("baseline", baseline, sorted(by), why="not a point of this sweep")
    base_by_seed = {r["seed"]: r["summary"][metric] for r in by[base]}
    rows = []
    for p in pts:
        if slug(p) not in by:                  # not trained yet (a study stopped by its limit)
            continue
        rs = sorted(by[slug(p)], key=lambda r: r["seed"])
        xs = [r["summary"][metric] for r in rs]
        m, sd = mean_sd(xs)
        row = {"point": p, "slug": slug(p), "n": len(xs), "mean": m, "sd": sd, "values": xs,
               "params": rs[0]["summary"].get("params"),
               "tokens": rs[0]["summary"].get("tokens"),
               "tokens_per_second": mean_sd([r["summary"].get("tokens_per_second", 0)
                                             for r in rs])[0],
               "command": rs[0]["command"]}
        if slug(p) != base:
            shared = [r for r in rs if r["seed"] in base_by_seed]
            d = paired_difference([r["summary"][metric] for r in shared],
                                  [base_by_seed[r["seed"]] for r in shared])
            row["diff"] = d
            row["verdict"] = verdict(d, sweep.lower_is_better)
        else:
            row["verdict"] = "baseline"
        rows.append(row)
    return rows


def write_report(sweep: Sweep, rows: list[dict], title: str | None = None) -> Path:
    """``OUT/sweep.md`` (+ ``summary.json``, and ``sweep.png`` when matplotlib is present)."""
    from ..bench._common import fmt, machine_info, machine_line
    m = machine_info()
    varying = [k for k in sweep.grid if len({json.dumps(r["point"].get(k), default=str)
                                             for r in rows}) > 1]
    lines = [f"# {title or 'Sweep'}", "",
             f"Metric: `{sweep.metric}` ({'lower' if sweep.lower_is_better else 'higher'} is "
             f"better), {len(sweep.seeds)} seeds ({', '.join(map(str, sweep.seeds))}): mean ± sd; "
             f"against the baseline (first row) the paired difference over seeds with its 95 % "
             f"t-interval; an interval holding 0 is \"no measurable difference\".", "",
             f"Machine: {machine_line(m)}.", ""]
    if sweep.match:
        lines += [f"`{sweep.match}` chosen per point (step {sweep.match_step}) for a parameter "
                  f"count closest to the first point's.", ""]
    head = [*varying, *([sweep.match] if sweep.match else []), "params", "tokens",
            sweep.metric, "Δ vs baseline [95 % CI]", "verdict"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r.get("diff")
        ci = (f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "—")
        cells = [*(_value_text(r["point"].get(k)) for k in varying),
                 *([_value_text(r["point"].get(sweep.match))] if sweep.match else []),
                 f"{r['params']:,}" if r["params"] else "—",
                 f"{r['tokens']:,}" if r.get("tokens") else "—",
                 f"{fmt(r['mean'], 4)} ± {fmt(r['sd'], 2)}", ci, r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Reproduce one point (seed 0 of each row):", "", "```"]
    lines += [r["command"] for r in rows] + ["```", ""]
    png = _plot(sweep, rows, varying)
    if png:
        lines += [f"![{sweep.metric}]({png.name})", ""]
    out = sweep.out / "sweep.md"
    out.write_text("\n".join(lines))
    (sweep.out / "summary.json").write_text(json.dumps(
        {"machine": m, "metric": sweep.metric, "rows": rows}, indent=1, default=str))
    return out


def _plot(sweep: Sweep, rows: list[dict], varying: list[str]) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [", ".join(_value_text(r["point"].get(k)) for k in varying) or r["slug"]
              for r in rows]
    xs = range(len(rows))
    ax.errorbar(list(xs), [r["mean"] for r in rows],
                yerr=[0 if math.isnan(r["sd"]) else r["sd"] for r in rows],
                fmt="o", capsize=4)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(sweep.metric)
    ax.set_xlabel(", ".join(varying))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = sweep.out / "sweep.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


# -- command line ------------------------------------------------------------------------------
def _sweep_cmd(args) -> int:
    config, overrides = None, []
    for a in args.args:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise ConfigError("CONFIG", a, why="give one preset or YAML file, then key=value "
                                               "overrides")
    seeds = []
    for s in args.seeds.split(","):
        try:
            seeds.append(int(s))
        except ValueError:
            raise ConfigError("--seeds", args.seeds, why="expected integers, e.g. 0,1,2") from None
    sweep = Sweep(out=args.out, config=config, overrides=overrides,
                  grid=parse_grid(args.grid or []), seeds=seeds, metric=args.metric,
                  lower_is_better=not args.higher_is_better, match=args.match_params,
                  match_step=args.match_step)
    records = run_sweep(sweep, jobs=args.jobs, engine=args.engine, progress=not args.quiet)
    baseline = parse_grid([args.baseline]) if args.baseline else None
    if baseline:
        baseline = {k: v[0] for k, v in baseline.items()}
        baseline = next((p for p in sweep.grid_points()
                         if all(p.get(k) == v for k, v in baseline.items())), baseline)
    rows = aggregate(sweep, records, baseline)
    page = write_report(sweep, rows, args.title)
    print(page.read_text() if args.print else f"{len(records)} runs → {page}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="train a grid of configs over seeds and compare them "
                                     "(mean ± sd, paired 95 % intervals)",
                       description="tevo sweep [CONFIG] [key=value ...] --grid KEY=V1,V2 ... "
                                   "Every point is an ordinary run; finished points are skipped "
                                   "when the sweep is run again.")
    p.add_argument("args", nargs="*", metavar="[CONFIG] [key=value]")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="a dotted key and its values (repeat for a product grid)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    p.add_argument("--out", default="sweeps/sweep", help="sweep folder (default sweeps/sweep)")
    p.add_argument("--jobs", type=int, default=1,
                   help="points trained at once, one process and one thread each")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local processes or Ray tasks (pip install 'tevo[ray]')")
    p.add_argument("--metric", default="val_bits_per_char", help="summary key to compare")
    p.add_argument("--higher-is-better", action="store_true",
                   help="for metrics such as accuracy")
    p.add_argument("--baseline", default=None, metavar="KEY=V",
                   help="the grid point the others are compared with (default: the first)")
    p.add_argument("--match-params", default=None, metavar="KEY",
                   help="set this integer key per point for an equal parameter count "
                        "(e.g. model.d_model for deeper vs wider)")
    p.add_argument("--match-step", type=int, default=16, help="step of the matched key")
    p.add_argument("--title", default=None)
    p.add_argument("--print", action="store_true", help="print the page")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(fn=_sweep_cmd)
