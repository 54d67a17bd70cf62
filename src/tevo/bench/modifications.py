"""The modifications study (``tevo bench quality``), after "Do Transformer Modifications
Transfer Across Implementations and Applications?" (Narang et al., 2021): every variant of a
suite is trained with the same code, data, token budget and hyper-parameters on the embedded
Shakespeare corpus, and the table reports validation bits per character (mean ± sd over seeds),
parameters, tokens/s and wall time, sorted, with the baseline marked.

Suites name components by registry name; a name that is not registered, or a combination that
the config validation refuses, is skipped and listed with the reason. ``mixers`` and
``positions`` iterate the registries: every causal mixer, every position encoding that the
baseline's softmax attention accepts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..registry import BENCHMARKS, FFNS, MIXERS, NORMS, POSITIONS, RESIDUALS, registry
from ._common import Command, Deadline, Option, Study, fmt, new_report, pick_device, sanitize

SUITES = ("ffn", "norm", "mixers", "positions")
# norms that are not block norms (applied to embeddings only): left out of the norm suite
NOT_BLOCK_NORMS = frozenset({"embedding_norm"})


@dataclass
class Variant:
    """One row of a suite: model-config overrides and the registry names they need."""

    label: str
    overrides: dict
    needs: list = field(default_factory=list)       # [(kind, name), ...]
    baseline: bool = False
    note: str = ""

    def missing(self) -> list[str]:
        return [f"{k} {n!r}" for k, n in self.needs if n not in registry(k)]


def base_model(opts: dict) -> dict:
    """The baseline decoder of every suite: GPT-2 style (pre-LN LayerNorm, GELU MLP, learned
    positions, softmax attention), byte vocabulary."""
    return {"arch": "gpt", "vocab_size": 256, "d_model": opts["d_model"],
            "n_layers": opts["n_layers"], "max_len": opts["seq_len"],
            "mixer": {"name": "softmax", "heads": opts["heads"]},
            "ffn": {"name": "mlp", "mult": 4, "activation": "gelu"},
            "norm": "layernorm", "residual": "pre_ln", "position": "learned", "dropout": 0.0}


def _with_heads(name: str, reg, heads: int) -> dict:
    """Constructor defaults, plus the suite's head count where the component takes one."""
    from ..registry import accepted_kwargs
    acc = accepted_kwargs(reg.get(name).obj)
    return {"name": name, **({"heads": heads} if acc is None or "heads" in acc else {})}


