"""The complexity study: measured time and memory against sequence length (``tevo bench speed``)
and analytic FLOP and parameter counts (``tevo bench flops``), for every registered mixer.

speed: each mixer is built with the options a user gets (its defaults, or its documented entry
in ``BENCH_PRESETS``; ``--presets tiny`` for the registry's conformance-suite options) at a fixed
width and measured alone (one layer, batch B) for forward, forward + backward and decode per
token, at each length; each mixer that declares linear time is checked against the linear-time
goals (fwd+bwd exponent ≤ 1.1, ≤ 1.2 with a log n or a scan; fixed-size decode state ≤ 0.1);
each point runs in a fresh process on CPU (its peak resident memory is that point's) or
in-process on GPU (the allocator's peak). Exponents are least-squares fits on log–log axes over
the upper half of the lengths; the crossover is the length from which a mixer stays faster than
``softmax``. Points predicted to exceed the per-point budget are skipped and listed as such.

flops: torch's FLOP counter on meta tensors (no compute) gives each mixer's forward FLOPs at
every (n, d); a fit F(n) = a·n² + b·n per width separates the quadratic (token-mixing) part from
the per-token part, giving the length at which attention's FLOPs overtake the rest of the block
(mixer projections + FFN): n* = 6d for softmax attention with a 4× FFN, the arithmetic of "The
linear Transformer is probably not the model you are waiting for".
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..registry import BENCHMARKS, FFNS, MIXERS
from ._common import (Command, Deadline, Option, Study, count_params, crossover, fit_power_law,
                      flop_counter, fmt, fmt_bytes, fmt_seconds, loglog_plot, new_report,
                      pick_device, predict_cost, sanitize, stderr, memory_gb)

BIDIR_REF = "softmax (bidirectional)"
CPU_LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384]
GPU_LENGTHS = CPU_LENGTHS + [32768, 65536, 131072]
MODES = ("forward", "train", "decode")
MODE_TEXT = {"forward": "forward (no grad)", "train": "forward + backward",
             "decode": "decode, per token after a prefill of n"}


# -- helpers (pure, tested) -------------------------------------------------------------------
def _first_big_o(expr: str) -> str:
    """The inside of the first O(...) of a declared complexity (balanced parentheses)."""
    i = expr.find("O(")
    if i < 0:
        return expr
    depth, j = 0, i + 1
    for j in range(i + 1, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[j], 0)
        if depth == 0:
            break
    return expr[i + 2:j]


def parse_n_exponent(expr: str) -> float | None:
    """The power of n in a declared complexity such as "O(n² d)", "O(n_q n_k h d)",
    "O(n (r + n/k) d)" or "O(n d log(n d))": products add powers, quotients subtract them, a sum
    takes its largest term, logs count 0, √ halves (only the first O(...)). None when n does
    not occur."""
    if not expr:
        return None
    s = _first_big_o(expr.strip())
    toks = re.findall(r"√|\(|\)|\+|-|/|\*|·|×|[²³]|\^\{?[0-9.]+(?:/[0-9]+)?\}?"
                      r"|[^\s()+\-/*·×²³^√]+", s)
    if not any(t == "n" or t.startswith("n_") for t in toks):
        return None
    try:
        power, i = _sum_power(toks, 0)
    except (IndexError, ValueError):
        return None
    return power if i == len(toks) else None


def _sum_power(toks: list[str], i: int) -> tuple[float, int]:
    best, i = _product_power(toks, i)
    while i < len(toks) and toks[i] in "+-":
        p, i = _product_power(toks, i + 1)
        best = max(best, p)
    return best, i


def _product_power(toks: list[str], i: int) -> tuple[float, int]:
    total, sign = 0.0, 1.0
    while i < len(toks) and toks[i] not in ("+", "-", ")"):
        if toks[i] in ("*", "·", "×"):
            i += 1
            continue
        if toks[i] == "/":
            sign, i = -1.0, i + 1
            continue
        p, i = _factor_power(toks, i)
        total += sign * p
        sign = 1.0
    return total, i


def _factor_power(toks: list[str], i: int) -> tuple[float, int]:
    t = toks[i]
    if t == "√":
        p, i = _factor_power(toks, i + 1)
        return 0.5 * p, i
    if t.startswith("log"):                          # log(n d), log n: no power of n
        _, i = _factor_power(toks, i + 1) if t == "log" else (0.0, i + 1)
        return 0.0, i
    if t == "(":
        p, i = _sum_power(toks, i + 1)
        if toks[i] != ")":
            raise ValueError("unbalanced")
        i += 1
    else:
        p, i = (1.0 if t == "n" or t.startswith("n_") else 0.0), i + 1
    while i < len(toks) and (toks[i] in ("²", "³") or toks[i].startswith("^")):
        e = toks[i]
        if e in ("²", "³"):
            p *= {"²": 2.0, "³": 3.0}[e]
        else:
            e = e.strip("^{}")
            p *= float(e.split("/")[0]) / float(e.split("/")[1]) if "/" in e else float(e)
        i += 1
    return p, i


def reference_first(names: list[str]) -> list[str]:
    """softmax (the reference of every crossover) first, the rest in registry order."""
    return (["softmax"] if "softmax" in names else []) + [n for n in names if n != "softmax"]


def self_form(name: str) -> bool | None:
    """The form a mixer is measured in: causal when it has one, else bidirectional."""
    s = MIXERS.get(name).supports
    if s is None or s.causal:
        return True
    return False if s.bidirectional else None


def point_estimate(hist: dict, n: int, repeat: int, decode_steps: int) -> tuple:
    """Predicted (seconds, peak bytes) of measuring one point at length n from the mixer's
    points already measured: warm-up + ``repeat`` calls of forward and of forward + backward,
    a prefill and the decode steps. (None, None) without history."""
    tf = predict_cost(hist.get("forward", []), n)
    tt = predict_cost(hist.get("train", []), n)
    td = predict_cost(hist.get("decode", []), n, default_exponent=1.0)
    mem = predict_cost(hist.get("memory", []), n)
    if tf is None and tt is None:
        return None, mem
    tf, tt = tf or 0.0, tt or 0.0
    est = (1 + repeat) * (tf + tt) + tf + (decode_steps + 1) * (td or 0.0)
    return est, mem


# Benchmark presets: options over a mixer's defaults, only where the defaults cannot be measured
# as a user would run them at the speed study's sizes; each with its reason (shown on the page).
BENCH_PRESETS: dict[str, tuple[dict, str]] = {}


def mixer_spec(name: str, overrides: dict | None = None, options: str = "tiny") -> dict:
    """The options a study builds ``name`` with: its registry ``tiny`` ones (``options="tiny"``,
    sized for the conformance suite) or its defaults plus its benchmark preset, if any
    (``options="default"``: what a user gets); ``overrides`` on top."""
    base = MIXERS.get(name).tiny if options == "tiny" else BENCH_PRESETS.get(name, ({}, ""))[0]
    return {**base, **(overrides or {}).get(name, {})}


def options_source(name: str, overrides: dict | None, options: str) -> str:
    """Where a mixer's measured options come from, in words (for the page)."""
    parts = ["registry tiny options" if options == "tiny" else "defaults"]
    if options != "tiny" and name in BENCH_PRESETS:
        parts = [f"benchmark preset ({BENCH_PRESETS[name][1]})"]
    if (overrides or {}).get(name):
        parts.append("--options overrides")
    return " + ".join(parts)


