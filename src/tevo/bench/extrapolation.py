"""The extrapolation study (``tevo bench extrapolate``): train at length L, evaluate at L, 2L,
4L, 8L, 16L, for every position encoding a causal softmax-attention LM accepts (NoPE
included), after ALiBi (Press et al., 2022), KERPLE, the RoPE posts and Randomized Positional
Encodings: one table and one plot of validation bits per character against evaluation length.

Every model is built with ``max_len = 16·L`` (the longest evaluation), so learned tables exist
past L but are untrained there; that is the point of the study. RoPE's context-extension
scalings join as rows ``rope:dynamic``, ``rope:llama3`` and ``rope:yarn`` (pre-training length
L, factor = the longest evaluation factor).

Every row is a sweep of ordinary runs of the one Trainer (``tevo.train.sweep``: one run per
position and seed, reused when the command is run again), evaluated by the registered
``length_extrapolation`` evaluation (the numbers of ``tevo eval RUN --lengths``); each length
is reported as mean ± sd over seeds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..registry import BENCHMARKS, MIXERS, POSITIONS
from ._common import (Command, Deadline, Option, Study, fmt, legend, mean_sd, new_report,
                      pick_device, sanitize)


ROPE_SCALINGS = ("dynamic", "llama3", "yarn")      # rows "rope:<scaling>"


def position_spec(name: str, L: int, factor: int) -> dict:
    """The position spec of a study row: a registered name, or ``rope:<scaling>`` (scaling
    from the training length L by ``factor``)."""
    if ":" in name:
        base, scaling = name.split(":", 1)
        return {"name": base, "scaling": scaling, "factor": float(factor), "original_max_len": L}
    return {"name": name}


def causal_positions(names=None) -> tuple[list[str], list[tuple[str, str]]]:
    """Position encodings usable with softmax attention in a causal LM, and the rest with why."""
    accepted = set(MIXERS.get("softmax").supports.positions) if "softmax" in MIXERS else set()
    ok, left = [], []
    for name in (names or POSITIONS.names()):
        base, _, variant = name.partition(":")
        if variant and (base != "rope" or variant not in ROPE_SCALINGS):
            left.append((name, f"unknown variant (rope:{{{','.join(ROPE_SCALINGS)}}})"))
            continue
        if base not in POSITIONS:
            left.append((name, "not a registered position encoding"))
            continue
        hooks = set(getattr(POSITIONS.get(base).obj, "hooks", ()))
        if not hooks <= accepted:
            left.append((name, f"its hooks {sorted(hooks)} are not taken by softmax attention"))
        else:
            ok.append(name)
    return ok, left


OPTIONS = (
    Option("positions", "strs", None, "position encodings (default: every one softmax "
                                      "attention accepts, NoPE included, and rope:dynamic, "
                                      "rope:llama3, rope:yarn)"),
    Option("train_length", "int", 128, "training length L", quick=64),
    Option("factors", "ints", [1, 2, 4, 8, 16], "evaluation lengths as multiples of L"),
    Option("budget_tokens", "int", 2_560_000, "training tokens per run", quick=160_000),
    Option("d_model", "int", 128, "width", quick=64),
    Option("n_layers", "int", 4, "layers", quick=2),
    Option("heads", "int", 4, "attention heads"),
    Option("batch", "int", 16, "sequences per training step"),
    Option("lr", "float", 3e-3, "peak learning rate"),
    Option("seeds", "int", 3, "seeds per position", quick=1),
    Option("eval_tokens", "int", 65536, "validation tokens per evaluation length",
           quick=8192),
    Option("jobs", "int", 0, "runs at once, one process and one thread each (0: one per core)",
           quick=1),
    Option("engine", "str", "local", "local processes or ray", choices=("local", "ray")),
    Option("runs", "str", "runs/bench", "folder of the run folders (reused when the command "
                                        "is run again)"),
)

_INTRO = """Train at L = {L}, evaluate at {lens}: a causal decoder (softmax attention, d = {d},
{layers} layers, {h} heads, byte vocabulary) per position encoding, trained by the Trainer on
{tok:,} tokens of the embedded Shakespeare corpus ({seeds} seed(s)) and evaluated on
non-overlapping windows of each length from the held-out works (bits per character over every
position of a window). Models are built with `max_len` = {maxlen}, so learned tables exist
beyond L but are untrained there."""


def extrapolate_run(run_dir, factors, max_batches: int | None) -> dict:
    """{factor: bits/char} of a finished run at factor × its training length, by the registered
    ``length_extrapolation`` evaluation; cached in the run folder (``extrapolation.json``, keyed
    by the factors and batches asked). A length the model cannot run is ``inf``."""
    from ..inference.length_extrapolation import length_extrapolation
    cache = Path(run_dir) / "extrapolation.json"
    key = json.dumps([list(factors), max_batches])
    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            return got["bpc"]
    r = length_extrapolation(run_dir, factors=list(factors), max_batches=max_batches)
    bpc = {fmt(row["factor"]): row.get("bits_per_char", math.inf) for row in r["rows"]}
    cache.write_text(json.dumps({"key": key, "bpc": bpc}))
    return bpc


def run_extrapolate(opts: dict) -> list:
    from ..train.sweep import slug
    from .modifications import Variant, suite_sweep
    dev = pick_device(opts["device"])
    L, factors = opts["train_length"], sorted(opts["factors"])
    lens = [L * f for f in factors]
    rep = new_report("extrapolate", "extrapolation", "Length extrapolation", opts,
                     intro=_INTRO.format(L=L, lens=", ".join(map(str, lens)), d=opts["d_model"],
                                         layers=opts["n_layers"], h=opts["heads"],
                                         tok=opts["budget_tokens"], maxlen=max(lens),
                                         seeds=opts["seeds"]))
    if opts["quick"]:
        rep.notes.insert(0, "Smoke test, not a result: the --quick budget trains for seconds.")
    names, left = causal_positions(opts["positions"])
    for n, why in left:
        rep.skip(n, why)
    names = (["none"] if "none" in names else []) + [n for n in names if n != "none"]
    if opts["positions"] is None and "rope" in names:
        names += [f"rope:{s}" for s in ROPE_SCALINGS]
    variants = [Variant(n, {"position": position_spec(n, L, max(factors))},
                        [("position", n.split(":")[0])], baseline=n == "learned")
                for n in names]
    qopts = {**opts, "seq_len": L, "eval_windows": opts["batch"], "precision": "fp32"}
    deadline = Deadline(opts["max_minutes"])
    run = suite_sweep("positions", qopts, None, dev,
                      deadline.end if math.isfinite(deadline.end) else None,
                      extra=(f"model.max_len={max(lens)}",), name="extrapolate",
                      variants=variants)
    for n, why in run.left:
        rep.skip(n, why)
    label = {slug(pt): v.label for v, pt in run.resolved}
    per_len = max(1, -(-opts["eval_tokens"] // (opts["batch"] * L)))   # batches of B·L tokens
    rows: dict = {}
    for r in run.records:
        name = label[slug(r["point"])]
        row = rows.setdefault(name, {"position": r["point"]["model.position"],
                                     "params": r["summary"].get("params"), "seeds": {},
                                     "command": r["command"]})
        try:
            row["seeds"][r["seed"]] = extrapolate_run(r["run_dir"], factors, per_len)
        except Exception as e:                       # noqa: BLE001 - reported per row
            rep.error(f"{name} (seed {r['seed']})", e)
    for name, row in rows.items():
        row["bpc"], row["sd"] = {}, {}
        for n, f in zip(lens, factors):
            xs = [b[fmt(f)] for b in row["seeds"].values() if fmt(f) in b]
            if xs:
                row["bpc"][str(n)], row["sd"][str(n)] = mean_sd(xs)
    done = {name for name in rows}
    for v, _ in run.resolved:
        if v.label not in done:
            rep.skip(v.label, "study time limit reached (--max-minutes); run the same command "
                              "again to continue")
    rep.data = sanitize({"train_length": L, "lengths": lens, "results": rows})
    _tables(rep, rows, lens, L)
    return [rep]


def _tables(rep, rows: dict, lens: list[int], L: int) -> None:
    def last(r):
        v = r["bpc"].get(str(lens[-1]))
        return math.inf if v is None or math.isnan(v) else v
    order = sorted(rows, key=lambda k: last(rows[k]))
    table = []
    for name in order:
        r = rows[name]
        cells = []
        for n in lens:
            v, sd = r["bpc"].get(str(n)), r["sd"].get(str(n), math.nan)
            cells.append("—" if v is None else fmt(v, 4) + ("" if math.isnan(sd) or
                                                              not math.isfinite(v)
                                                              else f" ± {sd:.3f}"))
        b0, b1 = r["bpc"].get(str(lens[0])), r["bpc"].get(str(lens[-1]))
        ratio = fmt(b1 / b0, 3) if b0 and b1 else "—"
        table.append([name, fmt(r["params"])] + cells + [ratio, len(r["seeds"])])
    rep.table(["position", "params"] + [f"{n // L}L = {n}" for n in lens]
              + [f"bpc {lens[-1] // L}L / 1L", "seeds"], table,
              heading="Validation bits per character against evaluation length",
              note="Mean ± sd over seeds; sorted by bits per character at the longest length "
                   "(inf: the model cannot encode that length). Each row's `tevo train` command "
                   "is in the JSON.")
    series = {name: ([n for n in lens if rows[name]["bpc"].get(str(n)) is not None],
                     [rows[name]["bpc"][str(n)] for n in lens
                      if rows[name]["bpc"].get(str(n)) is not None]) for name in order}

    def draw(fig):
        ax = fig.add_subplot(111)
        styles = ["-", "--", "-.", ":"]
        for i, (name, (xs, ys)) in enumerate(series.items()):
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, linestyle=styles[(i // 10) % 4],
                        label=name)
        ax.set_xscale("log", base=2)
        ax.axvline(L, color="grey", lw=0.8)
        ax.set_xlabel("evaluation length (grey: training length)")
        ax.set_ylabel("validation bits per character")
        lo = [y for _, (xs, ys) in series.items() for y in ys if math.isfinite(y)]
        if lo:
            ax.set_ylim(min(lo) - 0.1, min(max(lo), min(lo) * 3) + 0.1)
        ax.grid(True, alpha=0.3)
        legend(ax, len(series))
    rep.figure("loss", "bits per character against evaluation length", draw)


@BENCHMARKS.register(
    "extrapolation",
    paper="Train Short, Test Long: Attention with Linear Biases (Press et al., 2022); KERPLE "
          "(Chi et al., 2022); Randomized Positional Encodings (Ruoss et al., 2023); RoPE posts",
    equation="loss at 1×…16× the training length, per position encoding",
    test="tests/test_bench.py::test_extrapolation_lists_every_causal_position_and_skips_others",
    commands=("extrapolate",))
class ExtrapolationStudy(Study):
    """Train at L, evaluate at L…16L for every causal position encoding (and NoPE)."""

    commands = (Command("extrapolate", "train at L, evaluate at L..16L for every causal "
                                       "position encoding (and NoPE)", OPTIONS, run_extrapolate,
                        quick_minutes=1.5),)
