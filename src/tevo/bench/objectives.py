"""The pre-training objectives study (``tevo bench objectives``): the same encoder-sized model
pre-trained with ``mlm``, ``electra``, ``plm``, ``decbert``, ``span`` and ``clm`` on one equal
compute budget each (``pretrain_minutes`` of the process's CPU time, ``train.budget_clock=cpu``,
so a run is not charged for waiting on a shared machine), then fine-tuned with one recipe on the
genre task (which genre a 256-character Shakespeare passage comes from, held-out works), over
several seeds. A control row fine-tunes the same encoder from a random initialisation (no
pre-training) with the same recipe: pre-training is worth something only if it beats it.

Every run goes through tevo's one trainer: ``tevo train`` for pre-training (a time budget,
``train.max_minutes``), ``tevo finetune RUN task=genre`` for fine-tuning. The pre-training
corpus holds out the genre task's validation and test works, so the fine-tuned models are
tested on text they never saw. The claim checked: ELECTRA (Clark et al., 2020) reports that
replaced-token detection beats masked-LM pre-training at equal compute; it is judged by the
paired electra − mlm difference of test accuracy over seeds with its 95 % t-interval.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..registry import BENCHMARKS
from ._common import Command, Deadline, Option, Study, fmt, mean_sd, new_report, sanitize

OBJECTIVES = ("mlm", "electra", "plm", "decbert", "span", "clm")
ARCH = {"clm": "gpt", "span": "transformer"}          # the rest: the bert encoder
CONTROL = "none"                                       # no pre-training: the random-init row

OPTIONS = (
    Option("objectives", "strs", list(OBJECTIVES), "pre-training objectives to compare"),
    Option("seeds", "ints", [0, 1, 2], "seeds (pre-training and fine-tuning)", quick=[0]),
    Option("pretrain_minutes", "float", 10.0, "budget of each pre-training run (minutes of the "
           "clock --budget-clock names)", quick=0.5),
    Option("budget_clock", "str", "cpu", "what --pretrain-minutes counts: cpu = the process's "
           "CPU time (equal compute on a shared machine), wall = wall-clock time",
           choices=("cpu", "wall")),
    Option("control", "bool", True, "also fine-tune the same encoder from a random "
           "initialisation (the no-pre-training row)"),
    Option("finetune_steps", "int", 300, "fine-tuning steps (the same for every objective)",
           quick=40),
    Option("finetune_batch", "int", 16, "fine-tuning batch size", quick=16),
    Option("finetune_lr", "float", 3e-3, "fine-tuning peak learning rate (linear decay)",
           quick=5e-3),
    Option("finetune_norm", "str", "batchnorm", "normalisation of the pooled features before "
           "the classification head (text_classification's norm)", choices=("batchnorm", "none")),
    Option("d_model", "int", 128, "model width", quick=64),
    Option("n_layers", "int", 4, "layers (the encoder's; span's decoder has as many)",
           quick=2),
    Option("heads", "int", 4, "attention heads"),
    Option("seq_len", "int", 256, "pre-training sequence length (the genre passages are 256 "
                                  "bytes)", quick=128),
    Option("batch_size", "int", 16, "pre-training batch size", quick=16),
    Option("work_dir", "str", None, "folder for the runs (default: a temporary folder)"),
)


def pretrain_config(objective: str, seed: int, opts: dict, out_dir: str):
    """The RunConfig of one pre-training run."""
    from ..config import load_config
    from ..tasks.genre import TEST_WORKS, VAL_WORKS
    arch = ARCH.get(objective, "bert")
    model = {"arch": arch, "d_model": opts["d_model"], "n_layers": opts["n_layers"],
             "max_len": max(int(opts["seq_len"]), 256),
             "mixer": {"name": "softmax", "heads": opts["heads"]},
             "ffn": {"name": "mlp", "mult": 4, "activation": "gelu"}, "norm": "layernorm",
             "residual": "pre_ln", "position": "learned", "dropout": 0.0,
             "tie_embeddings": True}
    if objective == "decbert":
        model["causal"] = True
    threads = opts.get("threads") or "auto"
    cfg = {"name": f"{objective}-s{seed}", "model": model, "objective": objective,
           "data": {"corpus": {"name": "shakespeare", "val_works": list(VAL_WORKS),
                               "test_works": list(TEST_WORKS)},
                    "tokenizer": "bytes", "seq_len": int(opts["seq_len"])},
           "train": {"steps": 10 ** 7, "max_minutes": float(opts["pretrain_minutes"]),
                     "batch_size": int(opts["batch_size"]), "lr": 1e-3, "warmup": 20,
                     "budget_clock": opts.get("budget_clock") or "cpu",
                     "schedule": "linear", "min_lr_ratio": 0.1, "weight_decay": 0.01,
                     "grad_clip": 1.0, "precision": "fp32", "seed": int(seed),
                     "eval_every": 0, "final_eval_batches": 4, "eval_batches": 4,
                     "log_every": 5, "ckpt_every": 0, "sample_tokens": 0, "progress": False,
                     "plot": False, "threads": threads, "out_dir": out_dir,
                     "device": opts.get("device") or "auto"}}
    return load_config(cfg)


def finetune_overrides(seed: int, opts: dict) -> list[str]:
    """The one fine-tuning recipe."""
    return [f"objective.norm={opts.get('finetune_norm') or 'none'}",
            f"train.steps={int(opts['finetune_steps'])}",
            f"train.batch_size={int(opts['finetune_batch'])}",
            f"train.lr={float(opts['finetune_lr'])}",
            f"train.warmup={max(1, int(opts['finetune_steps']) // 10)}",
            f"train.seed={int(seed)}", "train.eval_every=0", "train.final_eval_batches=8",
            "train.progress=false", "train.plot=false", "train.precision=fp32",
            f"train.threads={opts.get('threads') or 'auto'}"]


def _reuse_data(first: Path, run_dir: Path) -> None:
    """Seed a run folder with the tokenized corpus of the objective's first seed (the same
    tokenizer and specials: the trainer checks the cache key and re-tokenizes on a mismatch)."""
    import shutil
    if first == run_dir or not (first / "data" / "meta.json").exists() or run_dir.exists():
        return
    shutil.copytree(first / "data", run_dir / "data")


def _summary(folder: Path, need: str = "steps"):
    """A finished run's summary (one that has ``need``), or None; an unfinished run's folder (a
    study interrupted in it) is removed so that the run starts again in the same place."""
    import json
    import shutil

    from ..train.trainer import SUMMARY
    if (folder / SUMMARY).exists():
        summary = json.loads((folder / SUMMARY).read_text())
        if summary.get(need) is not None:
            return summary
    if folder.exists():
        shutil.rmtree(folder)
    return None


def run_objectives(opts: dict) -> list:
    from ..train.finetune import finetune
    from ..train.log import read_metrics
    from ..train.sweep import paired_difference
    from ..train.trainer import train
    rep = new_report("objectives", "objectives", "Pre-training objectives judged by a "
                     "downstream task (genre of a Shakespeare passage)", opts, intro=_INTRO)
    deadline = Deadline(opts["max_minutes"])
    work = Path(opts["work_dir"] or tempfile.mkdtemp(prefix="tevo-objectives-"))
    objs = list(opts["objectives"])
    control = bool(opts["control"]) and any(ARCH.get(o, "bert") == "bert" and o != "decbert"
                                            for o in objs)
    if opts["quick"]:
        rep.text("**Smoke test, not a result**: the --quick budget pre-trains and fine-tunes "
                 "for a few seconds.")
    clock = "CPU" if opts["budget_clock"] == "cpu" else "wall-clock"
    n_runs = len(objs) * len(opts["seeds"])
    how = ("the process's CPU time, so waiting for a shared core is not charged"
           if clock == "CPU" else "wall time")
    rep.text(f"**Budget.** Each pre-training run: {fmt(float(opts['pretrain_minutes']))} "
             f"{clock} minutes ({how}), "
             f"batch {opts['batch_size']} × {opts['seq_len']} bytes, d_model {opts['d_model']}, "
             f"{opts['n_layers']} layers. Each fine-tuning run: {opts['finetune_steps']} steps "
             f"× {opts['finetune_batch']} passages of 256 bytes, peak lr "
             f"{fmt(float(opts['finetune_lr']))} (10 % warm-up, linear decay), pooled features "
             f"normalised by {opts['finetune_norm']}, all weights trained. {n_runs} "
             f"pre-training + fine-tuning runs"
             + (f" and {len(opts['seeds'])} control fine-tunes" if control else "")
             + f" (seeds {', '.join(map(str, opts['seeds']))}).")
    rows, curves, chance = [], {}, None
    # the runs that decide the claim first (mlm, electra, the control; every seed), then the
    # rest: a study cut short by --max-minutes still has all the seeds of ELECTRA vs MLM
    first = [o for o in objs if o in ("mlm", "electra")] + ([CONTROL] if control else [])
    rest = [o for o in objs if o not in first]
    items = [(o, s) for group in (first, rest) for s in opts["seeds"] for o in group]
    for obj, seed in items:
        item = f"{obj} seed {seed}"
        if deadline.expired():
            rep.skip(item, deadline.reason())
            continue
        t0 = time.perf_counter()
        try:
            if obj == CONTROL:     # the same bert, tokenizer and recipe; random weights
                src = next(work / f"{o}-s{seed}" for o in objs
                           if ARCH.get(o, "bert") == "bert" and o != "decbert")
                run_dir = work / f"{CONTROL}-s{seed}"
                pre, ft = {}, _summary(run_dir, "test_accuracy")
                if ft is None:
                    ft = finetune(src, "genre", finetune_overrides(seed, opts)
                                  + [f"train.out_dir={run_dir}"], pretrained=False)
            else:
                run_dir = work / f"{obj}-s{seed}"
                pre = _summary(run_dir)
                if pre is None:
                    _reuse_data(work / f"{obj}-s{opts['seeds'][0]}", run_dir)
                    pre = train(pretrain_config(obj, seed, opts, str(run_dir)),
                                run_dir=run_dir)
                ft = _summary(run_dir / "finetune-genre", "test_accuracy")
                if ft is None:
                    ft = finetune(run_dir, "genre", finetune_overrides(seed, opts))
        except Exception as e:                          # one failing run never stops the rest
            rep.error(item, e)
            continue
        chance = ft.get("chance", chance)
        if obj != CONTROL:
            hist = [(r["elapsed"], r["loss"]) for r in read_metrics(run_dir)
                    if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
            curves.setdefault(obj, []).append(hist)
        rows.append({"objective": obj, "seed": seed,
                     "arch": ARCH.get(obj, "bert"),
                     "pretrain_steps": pre.get("steps", 0),
                     "pretrain_seconds": pre.get("train_seconds"),
                     "pretrain_tokens": pre.get("tokens"),
                     "params": pre.get("params", ft.get("params")),
                     "final_pretrain_loss": pre.get("final_train_loss"),
                     "finetune_final_train_loss": ft.get("final_train_loss"),
                     "val_accuracy": ft.get("val_accuracy"),
                     "test_accuracy": ft.get("test_accuracy"),
                     "wall_s": time.perf_counter() - t0})
    acc = {}                                    # objective -> {seed: test accuracy}
    for r in rows:
        if r["test_accuracy"] is not None:
            acc.setdefault(r["objective"], {})[r["seed"]] = r["test_accuracy"]

    def paired(a: str, b: str):
        seeds = sorted(set(acc.get(a, {})) & set(acc.get(b, {})))
        if not seeds:
            return None
        return paired_difference([acc[a][s] for s in seeds], [acc[b][s] for s in seeds])

    def interval(d) -> str:
        if d is None:
            return "—"
        return (f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                + ("" if d["measurable"] else " (no measurable difference)"))

    diffs = {"electra_minus_mlm": paired("electra", "mlm")}
    table = []
    means = {}
    for obj in objs + ([CONTROL] if control else []):
        rs = [r for r in rows if r["objective"] == obj]
        if not rs:
            continue
        a = [r["test_accuracy"] for r in rs if r["test_accuracy"] is not None]
        m, sd = mean_sd(a) if a else (float("nan"), float("nan"))
        means[obj] = (m, sd, len(a))
        vm, vsd = mean_sd([r["val_accuracy"] for r in rs if r["val_accuracy"] is not None]
                          or [float("nan")])
        sm, _ = mean_sd([r["pretrain_steps"] for r in rs])
        lm, lsd = mean_sd([r["final_pretrain_loss"] for r in rs
                           if r["final_pretrain_loss"] is not None] or [float("nan")])
        d = paired(obj, CONTROL) if control and obj != CONTROL else None
        diffs[f"{obj}_minus_{CONTROL}"] = d
        model = ("bert, random init" if obj == CONTROL else
                 rs[0]["arch"] + (" (causal)" if obj == "decbert" else ""))
        table.append([obj if obj != CONTROL else "none (no pre-training)", model,
                      f"{rs[0]['params']:,}" if rs[0]["params"] else "—",
                      fmt(sm, 4), "—" if obj == CONTROL else f"{fmt(lm)} ± {fmt(lsd, 2)}",
                      f"{fmt(vm)} ± {fmt(vsd, 2)}", f"**{fmt(m)} ± {fmt(sd, 2)}**",
                      "—" if obj == CONTROL else interval(d), len(a)])
    rep.data = sanitize({"rows": rows, "chance": chance, "work_dir": str(work),
                         "paired_differences": diffs})
    ch = chance or {}
    rep.table(["objective", "model", "parameters", "pre-training steps (mean)",
               "final pre-training loss (own objective)", "genre val accuracy (8 batches)",
               "genre test accuracy (held-out works)",
               "Δ test accuracy vs no pre-training [95 % CI]", "seeds"], table,
              heading="Fine-tuned genre accuracy (mean ± sd over seeds)",
              note=f"Chance (majority class of the test works, always "
                   f"'{ch.get('majority_class')}'): {fmt(ch.get('majority_accuracy'))}; always "
                   f"answering the training majority '{ch.get('train_majority_class')}': "
                   f"{fmt(ch.get('train_majority_accuracy'))}; {ch.get('examples')} test "
                   f"passages. Δ is the paired difference with the no-pre-training control "
                   f"over the seeds both ran (the same fine-tuning seed), with its 95 % "
                   f"t-interval. Pre-training losses are each objective's own (MLM CE at "
                   f"masked positions, the generator's MLM CE for electra, CE of the predicted "
                   f"tokens for plm, CE per target token for span, next-token CE for clm): not "
                   f"comparable across rows.")

    def draw(fig):
        ax = fig.add_subplot(111)
        for obj, hs in curves.items():
            for i, h in enumerate(hs):
                if h:
                    ax.plot([t for t, _ in h], [v for _, v in h], alpha=0.8,
                            label=obj if i == 0 else None,
                            color=f"C{list(curves).index(obj)}")
        ax.set_xlabel(f"pre-training {clock} time (s)")
        ax.set_ylabel("training loss of the run's own objective (nats)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    rep.figure("loss", "pre-training loss curves (every seed; each objective's own loss)", draw)
    d = diffs["electra_minus_mlm"]
    if d is not None and "electra" in means and "mlm" in means:
        rep.notes.append(electra_sentence(d, means["electra"], means["mlm"]))
    if control and CONTROL in means:
        rep.notes.append(control_sentence(means, diffs, chance))
    return [rep]


def electra_sentence(d: dict, electra: tuple, mlm: tuple) -> str:
    """The one sentence on ELECTRA's claim, from the paired electra − mlm difference."""
    (e, esd, _), (b, bsd, _) = electra, mlm
    head = (f"ELECTRA's claim (replaced-token detection beats MLM at equal compute): electra "
            f"{fmt(e)} ± {fmt(esd, 2)} vs mlm {fmt(b)} ± {fmt(bsd, 2)} test accuracy, paired "
            f"difference {d['mean']:+.3f} with 95 % interval [{d['lo']:+.3f}, {d['hi']:+.3f}] "
            f"over {d['n']} seed{'s' if d['n'] != 1 else ''}: ")
    if not d["measurable"]:
        return head + ("no measurable difference, so this run neither reproduces nor refutes "
                       "the claim.")
    if d["lo"] > 0:
        return head + "electra is measurably better, so this run reproduces the claim."
    return head + "electra is measurably worse, so this run does not reproduce the claim."