# -- speed ------------------------------------------------------------------------------------
SPEED_OPTIONS = (
    Option("mixers", "strs", None, "mixers to measure (default: every registered mixer; "
                                   "softmax is always added as the reference)"),
    Option("lengths", "ints", None, "sequence lengths (default 256..16384 on CPU, ..131072 on "
                                    "GPU)", quick=[256, 512, 1024, 2048]),
    Option("dtype", "strs", ["fp32"], "fp32 and/or bf16, e.g. --dtype fp32,bf16"),
    Option("d_model", "int", 64, "model width"),
    Option("batch", "int", 1, "batch size"),
    Option("repeat", "int", 5, "timed calls per mode (more while they are cheap)", quick=3),
    Option("budget_s", "float", 60.0, "per-point budget in seconds: a point predicted to take "
                                      "longer is skipped (and longer lengths after it)",
           quick=4.0),
    Option("max_memory_gb", "float", None, "skip points predicted to need more (default: half "
                                           "the available memory)"),
    Option("decode_steps", "int", 16, "decode steps timed per point", quick=8),
    Option("isolation", "str", "auto", "process (fresh process per point) | inprocess | auto "
                                       "(process on CPU, inprocess on GPU)"),
    Option("presets", "str", "default", "options each mixer is built with: default (its "
                                        "defaults, or its documented benchmark preset: what a "
                                        "user gets) or tiny (the registry's conformance-suite "
                                        "options; not a speed result)",
           choices=("default", "tiny")),
    Option("options", "str", None, "JSON of per-mixer options over those, "
                                   "e.g. '{\"local\": {\"window\": 64}}'"),
    Option("stat", "str", "min", "statistic of the timed calls: min (robust to preemption on "
                                 "a shared machine) or median", choices=("min", "median")),
)