def suite_variants(suite: str, opts: dict) -> tuple[list[Variant], list[tuple[str, str]]]:
    """The variants of a suite and the names left out with the reason."""
    heads = opts["heads"]
    out: list[Variant] = []
    left: list[tuple[str, str]] = []
    if suite == "ffn":
        for act in ("relu", "gelu", "swish"):
            out.append(Variant(act, {"ffn": {"name": "mlp", "mult": 4, "activation": act}},
                               [("ffn", "mlp"), ("activation", act)], baseline=act == "gelu"))
        for name in ("glu", "geglu", "swiglu", "reglu", "bilinear"):
            out.append(Variant(name, {"ffn": {"name": name}}, [("ffn", name)],
                               note="d_ff = 2/3·4d (parameter-matched, GLU Variants paper)"))
        named = {"mlp", "glu", "geglu", "swiglu", "reglu", "bilinear"}
        for e in FFNS.entries():
            if e.name not in named:
                out.append(Variant(e.name, {"ffn": {"name": e.name, **e.tiny}}, [("ffn", e.name)],
                                   note="registry tiny options"))
    elif suite == "norm":
        out += [
            Variant("pre_ln", {}, [("residual", "pre_ln"), ("norm", "layernorm")], baseline=True),
            Variant("post_ln", {"residual": "post_ln"}, [("residual", "post_ln")]),
            Variant("rmsnorm", {"norm": "rmsnorm"}, [("norm", "rmsnorm")]),
            Variant("scalenorm", {"norm": "scalenorm"}, [("norm", "scalenorm")]),
            Variant("fixnorm", {"norm": "fixnorm"}, [("norm", "fixnorm")]),
            Variant("rezero", {"residual": "rezero"}, [("residual", "rezero")]),
            Variant("skipinit", {"residual": "skipinit"}, [("residual", "skipinit")]),
            Variant("deepnorm", {"residual": "deepnorm", "init": "deepnorm"},
                    [("residual", "deepnorm"), ("init", "deepnorm")]),
            Variant("admin", {"residual": "admin", "init": "admin"},
                    [("residual", "admin"), ("init", "admin")]),
            Variant("dsinit (post_ln)", {"residual": "post_ln", "init": "dsinit"},
                    [("residual", "post_ln"), ("init", "dsinit")]),
            Variant("sandwich", {"residual": "sandwich"}, [("residual", "sandwich")]),
            Variant("b2t", {"residual": "b2t"}, [("residual", "b2t")]),
            Variant("res_post_norm", {"residual": "res_post_norm"},
                    [("residual", "res_post_norm")]),
            Variant("gtrxl_gate", {"residual": "gtrxl_gate"}, [("residual", "gtrxl_gate")]),
        ]
        named = {n for v in out for k, n in v.needs}
        for e in RESIDUALS.entries():
            if e.name not in named:
                out.append(Variant(e.name, {"residual": {"name": e.name, **e.tiny}},
                                   [("residual", e.name)]))
        for e in NORMS.entries():
            if e.name not in named and e.name not in NOT_BLOCK_NORMS:
                out.append(Variant(e.name, {"norm": {"name": e.name, **e.tiny}},
                                   [("norm", e.name)]))
    elif suite == "mixers":
        for e in MIXERS.entries():
            if e.supports is not None and not e.supports.causal:
                left.append((e.name, "no causal form"))
                continue
            out.append(Variant(e.name, {"mixer": _with_heads(e.name, MIXERS, heads)},
                               [("mixer", e.name)], baseline=e.name == "softmax"))
    elif suite == "positions":
        accepted = set(MIXERS.get("softmax").supports.positions) if "softmax" in MIXERS else set()
        for e in POSITIONS.entries():
            hooks = set(getattr(e.obj, "hooks", ()))
            if not hooks <= accepted:
                left.append((e.name, f"its hooks {sorted(hooks)} are not taken by softmax "
                                     f"attention (the suite's mixer)"))
                continue
            out.append(Variant(e.name, {"position": {"name": e.name}}, [("position", e.name)],
                               baseline=e.name == "learned"))
    else:
        from ..errors import TevoError
        raise TevoError(f"unknown suite {suite!r} (valid: {', '.join(SUITES)})")
    out.sort(key=lambda v: not v.baseline)            # the baseline runs first
    return out, left