def control_sentence(means: dict, diffs: dict, chance) -> str:
    """Which objectives measurably beat fine-tuning from a random initialisation."""
    better = [o for o in means if o != CONTROL and (diffs.get(f"{o}_minus_{CONTROL}") or {})
              .get("measurable") and diffs[f"{o}_minus_{CONTROL}"]["lo"] > 0]
    worse = [o for o in means if o != CONTROL and (diffs.get(f"{o}_minus_{CONTROL}") or {})
             .get("measurable") and diffs[f"{o}_minus_{CONTROL}"]["hi"] < 0]
    m, sd, _ = means[CONTROL]
    ch = (chance or {}).get("majority_accuracy")
    return (f"No pre-training (the same encoder from random weights, the same fine-tuning): "
            f"{fmt(m)} ± {fmt(sd, 2)} test accuracy (chance {fmt(ch)}). Measurably better than "
            f"it: {', '.join(better) or 'none'}; measurably worse: {', '.join(worse) or 'none'}; "
            f"the rest show no measurable difference.")


_INTRO = """Each objective pre-trains the same encoder-sized model (pre-LN, learned positions,
softmax attention; `bert` for mlm, electra, plm and decbert (causal masks), `gpt` for clm, the
encoder–decoder `transformer` for span, whose encoder is then fine-tuned) for the same compute
budget on the Shakespeare corpus with the genre task's validation and test works held out.
Equal compute is equal CPU time of one thread on the same machine (`train.budget_clock=cpu`):
ELECTRA's generator (1/4 width) and XLNet's query stream are paid for out of the same budget,
and a run is not charged for the time it waits while other jobs hold the cores. Each run is
then fine-tuned with one recipe (`tevo finetune RUN task=genre`: a linear head on the mean
hidden state of a bidirectional encoder or the last token of a causal model; all weights
trained) and scored on the held-out works. The control row `none` fine-tunes the mlm run's
encoder from a random initialisation with the same recipe and seed (no pre-training)."""


@BENCHMARKS.register(
    "objectives", paper="ELECTRA (Clark et al., 2020), §3.3: pre-training objectives compared at "
                        "equal compute by downstream accuracy",
    equation="pre-train (equal CPU time) → fine-tune on genre → test accuracy, mean ± sd over "
             "seeds; paired electra − mlm difference with its 95 % t-interval",
    test="tests/test_genre.py::test_bench_objectives_runs_and_reports",
    commands=("objectives",))
class ObjectivesStudy(Study):
    """mlm / electra / plm / decbert / span / clm pre-training judged by genre accuracy."""

    commands = (Command("objectives", "pre-training objectives at equal compute, judged by "
                        "fine-tuned genre accuracy", OPTIONS, run_objectives,
                        quick_minutes=15),)