def run_speed(opts: dict) -> list:
    dev = pick_device(opts["device"])
    rep = new_report("speed", "complexity", "Speed and memory against sequence length", opts,
                     intro=_SPEED_INTRO.format(d=opts["d_model"], b=opts["batch"],
                                               built=_BUILT[opts.get("presets") or "default"],
                                                     stat=opts["stat"]))
    overrides = json.loads(opts["options"]) if opts.get("options") else {}
    names = list(opts["mixers"] or MIXERS.names())
    for n in [n for n in names if n not in MIXERS]:
        rep.skip(n, "not a registered mixer")
    names = [n for n in names if n in MIXERS]
    if "softmax" in MIXERS and "softmax" not in names:
        names.insert(0, "softmax")
        rep.notes.append("softmax was added as the reference for crossover lengths")
    names = reference_first(names)
    forms, mixer_of = {}, {}
    for n in list(names):
        f = self_form(n)
        if f is None:
            rep.skip(n, "has neither a causal nor a bidirectional self-mixing form")
            names.remove(n)
        else:
            forms[n], mixer_of[n] = f, n
    # bidirectional-only mixers are compared with bidirectional softmax (no causal mask)
    if (any(f is False for f in forms.values()) and "softmax" in forms
            and MIXERS.get("softmax").supports.bidirectional):
        names.insert(1, BIDIR_REF)
        forms[BIDIR_REF], mixer_of[BIDIR_REF] = False, "softmax"
    lengths = sorted(opts["lengths"] or (GPU_LENGTHS if dev.type == "cuda" else CPU_LENGTHS))
    mem_limit = (opts["max_memory_gb"] or 0.5 * (memory_gb("MemAvailable") or 8.0)) * 2**30
    isolation = opts["isolation"]
    if isolation == "auto":
        isolation = "inprocess" if dev.type == "cuda" else "process"
    rep.data.update({"lengths": lengths, "mixers": names, "isolation": isolation,
                     "memory_limit_bytes": mem_limit, "results": {}})
    deadline = Deadline(opts["max_minutes"])
    runner = _Runner(isolation)
    try:
        for dtype in opts["dtype"]:
            res = _speed_dtype(rep, runner, names, forms, mixer_of, lengths, dtype, dev, opts,
                               overrides, mem_limit, deadline)
            rep.data["results"][dtype] = res
            try:                                      # the measurements survive an analysis bug
                _speed_fits(res, lengths)
                _speed_tables(rep, res, names, lengths, dtype, len(opts["dtype"]) > 1)
            except Exception as e:
                rep.error(f"analysis ({dtype})", e)
    finally:
        runner.close()
    rep.data = sanitize(rep.data)
    return [rep]


_SPEED_INTRO = """Each mixer alone (one layer, width d = {d}, batch {b}), built with {built},
in its causal form when it has one (the table "Options measured" lists each mixer's). Times
are the {stat} of the timed calls after a warm-up (the minimum is robust to preemption on a shared machine; the JSON has
both); *decode* is the time of one token after a prefill of n tokens (mixers with an
incremental form). Peak memory is measured, not estimated: on CPU each point runs in a fresh
process and the peak resident memory of each mode (read with `getrusage` after resetting the
high-water mark) minus the memory held before it; on GPU the allocator's peak. The kernel keeps
resident-memory counters per CPU and folds them in batches, so on CPU a peak below a few hundred
KB reads as "< resolution" rather than as a number. Exponents are
least-squares slopes on log–log axes over the upper half of the measured lengths; the crossover
is the length from which the mixer stays faster than `softmax` (interpolated; "extrapolated"
solves the two fitted power laws when it is not reached in range)."""


_BUILT = {"default": "the options a user gets — its defaults, or a documented benchmark "
                     "preset where the defaults cannot be measured",
          "tiny": "its registry entry's `tiny` options (sized for the conformance suite: "
                  "smoke test of the harness, not a speed result)"}


class _Runner:
    def __init__(self, isolation: str):
        self.isolation = isolation
        self.server = None
        if isolation == "process":
            from ._speed_worker import ForkServer
            self.server = ForkServer()

    def measure(self, spec: dict, timeout_s: float) -> dict:
        if self.server is not None:
            return self.server.measure(spec, timeout_s)
        from ._speed_worker import measure
        return measure(spec)

    def close(self):
        if self.server is not None:
            self.server.close()


