"""The extrapolation study (``tevo bench extrapolate``): train at length L, evaluate at L, 2L,
4L, 8L, 16L, for every position encoding a causal softmax-attention LM accepts (NoPE
included), after ALiBi (Press et al., 2022), KERPLE, the RoPE posts and Randomized Positional
Encodings: one table and one plot of validation bits per character against evaluation length.

Every model is built with ``max_len = 16·L`` (the longest evaluation), so learned tables exist
past L but are untrained there; that is the point of the study. RoPE's context-extension
scalings join as rows ``rope:dynamic``, ``rope:llama3`` and ``rope:yarn`` (pre-training length
L, factor = the longest evaluation factor).
"""
from __future__ import annotations

import math
import time

from ..registry import BENCHMARKS, MIXERS, POSITIONS
from ._common import (Command, build_or_tiny, Deadline, Option, Study, count_params, fmt, legend, new_report,
                      pick_device, sanitize, stderr)


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
    Option("train_length", "int", 256, "training length L", quick=64),
    Option("factors", "ints", [1, 2, 4, 8, 16], "evaluation lengths as multiples of L"),
    Option("budget_tokens", "int", 5_000_000, "training tokens per run", quick=160_000),
    Option("d_model", "int", 256, "width", quick=64),
    Option("n_layers", "int", 4, "layers", quick=2),
    Option("heads", "int", 4, "attention heads"),
    Option("batch", "int", 32, "sequences per training step", quick=16),
    Option("lr", "float", 1e-3, "peak learning rate", quick=3e-3),
    Option("eval_tokens", "int", 65536, "validation tokens per evaluation length",
           quick=8192),
)

_INTRO = """Train at L = {L}, evaluate at {lens}: a causal decoder (softmax attention, d = {d},
{layers} layers, {h} heads, byte vocabulary) per position encoding, trained on {tok:,} tokens of
the embedded Shakespeare corpus and evaluated on non-overlapping windows of each length from
the held-out works (bits per character over every position of a window). Models are built with
`max_len` = {maxlen}, so learned tables exist beyond L but are untrained there."""


def run_extrapolate(opts: dict) -> list:
    import torch

    from . import _train
    dev = pick_device(opts["device"])
    L, factors = opts["train_length"], sorted(opts["factors"])
    lens = [L * f for f in factors]
    rep = new_report("extrapolate", "extrapolation", "Length extrapolation", opts,
                     intro=_INTRO.format(L=L, lens=", ".join(map(str, lens)), d=opts["d_model"],
                                         layers=opts["n_layers"], h=opts["heads"],
                                         tok=opts["budget_tokens"], maxlen=max(lens)))
    rep.notes.append("Trained with tevo.bench's own minimal loop (bench/_train.py), not the full "
                     "Trainer.")
    names, left = causal_positions(opts["positions"])
    for n, why in left:
        rep.skip(n, why)
    names = (["none"] if "none" in names else []) + [n for n in names if n != "none"]
    if opts["positions"] is None and "rope" in names:
        names += [f"rope:{s}" for s in ROPE_SCALINGS]
    data = _train.corpus_bytes("shakespeare")
    deadline = Deadline(opts["max_minutes"])
    rows = {}
    for name in names:
        if deadline.expired():
            rep.skip(name, deadline.reason())
            continue
        cfg = {"arch": "gpt", "vocab_size": 256, "d_model": opts["d_model"],
               "n_layers": opts["n_layers"], "max_len": max(lens),
               "mixer": {"name": "softmax", "heads": opts["heads"]},
               "position": position_spec(name, L, max(factors)), "dropout": 0.0}
        torch.manual_seed(opts["seed"])
        try:
            model, cfg = build_or_tiny(cfg, (("position", "position"),))
        except Exception as e:
            rep.skip(name, f"refused by the config: {type(e).__name__}: {e}"[:300])
            continue
        stderr(f"[extrapolate] {name}")
        steps = max(1, opts["budget_tokens"] // (opts["batch"] * L))
        try:
            tr = _train.train(model, _train.LMBatches(data["train"], L, opts["batch"],
                                                      seed=opts["seed"]),
                              steps, opts["lr"], device=dev, deadline=deadline.end)
        except Exception as e:
            rep.error(name, e)
            continue
        if _train.stopped(tr):
            rep.skip(name, "study time limit reached during its training (--max-minutes)")
            continue
        r = {"position": cfg["position"], "params": count_params(model), "train": tr,
             "bpc": {}, "errors": {}}
        for n in lens:
            windows = max(1, opts["eval_tokens"] // n)
            per_batch = max(1, (opts["batch"] * L) // n)
            t0 = time.perf_counter()
            try:
                ev = _train.eval_batches(data["val"], n, windows, per_batch)
                r["bpc"][str(n)] = _train.bits(_train.evaluate_loss(model, ev, device=dev))
            except Exception as e:
                r["errors"][str(n)] = f"{type(e).__name__}: {e}"
                rep.error(f"{name} at n={n}", e)
            r.setdefault("eval_s", {})[str(n)] = time.perf_counter() - t0
        rows[name] = r
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
            v = r["bpc"].get(str(n))
            cells.append("error" if str(n) in r["errors"] else fmt(v, 4))
        b0, b1 = r["bpc"].get(str(lens[0])), r["bpc"].get(str(lens[-1]))
        ratio = fmt(b1 / b0, 3) if b0 and b1 else "—"
        table.append([name, fmt(r["params"])] + cells + [ratio, r["train"]["status"]])
    rep.table(["position", "params"] + [f"{n // L}L = {n}" for n in lens]
              + [f"bpc {lens[-1] // L}L / 1L", "training"], table,
              heading="Validation bits per character against evaluation length",
              note="Sorted by bits per character at the longest length.")
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