def base_overrides(opts: dict) -> list[str]:
    """The baseline and the budget as ``tevo train default ...`` overrides: every point of a
    suite is an ordinary run of the one Trainer (AdamW, warm-up + cosine, clipping 1.0)."""
    from ..train.sweep import _value_text
    steps = max(1, opts["budget_tokens"] // (opts["batch"] * opts["seq_len"]))
    model = {k: v for k, v in base_model(opts).items() if k != "vocab_size"}
    return [*(f"model.{k}={_value_text(v)}" for k, v in model.items()),
            f"data.seq_len={opts['seq_len']}", f"train.steps={steps}",
            f"train.batch_size={opts['batch']}", f"train.lr={opts['lr']:g}",
            f"train.warmup={opts.get('warmup', max(1, steps // 20))}",
            f"train.precision={opts['precision']}", "train.max_minutes=null",
            "train.eval_every=0", "train.ckpt_every=0", "train.sample_tokens=0",
            "train.plot=false",
            f"train.final_eval_batches={max(1, -(-opts['eval_windows'] // opts['batch']))}"]


def variant_point(v: Variant) -> dict:
    """A variant's overrides as a sweep point (dotted keys of the model config)."""
    return {f"model.{k}": copy.deepcopy(val) for k, val in v.overrides.items()}


def resolve_variants(variants: list[Variant], overrides: list[str]
                     ) -> tuple[list[tuple[Variant, dict]], list[tuple[str, str]]]:
    """Each variant whose model the config builds, with its point; a component whose default
    options the config refuses falls back to its registry ``tiny`` options (said in the row's
    note); the rest are left out with the reason."""
    import tevo
    from ..config import load_config
    from ..train.sweep import _value_text
    ok, left = [], []
    for v in variants:
        miss = v.missing()
        if miss:
            left.append((v.label, "not registered: " + ", ".join(miss)))
            continue
        point = variant_point(v)
        tries = [point]
        for fld in ("mixer", "position", "ffn"):
            spec = v.overrides.get(fld)
            if isinstance(spec, dict) and "name" in spec:
                e = registry(fld).get(spec["name"])
                tries.append({**point, f"model.{fld}": {"name": spec["name"], **e.tiny}})
        err = None
        for i, pt in enumerate(tries):
            try:
                cfg = load_config("default", [*overrides,
                                              *(f"{k}={_value_text(x)}" for k, x in pt.items())])
                tevo.build_model(cfg)
            except Exception as e:              # noqa: BLE001 - reported as the reason
                err = err or e
                continue
            if i:
                v.note = (v.note + "; " if v.note else "") + "registry tiny options (the " \
                    "defaults are refused at this size)"
            ok.append((v, pt))
            break
        else:
            left.append((v.label, f"refused by the config: {type(err).__name__}: {err}"[:300]))
    return ok, left


# The standard budget of the text studies, chosen from a measured curve of the baseline
# (docs/benchmarks/README.md, "Budgets"): at d = 128, 4 layers, context 128 the baseline passes
# 2.7 bits/char near 2 M tokens on the held-out works and keeps improving; 1,250 steps of
# 16 × 128 (2.56 M tokens, a full cosine schedule) is well into the regime where architecture
# matters. --quick is a smoke test.
QUALITY_OPTIONS = (
    Option("suite", "strs", list(SUITES), f"suites to run: {', '.join(SUITES)} (default: all), "
                                          f"or vision (image models on the digits)"),
    Option("variants", "strs", None, "only these variant labels"),
    Option("seeds", "int", 3, "seeds per variant", quick=1),
    Option("budget_tokens", "int", 2_560_000, "training tokens per run", quick=160_000),
    Option("d_model", "int", 128, "width", quick=64),
    Option("n_layers", "int", 4, "layers", quick=2),
    Option("heads", "int", 4, "attention heads"),
    Option("seq_len", "int", 128, "training length", quick=64),
    Option("batch", "int", 16, "sequences per step"),
    Option("lr", "float", 3e-3, "peak learning rate (AdamW, warm-up + cosine)"),
    Option("eval_windows", "int", 320, "validation windows", quick=64),
    Option("precision", "str", "fp32", "fp32 | bf16 (autocast)", choices=("fp32", "bf16")),
    Option("jobs", "int", 0, "runs at once, one process and one thread each (0: one per core)",
           quick=1),
    Option("engine", "str", "local", "local processes or ray", choices=("local", "ray")),
    Option("runs", "str", "runs/bench", "folder of the suites' run folders (each point is an "
                                        "ordinary `tevo train` run; finished ones are reused "
                                        "when the command is run again)"),
)

_INTRO = """After *Do Transformer Modifications Transfer Across Implementations and Applications?*
(Narang et al., 2021): each variant changes one component of the baseline (a GPT-2-style
decoder: pre-LN LayerNorm, GELU MLP, learned positions, softmax attention; byte vocabulary) and
is trained by the one Trainer (AdamW, warm-up + cosine, clipping 1.0) on the same token budget of
the embedded Shakespeare corpus. Validation: the corpus's held-out works (the `shakespeare`
corpus's val split), bits per character. Model: d = {d}, {L} layers, {h} heads, sequences of
{n}, batch {b}; {tokens:,} training tokens per run, learning rate {lr:g}, {seeds} seed(s)."""


def run_quality(opts: dict) -> list:
    dev = pick_device(opts["device"])
    suites = opts["suite"]
    if suites == ["all"]:
        suites = list(SUITES)
    deadline = Deadline(opts["max_minutes"])
    reports = []
    for i, suite in enumerate(suites):
        if suite == "vision":          # image models: the vision study's page (tevo bench vision)
            reports.extend(_run_vision_suite(opts))
            continue
        # each suite gets its share of the time limit; time left over passes to the next ones
        share = None
        if opts["max_minutes"]:
            share = deadline.start + 60.0 * opts["max_minutes"] * (i + 1) / len(suites)
        reports.append(_run_suite(suite, opts, dev, share))
    return reports


def _run_vision_suite(opts: dict) -> list:
    """``--suite vision``: the vision study with this command's seeds and common options."""
    from ._common import all_commands, resolve_options
    _, cmd = all_commands()["vision"]
    given = {k: opts[k] for k in ("out", "device", "seed", "max_minutes", "threads")
             if opts.get(k) is not None}
    given["seeds"] = list(range(opts["seeds"]))
    vopts = resolve_options(cmd, given, opts["quick"])
    vopts["cli"] = opts.get("cli", "")
    return cmd.run(vopts)


@dataclass
class SuiteRun:
    """A suite's sweep and what it produced: the variants that build (with their points), the
    finished runs' records, and the variants left out with the reason."""
    sweep: object
    resolved: list
    records: list
    left: list
    seeds: list


def suite_sweep(suite: str, opts: dict, labels=None, dev=None, deadline: float | None = None,
                extra: tuple = (), name: str | None = None,
                variants: list[Variant] | None = None) -> SuiteRun:
    """Train (or reuse) the runs of a suite's variants (``labels``: a subset) at the budget of
    ``opts``; ``extra`` overrides are added to every point (then ``name`` names the sweep's
    folder; an extra key replaces the base's). ``variants``: the study's own variants instead
    of the suite's. Finished runs of the same command are reused, so studies that share
    variants (the claims table and the quality pages) share their runs."""
    from pathlib import Path

    from ..train.sweep import Sweep, run_sweep
    left: list = []
    if variants is None:
        variants, left = suite_variants(suite, opts)
    if labels:
        variants = [v for v in variants if v.label in set(labels)]
        left = [x for x in left if x[0] in set(labels)]
    keys = {e.split("=", 1)[0] for e in extra}
    overrides = [*(o for o in base_overrides(opts) if o.split("=", 1)[0] not in keys), *extra]
    if dev is not None and dev.type != "cpu":
        overrides.append(f"train.device={dev.type}")
    resolved, refused = resolve_variants(variants, overrides)
    seeds = list(range(opts["seed"], opts["seed"] + opts["seeds"]))
    if not resolved:
        return SuiteRun(None, [], [], left + refused, seeds)
    sweep = Sweep(out=Path(opts["runs"]) / (name or f"quality-{suite}"), config="default",
                  overrides=overrides, point_list=[pt for _, pt in resolved], seeds=seeds)
    import os
    jobs = opts["jobs"] or os.cpu_count() or 1
    records = run_sweep(sweep, jobs=jobs, engine=opts["engine"], progress=True,
                        deadline=deadline)
    return SuiteRun(sweep, resolved, records, left + refused, seeds)


def _run_suite(suite: str, opts: dict, dev, suite_deadline: float | None):
    """The suite as a sweep of ordinary runs (``tevo.train.sweep``): one point per variant,
    ``seeds`` runs each, the paired difference against the baseline over seeds."""
    from ..train.sweep import aggregate, slug
    rep = new_report(f"quality-{suite}", "modifications", f"Modifications table: {suite}", opts,
                     intro=_INTRO.format(d=opts["d_model"], L=opts["n_layers"], h=opts["heads"],
                                         n=opts["seq_len"], b=opts["batch"],
                                         tokens=opts["budget_tokens"], lr=opts["lr"],
                                         seeds=opts["seeds"]))
    if opts["quick"]:
        rep.notes.insert(0, "Smoke test, not a result: the --quick budget is far too small for "
                            "the variants to differ by more than optimisation speed.")
    run = suite_sweep(suite, opts, opts["variants"], dev, suite_deadline)
    for name, why in run.left:
        rep.skip(name, why)
    resolved, records, seeds = run.resolved, run.records, run.seeds
    rows: list[dict] = []
    if records:
        by_slug = {slug(pt): v for v, pt in resolved}
        base_pt = next((pt for v, pt in resolved if v.baseline), None)
        done = {slug(r["point"]) for r in records}
        agg = aggregate(run.sweep, records, base_pt if base_pt is not None
                        and slug(base_pt) in done
                        else next((pt for _, pt in resolved if slug(pt) in done), None))
        have = {(slug(r["point"]), r["seed"]) for r in records}
        for v, pt in resolved:
            missing = [sd for sd in seeds if (slug(pt), sd) not in have]
            if missing:
                rep.skip(f"{v.label} (seeds {missing})",
                         f"study time limit reached (--max-minutes {opts['max_minutes']}); "
                         f"run the same command again to continue")
        for a in agg:
            v = by_slug[a["slug"]]
            runs = sorted((r for r in records if slug(r["point"]) == a["slug"]),
                          key=lambda r: r["seed"])
            s0 = runs[0]["summary"]
            rows.append({"label": v.label, "baseline": v.baseline, "note": v.note,
                         "point": a["point"], "val_bpc_mean": a["mean"], "val_bpc_sd": a["sd"],
                         "params": a["params"], "tokens": a["tokens"],
                         "tokens_per_s": a["tokens_per_second"],
                         "wall_s": sum(r["summary"].get("train_seconds", 0) for r in runs)
                         / len(runs),
                         "status": "; ".join(sorted({r["summary"].get("stopped", "?")
                                                     for r in runs})),
                         "diff": a.get("diff"), "verdict": a["verdict"] if v.baseline
                         or a["verdict"] != "baseline" else "reference point",
                         "command": a["command"], "precision": s0.get("precision"),
                         "runs": [{"seed": r["seed"], "run_dir": r["run_dir"],
                                   "val_bpc": r["summary"].get("val_bits_per_char"),
                                   "tokens_per_s": r["summary"].get("tokens_per_second")}
                                  for r in runs]})
    rep.data = sanitize({"suite": suite, "base_model": base_model(opts),
                         "overrides": run.sweep.overrides if run.sweep else None, "rows": rows})
    _table(rep, rows)
    return rep


def _table(rep, rows: list[dict]) -> None:
    import math
    key = (lambda r: (math.isnan(r["val_bpc_mean"]), r["val_bpc_mean"]))
    rows = sorted(rows, key=key)
    table = []
    for i, r in enumerate(rows, 1):
        sd = r["val_bpc_sd"]
        bpc = fmt(r["val_bpc_mean"], 4) + ("" if math.isnan(sd) else f" ± {sd:.4f}")
        delta, verdict = "—", "baseline" if r["baseline"] else "—"
        d = r.get("diff")
        if d:
            delta = f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
            verdict = r["verdict"]
        label = f"**{r['label']}** (baseline)" if r["baseline"] else r["label"]
        table.append([i, label, bpc, delta, verdict, fmt(r["params"]), fmt(r["tokens_per_s"]),
                      f"{r['wall_s']:.1f}", r["note"]])
    rep.table(["rank", "variant", "val bits/char", "Δ vs baseline [95 % CI]", "verdict",
               "params", "tokens/s", "train s", "note"], table, heading="Results (sorted)",
              note="Mean ± sd over seeds; Δ is the paired difference with the baseline over the "
                   "seeds both ran, with its 95 % t-interval: an interval holding 0 is \"no "
                   "measurable difference\" (one seed never measures one). tokens/s and time are "
                   "training only, on a machine shared with other jobs (see load average).")
    if rows:
        rep.text("Reproduce a row (its first seed): the `tevo train` command of each run is "
                 "in the JSON (`rows[].command`); the baseline's is\n\n```\n"
                 + next((r["command"] for r in rows if r["baseline"]), rows[0]["command"])
                 + "\n```")

    def draw(fig):
        ax = fig.add_subplot(111)
        ok = [r for r in rows if not math.isnan(r["val_bpc_mean"])]
        ys = range(len(ok))
        ax.barh(list(ys), [r["val_bpc_mean"] for r in ok],
                xerr=[0 if math.isnan(r["val_bpc_sd"]) else r["val_bpc_sd"] for r in ok],
                color=["tab:red" if r["baseline"] else "tab:blue" for r in ok])
        ax.set_yticks(list(ys))
        ax.set_yticklabels([r["label"] for r in ok], fontsize=7)
        ax.invert_yaxis()
        if ok:
            lo = min(r["val_bpc_mean"] for r in ok)
            hi = max(r["val_bpc_mean"] for r in ok)
            ax.set_xlim(max(0.0, lo - 0.1 * (hi - lo + 0.1)), hi + 0.1 * (hi - lo + 0.1))
        ax.set_xlabel("validation bits per character (lower is better; red: baseline)")
    rep.figure("bpc", "validation bits per character per variant", draw)


@BENCHMARKS.register(
    "modifications",
    paper="Do Transformer Modifications Transfer Across Implementations and Applications? "
          "(Narang et al., 2021)",
    equation="one budget, every variant: validation bits/char (mean ± sd over seeds), params, "
             "tokens/s",
    test="tests/test_bench.py::test_quality_suites_name_registry_components_and_skip_missing",
    commands=("quality",))
class ModificationsStudy(Study):
    """Every variant of a suite trained on the same budget: the modifications table."""

    commands = (Command("quality", "the modifications table: every variant of a suite on the "
                                   "same token budget (suites: ffn, norm, mixers, positions)",
                        QUALITY_OPTIONS, run_quality, quick_minutes=4.5),)