def _speed_dtype(rep, runner, names, forms, mixer_of, lengths, dtype, dev, opts, overrides,
                 mem_limit, deadline) -> dict:
    presets = opts.get("presets") or "default"
    res = {n: {"mixer": mixer_of[n], "form": "causal" if forms[n] else "bidirectional",
               "options": mixer_spec(mixer_of[n], overrides, presets),
               "options_source": options_source(mixer_of[n], overrides, presets),
               "points": {}} for n in names}
    hist = {n: {"forward": [], "train": [], "decode": [], "memory": []} for n in names}
    blocked: dict = {}
    skipped: dict = {}
    budget, repeat, steps = opts["budget_s"], opts["repeat"], opts["decode_steps"]
    for n_len in lengths:
        for name in names:
            pts = res[name]["points"]
            why = blocked.get(name)
            if why is None and deadline.expired():
                why = deadline.reason()
            if why is None:
                est, mem = point_estimate(hist[name], n_len, repeat, steps)
                if est is not None and est > budget:
                    why = f"over budget: predicted {est:.1f} s > {budget:g} s at n={n_len}"
                elif mem is not None and mem > mem_limit:
                    why = (f"over memory: predicted {fmt_bytes(mem)} > {fmt_bytes(mem_limit)} "
                           f"at n={n_len}")
                if why and not why.startswith("study"):
                    blocked[name] = why
            if why:
                pts[str(n_len)] = {"status": "skipped", "reason": why}
                skipped.setdefault((name, why), []).append(n_len)
                continue
            spec = {"mixer": mixer_of[name], "options": res[name]["options"],
                    "fallback_options": (mixer_spec(mixer_of[name], overrides, "tiny")
                                         if presets != "tiny" else None),
                    "d_model": opts["d_model"],
                    "n": n_len, "batch": opts["batch"], "dtype": dtype, "device": str(dev),
                    "causal": forms[name], "modes": list(MODES), "repeat": repeat,
                    "budget_s": budget / 3.0, "decode_steps": steps,
                    "threads": opts.get("threads")}
            timeout = max(3.0 * budget, 30.0)
            stderr(f"[speed] {dtype} n={n_len} {name}")
            r = runner.measure(spec, timeout)
            if r.get("timeout"):
                why = f"over budget: timed out after {timeout:g} s at n={n_len}"
                blocked[name] = why
                pts[str(n_len)] = {"status": "skipped", "reason": why}
                skipped.setdefault((name, why), []).append(n_len)
                continue
            if "error" in r:
                pts[str(n_len)] = {"status": "error", "error": r["error"]}
                rep.error(f"{name} ({dtype}, n={n_len})", r["error"])
                continue
            p = {"status": "ok", "params": r.get("params"), "peak_reset": r.get("peak_reset")}
            if r.get("options_fallback"):
                p["options_fallback"] = r["options_fallback"]
                res[name]["options_source"] = (f"registry tiny options (its defaults do not "
                                               f"build here: {r['options_fallback']})")
            for mode in MODES:
                if mode not in r:
                    continue
                if "error" in r[mode]:                     # that mode failed, the others stand
                    p[f"{mode}_error"] = r[mode]["error"]
                    rep.error(f"{name} {mode} ({dtype}, n={n_len})", r[mode]["error"])
                    continue
                p[f"{mode}_s"] = r[mode][f"{opts['stat']}_s"]
                p[f"{mode}_median_s"] = r[mode]["median_s"]
                p[f"{mode}_min_s"] = r[mode]["min_s"]
                p[f"{mode}_calls"] = len(r[mode]["times"])
                p[f"{mode}_peak_bytes"] = r[mode]["peak_bytes"]
                hist[name][mode].append((n_len, r[mode]["median_s"]))
            if not any(f"{m}_s" in p for m in MODES):
                p["status"] = "error"
            if "state_bytes" in r.get("decode", {}):
                p["decode_state_bytes"] = r["decode"]["state_bytes"]
            if p.get("train_peak_bytes"):
                hist[name]["memory"].append((n_len, p["train_peak_bytes"]))
            pts[str(n_len)] = p
    for (name, why), ns in skipped.items():
        rep.skip(f"{name} ({dtype}) n = {', '.join(map(str, ns))}", why)
    return res


def series(res_m: dict, key: str, lengths) -> tuple[list, list]:
    xs, ys = [], []
    for n in lengths:
        p = res_m["points"].get(str(n), {})
        if p.get("status") == "ok" and p.get(key) is not None:
            xs.append(n)
            ys.append(p[key])
    return xs, ys


def _speed_fits(res: dict, lengths) -> None:
    keys = {"forward": "forward_s", "train": "train_s", "decode": "decode_s",
            "memory_forward": "forward_peak_bytes", "memory_train": "train_peak_bytes",
            "decode_state": "decode_state_bytes"}
    for r in res.values():
        r["fits"] = {k: fit_power_law(*series(r, key, lengths)) for k, key in keys.items()}
        r["fits"]["train_all"] = fit_power_law(*series(r, "train_s", lengths), upper_half=False)
        r["goals"] = linear_time_goals(r)
    for name, r in res.items():
        r["crossover_vs_softmax"] = {}
        ref_name = "softmax" if r["form"] == "causal" or BIDIR_REF not in res else BIDIR_REF
        ref = res.get(ref_name)
        r["reference"] = ref_name
        if ref is None:
            continue
        for mode in MODES:
            key = f"{mode}_s"
            a = {n: y for n, y in zip(*series(r, key, lengths))}
            b = {n: y for n, y in zip(*series(ref, key, lengths))}
            common = sorted(set(a) & set(b))
            if name == ref_name:
                r["crossover_vs_softmax"][mode] = {"n": None, "kind": "reference",
                                                   "text": "(reference)"}
                continue
            r["crossover_vs_softmax"][mode] = crossover(
                common, [a[n] for n in common], [b[n] for n in common],
                r["fits"].get(mode), ref["fits"].get(mode))


TRAIN_GOAL_LINEAR = 1.1        # forward + backward exponent of a mixer that declares O(n) time
TRAIN_GOAL_LOG = 1.2           # ... O(n log n): FFT convolutions and scans
DECODE_GOAL = 0.1              # decode time per token and state size of a recurrent mixer


