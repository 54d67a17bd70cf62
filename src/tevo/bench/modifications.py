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
import time
from dataclasses import dataclass, field

from ..registry import BENCHMARKS, FFNS, MIXERS, NORMS, POSITIONS, RESIDUALS, registry
from ._common import (Command, build_or_tiny, Deadline, Option, Study, count_params, fmt, mean_sd, new_report,
                      pick_device, sanitize, stderr)

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


def _merge(base: dict, over: dict) -> dict:
    cfg = copy.deepcopy(base)
    cfg.update(copy.deepcopy(over))
    return cfg


def build_variant(base: dict, v: Variant, spec_field: str | None = None):
    """Build the variant's model; a refused option falls back to the registry's tiny options
    of the varied component (returns model, config used)."""
    cfg = _merge(base, v.overrides)
    fields = tuple((f, f) for f in ("mixer", "position", "ffn")
                   if isinstance(v.overrides.get(f), dict) and "name" in v.overrides[f])
    return build_or_tiny(cfg, fields)


def train_and_eval(model, opts: dict, seed: int, device, deadline: float | None) -> dict:
    """Train on the corpus for the token budget, then validation bits per character."""
    from . import _train
    data = _train.corpus_bytes("shakespeare")
    steps = max(1, opts["budget_tokens"] // (opts["batch"] * opts["seq_len"]))
    batches = _train.LMBatches(data["train"], opts["seq_len"], opts["batch"], seed=seed)
    r = _train.train(model, batches, steps, opts["lr"], precision=opts["precision"],
                     device=device, deadline=deadline)
    ev = _train.eval_batches(data["val"], opts["seq_len"], opts["eval_windows"], opts["batch"])
    t0 = time.perf_counter()
    r["val_bpc"] = _train.bits(_train.evaluate_loss(model, ev, opts["precision"], device))
    r["eval_s"] = time.perf_counter() - t0
    return r


QUALITY_OPTIONS = (
    Option("suite", "strs", list(SUITES), f"suites to run: {', '.join(SUITES)} (default: all), "
                                          f"or vision (image models on the digits)"),
    Option("variants", "strs", None, "only these variant labels"),
    Option("seeds", "int", 3, "seeds per variant", quick=1),
    Option("budget_tokens", "int", 5_000_000, "training tokens per run", quick=160_000),
    Option("d_model", "int", 256, "width", quick=64),
    Option("n_layers", "int", 4, "layers", quick=2),
    Option("heads", "int", 4, "attention heads"),
    Option("seq_len", "int", 256, "training length", quick=64),
    Option("batch", "int", 32, "sequences per step", quick=16),
    Option("lr", "float", 1e-3, "peak learning rate (AdamW, warm-up + cosine)", quick=3e-3),
    Option("eval_windows", "int", 256, "validation windows", quick=64),
    Option("precision", "str", "fp32", "fp32 | bf16 (autocast)", choices=("fp32", "bf16")),
)

_INTRO = """After *Do Transformer Modifications Transfer Across Implementations and Applications?*
(Narang et al., 2021): each variant changes one component of the baseline (a GPT-2-style
decoder: pre-LN LayerNorm, GELU MLP, learned positions, softmax attention; byte vocabulary) and
is trained by the same loop (AdamW, warm-up + cosine, clipping 1.0) on the same token budget of
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


def _run_suite(suite: str, opts: dict, dev, suite_deadline: float | None):
    rep = new_report(f"quality-{suite}", "modifications", f"Modifications table: {suite}", opts,
                     intro=_INTRO.format(d=opts["d_model"], L=opts["n_layers"], h=opts["heads"],
                                         n=opts["seq_len"], b=opts["batch"],
                                         tokens=opts["budget_tokens"], lr=opts["lr"],
                                         seeds=opts["seeds"]))
    rep.notes.append("Trained with tevo.bench's own minimal loop (bench/_train.py: same code for "
                     "every variant, no checkpoints), not the full Trainer.")
    variants, left = suite_variants(suite, opts)
    for name, why in left:
        rep.skip(name, why)
    if opts["variants"]:
        variants = [v for v in variants if v.label in set(opts["variants"])]
    base = base_model(opts)
    rows = []
    for v in variants:
        miss = v.missing()
        if miss:
            rep.skip(v.label, "not registered: " + ", ".join(miss))
            continue
        seeds_res = []
        cfg_used = None
        for seed in range(opts["seed"], opts["seed"] + opts["seeds"]):
            if suite_deadline is not None and time.monotonic() > suite_deadline:
                rep.skip(f"{v.label} (seed {seed})",
                         f"study time limit reached ({opts['max_minutes']:g} min over "
                         f"the suites, --max-minutes)")
                continue
            import torch
            torch.manual_seed(seed)
            try:
                model, cfg_used = build_variant(base, v)
            except Exception as e:
                rep.skip(v.label, f"refused by the config: {type(e).__name__}: {e}"[:300])
                break
            stderr(f"[quality {suite}] {v.label} seed {seed}")
            try:
                r = train_and_eval(model, opts, seed, dev, suite_deadline)
            except Exception as e:
                rep.error(f"{v.label} (seed {seed})", e)
                continue
            if r["status"].startswith("stopped"):
                rep.skip(f"{v.label} (seed {seed})", "study time limit reached during its "
                                                     "training (--max-minutes)")
                continue
            r["params"] = count_params(model)
            r["seed"] = seed
            seeds_res.append(r)
        if not seeds_res:
            continue
        m, sd = mean_sd([r["val_bpc"] for r in seeds_res if r["status"] == "ok"])
        rows.append({"label": v.label, "baseline": v.baseline, "note": v.note,
                     "config": {k: cfg_used[k] for k in ("mixer", "ffn", "norm", "residual",
                                                         "position", "init") if k in cfg_used},
                     "val_bpc_mean": m, "val_bpc_sd": sd, "params": seeds_res[0]["params"],
                     "tokens_per_s": sum(r["tokens_per_s"] for r in seeds_res) / len(seeds_res),
                     "wall_s": sum(r["wall_s"] for r in seeds_res) / len(seeds_res),
                     "status": "; ".join(sorted({r["status"] for r in seeds_res})),
                     "runs": seeds_res})
    rep.data = sanitize({"suite": suite, "base_model": base, "rows": rows})
    _table(rep, rows)
    return rep


def _table(rep, rows: list[dict]) -> None:
    import math
    key = (lambda r: (math.isnan(r["val_bpc_mean"]), r["val_bpc_mean"]))
    rows = sorted(rows, key=key)
    base = next((r for r in rows if r["baseline"]), None)
    table = []
    for i, r in enumerate(rows, 1):
        sd = r["val_bpc_sd"]
        bpc = fmt(r["val_bpc_mean"], 4) + ("" if math.isnan(sd) else f" ± {sd:.4f}")
        delta = "—"
        if base is not None and not r["baseline"]:
            delta = f"{r['val_bpc_mean'] - base['val_bpc_mean']:+.4f}"
        label = f"**{r['label']}** (baseline)" if r["baseline"] else r["label"]
        table.append([i, label, bpc, delta, fmt(r["params"]), fmt(r["tokens_per_s"]),
                      f"{r['wall_s']:.1f}", r["status"], r["note"]])
    rep.table(["rank", "variant", "val bits/char", "Δ vs baseline", "params", "tokens/s",
               "train wall s", "status", "note"], table, heading="Results (sorted)",
              note="Mean ± sd over seeds (sd shown with 2+ seeds). tokens/s and wall time are "
                   "training only, on a machine shared with other jobs (see load average).")

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