def linear_time_goals(r: dict) -> dict | None:
    """The linear-time goals a measured mixer is held to, from its declared time complexity:
    a declared power of n of at most 1 asks for a forward + backward exponent ≤ 1.1 (≤ 1.2 when
    the declaration has a log n factor or a scan); a mixer with an incremental form and a
    declared fixed-size decode state (no n in the clauses that name decoding or the state) asks
    for decode time and state exponents ≤ 0.1. None for a mixer that declares super-linear time."""
    e = MIXERS.get(r["mixer"])
    time_decl, mem_decl = e.complexity
    p = parse_n_exponent(time_decl)
    if p is None or p > 1.0:
        return None
    train_goal = TRAIN_GOAL_LOG if ("log" in time_decl or "scan" in time_decl) \
        else TRAIN_GOAL_LINEAR
    fits = r.get("fits", {})
    got = (fits.get("train") or {}).get("exponent")
    out = {"train_goal": train_goal, "train": got,
           "train_met": None if got is None else got <= train_goal}
    clauses = [c for c in re.split(r"[;,]", f"{time_decl};{mem_decl}")
               if re.search(r"decod|state", c)]
    fixed_state = bool(e.supports is not None and e.supports.cache and clauses and all(
        parse_n_exponent(c) in (None, 0.0) for c in clauses))
    if fixed_state:
        dt = (fits.get("decode") or {}).get("exponent")
        ds = (fits.get("decode_state") or {}).get("exponent")
        out.update({"decode_goal": DECODE_GOAL, "decode": dt, "decode_state": ds,
                    "decode_met": None if dt is None or ds is None
                    else max(dt, ds) <= DECODE_GOAL})
    return out


def _goal_rows(res: dict, names) -> list:
    rows = []
    for name in names:
        g = res[name].get("goals")
        if not g:
            continue

        def verdict(met, excess):
            if met is None:
                return "not measured"
            return "yes" if met else f"no (+{excess:.2f})"
        tr = verdict(g["train_met"], (g["train"] or 0) - g["train_goal"])
        row = [name, MIXERS.get(res[name]["mixer"]).complexity[0] or "—",
               f"≤ {g['train_goal']}", _exp(res[name]["fits"].get("train")),
               _exp(res[name]["fits"].get("train_all")), tr]
        if "decode_goal" in g:
            worst = max(x for x in (g["decode"], g["decode_state"], -1.0) if x is not None)
            row += [_exp(res[name]["fits"].get("decode")),
                    _exp(res[name]["fits"].get("decode_state")),
                    verdict(g["decode_met"], worst - g["decode_goal"])]
        else:
            row += ["—", "—", "no fixed-size decode state declared"]
        rows.append(row)
    return rows


def _exp(fit) -> str:
    return "—" if not fit else f"{fit['exponent']:.2f}"


def _cell(p: dict, key: str, f) -> str:
    st = p.get("status")
    if st == "skipped":
        return "skipped"
    if st == "error":
        return "error"
    if st is None:
        return "—"
    if p.get(key.split("_")[0] + "_error"):
        return "error"
    v = p.get(key)
    return "n/a" if v is None else f(v)


def _speed_tables(rep, res, names, lengths, dtype, several: bool) -> None:
    sfx = f" ({dtype})" if several else ""
    tag = f"_{dtype}" if several else ""
    rows = []
    for name in names:
        r = res[name]
        e = MIXERS.get(r["mixer"])
        co = r.get("crossover_vs_softmax", {})
        rows.append([name, r["form"], e.complexity[0] or "—", _exp(r["fits"]["forward"]),
                     _exp(r["fits"]["train"]), _exp(r["fits"]["decode"]),
                     _exp(r["fits"]["memory_train"]),
                     co.get("forward", {}).get("text", "—"),
                     co.get("train", {}).get("text", "—"),
                     co.get("decode", {}).get("text", "—")])
    rep.table(["mixer", "form", "declared time", "exp. forward", "exp. fwd+bwd",
               "exp. decode/token", "exp. memory (fwd+bwd)", "crossover forward",
               "crossover fwd+bwd", "crossover decode"], rows,
              heading=f"Fitted exponents and crossover lengths vs softmax{sfx}",
              note="Exponents of time (and peak memory) against n; a time exponent near 0 "
                   "for decode means constant cost per token (a recurrent state). Causal "
                   "mixers are compared with causal softmax, bidirectional-only ones with "
                   f"{BIDIR_REF!r}.")
    goal_rows = _goal_rows(res, names)
    if goal_rows:
        rep.table(["mixer", "declared time", "fwd+bwd goal", "exp. fwd+bwd (upper half)",
                   "exp. fwd+bwd (all lengths)", "met", "exp. decode/token",
                   "exp. decode state", "decode flat (≤ 0.1)"], goal_rows,
                  heading=f"Linear-time goals{sfx}",
                  note=f"Mixers that declare at most linear time: forward + backward exponent "
                       f"≤ {TRAIN_GOAL_LINEAR} (≤ {TRAIN_GOAL_LOG} with a log n factor: FFT "
                       f"convolutions, scans), judged on the upper-half fit; mixers that "
                       f"declare a fixed-size decode state: decode time per token and state "
                       f"size exponents ≤ {DECODE_GOAL}. \"no (+x)\" gives by how much the "
                       f"exponent misses its goal.")
    for mode in MODES:
        key = f"{mode}_s"
        rows = [[name] + [_cell(res[name]["points"].get(str(n), {}), key, fmt_seconds)
                          for n in lengths] for name in names]
        rep.table(["mixer"] + [f"n={n}" for n in lengths], rows,
                  heading=f"Time: {MODE_TEXT[mode]}{sfx}")
        data = {name: series(res[name], key, lengths) for name in names}
        rep.figure(f"{mode}{tag}", f"{MODE_TEXT[mode]} time against n{sfx}",
                   loglog_plot(data, "sequence length n", "seconds",
                               f"{MODE_TEXT[mode]}{sfx}"))
    def peak_cell(b):                   # 0: under the resident-memory counters' resolution
        return fmt_bytes(b) if b else "< resolution"
    rows = [[name] + [_cell(res[name]["points"].get(str(n), {}), "train_peak_bytes", peak_cell)
                      for n in lengths] for name in names]
    rep.table(["mixer"] + [f"n={n}" for n in lengths], rows,
              heading=f"Peak memory of forward + backward, above the model and inputs{sfx}")
    rows = [[name] + [_cell(res[name]["points"].get(str(n), {}), "decode_state_bytes", fmt_bytes)
                      for n in lengths] for name in names
            if MIXERS.get(res[name]["mixer"]).supports.cache]
    if rows:
        rep.table(["mixer"] + [f"n={n}" for n in lengths], rows,
                  heading=f"Decode state size after n tokens{sfx}")
    data = {name: series(res[name], "train_peak_bytes", lengths) for name in names}
    rep.figure(f"memory{tag}", f"peak memory of forward + backward against n{sfx}",
               loglog_plot(data, "sequence length n", "bytes", f"peak memory{sfx}"))
    rows = [[name, json.dumps(res[name]["options"], sort_keys=True) if res[name]["options"]
             else "—", res[name].get("options_source", "—")] for name in names]
    rep.table(["mixer", "options", "from"], rows, heading=f"Options measured{sfx}",
              note="Options passed over each mixer's defaults (— = none: the defaults). "
                   "Length-dependent defaults (kernel_len, max_len tables) follow each point's "
                   "n.")


# -- flops ------------------------------------------------------------------------------------
FLOPS_OPTIONS = (
    Option("mixers", "strs", None, "mixers to count (default: every registered mixer that "
                                   "declares its complexity)"),
    Option("d_models", "ints", [64, 256, 1024], "widths", quick=[64, 256]),
    Option("lengths", "ints", [128, 256, 512, 1024, 2048, 4096, 8192, 16384], "lengths",
           quick=[128, 256, 512, 1024, 2048, 4096]),
    Option("ffn", "str", "mlp", "the FFN of the block (its FLOPs are the rest of the block)"),
    Option("cpu_max_length", "int", 2048, "mixers that cannot run on meta tensors (data-"
                                          "dependent ops) are counted on CPU up to this length"),
    Option("speed_json", "str", None, "a speed.json to set the measured crossovers beside "
                                      "(default: <out>/speed.json when it exists)"),
)


def count_forward_flops(build, n: int, d: int, causal: bool = True, device: str = "meta"):
    """FLOPs of one forward of ``build(d)`` on a (1, n, d) input, counted on ``device``
    ("meta": no compute, no memory)."""
    import torch

    from ..nn.context import MixerContext
    with torch.device(device):
        m = build(d)
        x = torch.randn(1, n, d)
        pos = torch.arange(n).unsqueeze(0)
    fc = flop_counter()
    with fc:             # (not under no_grad: torch's module tracker needs grad_fns)
        out = m(x, MixerContext(causal=causal, positions=pos)) if _is_mixer(m) else m(x)
    del out
    return fc.get_total_flops(), count_params(m)


def _is_mixer(m) -> bool:
    from ..mixers.base import Mixer
    return isinstance(m, Mixer) or hasattr(m, "init_state")


def fit_quadratic(ns, fs) -> dict | None:
    """F(n) ≈ a·n² + b·n, least squares on relative error (so short lengths count as much as
    long ones); a is clipped at 0."""
    import numpy as np
    pts = [(float(n), float(f)) for n, f in zip(ns, fs) if f is not None and f > 0]
    if len(pts) < 2:
        return None
    n = np.array([p[0] for p in pts])
    f = np.array([p[1] for p in pts])
    A = np.stack([n * n, n], 1) / f[:, None]
    (a, b), *_ = np.linalg.lstsq(A, np.ones_like(f), rcond=None)
    if a * n.max() ** 2 < 1e-6 * f.max():            # no n² term (a at rounding level)
        a, b = 0.0, float(np.sum(f * n) / np.sum(n * n))
    pred = a * n * n + b * n
    return {"a": float(a), "b": float(b), "max_rel_err": float(np.max(np.abs(pred - f) / f))}


def attention_overtakes(fit: dict | None, rest_per_token: float) -> float | None:
    """The n at which the quadratic part a·n² exceeds the per-token part (b + rest)·n."""
    if not fit or fit["a"] <= 0:
        return None
    a, b = fit["a"], fit["b"]
    if a * 1e7 < b + rest_per_token:          # a negligible n² term: no crossing in any range
        return None
    return (b + rest_per_token) / a


def run_flops(opts: dict) -> list:
    rep = new_report("flops", "complexity", "Analytic FLOPs and parameters per layer", opts,
                     intro=_FLOPS_INTRO)
    names = list(opts["mixers"] or [e.name for e in MIXERS.entries() if e.complexity[0]])
    for n in [n for n in names if n not in MIXERS]:
        rep.skip(n, "not a registered mixer")
    names = reference_first([n for n in names if n in MIXERS])
    if not opts["mixers"]:
        for e in MIXERS.entries():
            if not e.complexity[0]:
                rep.skip(e.name, "declares no complexity")
    ds, ns = sorted(opts["d_models"]), sorted(opts["lengths"])
    deadline = Deadline(opts["max_minutes"])
    ffn_spec = opts["ffn"]

    def build_ffn(d):
        return FFNS.build(ffn_spec, "ffn", d_model=d, dropout=0.0, layer=0, n_layers=1,
                          max_len=max(ns))
    ffn = {}
    for d in ds:
        f, p = count_forward_flops(build_ffn, 1024, d)
        ffn[d] = {"flops_per_token": f / 1024, "params": p}
    res = {}
    for name in names:
        if deadline.expired():
            rep.skip(name, deadline.reason())
            continue
        causal = self_form(name)
        if causal is None:
            rep.skip(name, "has neither a causal nor a bidirectional self-mixing form")
            continue
        spec = mixer_spec(name)
        stderr(f"[flops] {name}")
        t_m = time.perf_counter()
        r = {"form": "causal" if causal else "bidirectional", "options": spec, "by_d": {},
             "declared": MIXERS.get(name).complexity[0],
             "declared_n_exponent": parse_n_exponent(MIXERS.get(name).complexity[0])}
        for d in ds:
            row = {"flops": {}, "device": "meta"}
            cpu_slow = False
            for n in ns:
                def build(dd, n=n):
                    return MIXERS.build({"name": name, **spec}, d_model=dd, max_len=n,
                                        causal=causal, layer=0, n_layers=1, dropout=0.0)
                try:
                    f, p = count_forward_flops(build, n, d, causal, "meta")
                except Exception as e_meta:                      # data-dependent ops: real run
                    row["meta_error"] = f"{type(e_meta).__name__}: {e_meta}"[:200]
                    if n > opts["cpu_max_length"] or cpu_slow:
                        row.setdefault("not_counted", []).append(n)
                        continue
                    t_c = time.perf_counter()
                    try:
                        f, p = count_forward_flops(build, n, d, causal, "cpu")
                        row["device"] = "cpu (meta failed)"
                    except Exception as e:
                        rep.error(f"{name} d={d} n={n}", e)
                        continue
                    cpu_slow = time.perf_counter() - t_c > 2.0   # longer lengths: not counted
                row["flops"][str(n)] = f
                row["params"] = p
            counted = [(int(k), v) for k, v in row["flops"].items()]
            fit = fit_quadratic([c[0] for c in counted], [c[1] for c in counted])
            row["fit"] = fit
            row["exponent"] = fit_power_law([c[0] for c in counted], [c[1] for c in counted])
            row["overtakes_rest_at"] = attention_overtakes(fit, ffn[d]["flops_per_token"])
            r["by_d"][str(d)] = row
        r["count_s"] = time.perf_counter() - t_m
        res[name] = r
    # FLOP crossover vs softmax at each width
    ref = res.get("softmax")
    for name, r in res.items():
        for d in ds:
            row = r["by_d"][str(d)]
            if ref is None or name == "softmax":
                row["flop_crossover_vs_softmax"] = None
                continue
            rf = ref["by_d"][str(d)]["flops"]
            common = sorted(int(k) for k in row["flops"] if k in rf)
            row["flop_crossover_vs_softmax"] = crossover(
                common, [row["flops"][str(n)] for n in common], [rf[str(n)] for n in common])
    measured = _load_speed(opts)
    rep.data = sanitize({"d_models": ds, "lengths": ns, "ffn": ffn_spec, "ffn_by_d": ffn,
                         "results": res, "measured_crossover_source": measured.get("source")})
    _flops_tables(rep, res, ds, ns, ffn, measured)
    return [rep]


_FLOPS_INTRO = """Forward FLOPs of one layer counted by torch's FLOP counter (matrix products,
convolutions and attention kernels; element-wise work is not counted, as in MFU accounting) on
meta tensors, so any n and d cost nothing to count. Per width d, F(n) ≈ a·n² + b·n is fitted:
a·n² is the token-mixing part, b·n the mixer's per-token part (projections); with the FFN's
per-token FLOPs f, the quadratic part overtakes the rest of the block at n* = (b + f) / a —
6·d for softmax attention with a 4× FFN (4n²d against 8nd² + 16nd²), the arithmetic behind
"The linear Transformer is probably not the model you are waiting for". The measured crossover
from the speed study (forward, wall time) is set beside the FLOP crossover against softmax."""


def _load_speed(opts) -> dict:
    """Measured forward crossovers from a speed study's JSON (fp32 when it has it)."""
    p = Path(opts.get("speed_json") or Path(opts["out"]) / "speed.json")
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text())
        by_dtype = doc["results"]["results"]
        res = by_dtype.get("fp32") or next(iter(by_dtype.values()))
        return {"source": str(p), "speed_d": doc.get("options", {}).get("d_model"),
                "crossover": {n: (r.get("crossover_vs_softmax") or {}).get("forward") or {}
                              for n, r in res.items()}}
    except (KeyError, ValueError, StopIteration, TypeError, AttributeError):
        return {}


def _agreement(declared: float | None, ex: dict | None, fit: dict, d: int) -> str:
    """Does the counted growth match the declared power of n? The local slope of a cost
    a·n² + b·n only reaches 2 once a·n ≫ b, so a declared n² also agrees when the fitted n² term
    is there (a > 0) and the slope is past 1.5: "yes (n² term; slope still rising)"."""
    if declared is None or not ex:
        return "—"
    e = ex["exponent"]
    if abs(e - declared) < 0.3:
        return "yes"
    if declared == 2 and fit and fit.get("a", 0.0) / d > 0.05 and e > 1.5:
        return "yes (n² term; slope still rising)"
    return "no"


def _flops_tables(rep, res, ds, ns, ffn, measured) -> None:
    d0 = ds[0]
    rows = []
    for name, r in res.items():
        row0 = r["by_d"][str(d0)]
        fit = row0.get("fit") or {}
        ex = row0.get("exponent")
        dec = r["declared_n_exponent"]
        agree = _agreement(dec, ex, fit, d0)
        counted = sorted(int(k) for k in row0["flops"])
        where = "meta" if row0["device"] == "meta" else "CPU"
        if counted:
            where += f", n ≤ {counted[-1]}"
        rows.append([name, r["declared"] or "—", fmt(dec), _exp(ex), agree,
                     fmt(fit.get("a", 0.0) / d0 if fit else None),
                     fmt(fit.get("b", 0.0) / d0**2 if fit else None),
                     fmt(row0.get("params")), where])
    rep.table(["mixer", "declared time", "declared n-power", f"counted exponent (d={d0})",
               "agree", "a/d (n² coeff.)", "b/d² (n coeff.)", f"params (d={d0})",
               "counted on"], rows,
              heading="Declared complexity against counted FLOPs",
              note="Counted exponent: log–log slope of forward FLOPs over the upper half of the "
                   "lengths. FLOPs ≈ a·n² + b·n per layer; softmax: a/d = 4, b/d² = 8. "
                   "Work in "
                   "FFTs, scans and element-wise ops is not counted by torch's counter.")
    ffn_text = ", ".join(f"{fmt(ffn[d]['flops_per_token'] / d**2)}·d² at d={d}" for d in ds)
    rows = []
    for name, r in res.items():
        row = [name]
        for d in ds:
            n_star = r["by_d"][str(d)].get("overtakes_rest_at")
            row.append("never" if n_star is None else f"{n_star:,.0f} ({n_star / d:.1f}·d)")
        rows.append(row)
    rep.table(["mixer"] + [f"d={d}" for d in ds], rows,
              heading="Length at which the n² part overtakes the rest of the block",
              note=f"Rest of the block: the mixer's per-token FLOPs plus the FFN's "
                   f"({ffn_text} per token).")
    sd = measured.get("speed_d")
    d_cmp = sd if sd in ds else d0
    rows = []
    for name, r in res.items():
        fc = r["by_d"][str(d_cmp)].get("flop_crossover_vs_softmax")
        mc = measured.get("crossover", {}).get(name) if measured else None
        rows.append([name, "(reference)" if name == "softmax" else (fc or {}).get("text", "—"),
                     (mc or {}).get("text", "—") if measured else "no speed.json"])
    rep.table(["mixer", f"FLOP crossover vs softmax (d={d_cmp})",
               "measured crossover (speed study, forward)"], rows,
              heading="FLOP crossover beside the measured crossover",
              note=("Measured crossovers from " + measured["source"]) if measured else
              "Run `tevo bench speed` first (same --out) to set the measured crossovers beside.")
    rows = []
    for name, r in res.items():
        fl = r["by_d"][str(d0)]["flops"]
        rows.append([name] + [fmt(fl[str(n)] / n) if str(n) in fl else "—" for n in ns])
    rep.table(["mixer"] + [f"n={n}" for n in ns], rows,
              heading=f"Forward FLOPs per token, one layer (mixer only, d={d0})")
    data = {name: ([int(k) for k in r["by_d"][str(d0)]["flops"]],
                   [v / int(k) for k, v in r["by_d"][str(d0)]["flops"].items()])
            for name, r in res.items()}
    rep.figure("per_token", f"forward FLOPs per token against n (d={d0})",
               loglog_plot(data, "sequence length n", "FLOPs per token"))


# -- registration -----------------------------------------------------------------------------
@BENCHMARKS.register(
    "complexity",
    paper="Every paper's complexity claim; \"The Linear Transformer is probably not the model "
          "you are waiting for\" (post)",
    equation="t(n) ≈ c·n^p fitted on log–log axes; softmax FLOPs 4n²d + 8nd² per layer, "
             "FFN 16nd²: attention dominates from n = 6d",
    test="tests/test_bench.py::test_softmax_flops_match_closed_form_and_overtake_at_6d",
    commands=("speed", "flops"))
class ComplexityStudy(Study):
    """Measured time/memory exponents and crossovers vs softmax; analytic FLOPs per layer."""

    commands = (
        Command("speed", "time and peak memory against n for every mixer; exponents, "
                         "crossovers, log–log plots", SPEED_OPTIONS, run_speed,
                quick_minutes=4.0),
        Command("flops", "analytic FLOPs and parameters per layer against n and d",
                FLOPS_OPTIONS, run_flops, quick_minutes=1.25),
    )
