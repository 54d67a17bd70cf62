"""The pre-training objectives study (``tevo bench objectives``): the same encoder-sized model
pre-trained with ``mlm``, ``electra``, ``plm``, ``decbert``, ``span`` and ``clm`` on one equal
wall-clock budget each, then fine-tuned with one recipe on the genre task (which genre a
256-character Shakespeare passage comes from, held-out works), over several seeds.

Every run goes through tevo's one trainer: ``tevo train`` for pre-training (a time budget,
``train.max_minutes``), ``tevo finetune RUN task=genre`` for fine-tuning. The pre-training
corpus holds out the genre task's validation and test works, so the fine-tuned models are
tested on text they never saw. The claim checked: ELECTRA (Clark et al., 2020) reports that
replaced-token detection beats masked-LM pre-training at equal compute.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from ..registry import BENCHMARKS
from ._common import Command, Deadline, Option, Study, fmt, mean_sd, new_report, sanitize

OBJECTIVES = ("mlm", "electra", "plm", "decbert", "span", "clm")
ARCH = {"clm": "gpt", "span": "transformer"}          # the rest: the bert encoder

OPTIONS = (
    Option("objectives", "strs", list(OBJECTIVES), "pre-training objectives to compare"),
    Option("seeds", "ints", [0, 1, 2], "seeds (pre-training and fine-tuning)", quick=[0]),
    Option("pretrain_minutes", "float", 10.0, "wall-clock budget of each pre-training run",
           quick=0.5),
    Option("finetune_steps", "int", 300, "fine-tuning steps (the same for every objective)",
           quick=40),
    Option("finetune_batch", "int", 32, "fine-tuning batch size", quick=16),
    Option("finetune_lr", "float", 3e-3, "fine-tuning peak learning rate (linear decay)",
           quick=5e-3),
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
                     "schedule": "linear", "min_lr_ratio": 0.1, "weight_decay": 0.01,
                     "grad_clip": 1.0, "precision": "fp32", "seed": int(seed),
                     "eval_every": 0, "final_eval_batches": 4, "eval_batches": 4,
                     "log_every": 5, "ckpt_every": 0, "sample_tokens": 0, "progress": False,
                     "plot": False, "threads": threads, "out_dir": out_dir,
                     "device": opts.get("device") or "auto"}}
    return load_config(cfg)


def finetune_overrides(seed: int, opts: dict) -> list[str]:
    """The one fine-tuning recipe."""
    return [f"train.steps={int(opts['finetune_steps'])}",
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


def run_objectives(opts: dict) -> list:
    from ..train.finetune import finetune
    from ..train.log import read_metrics
    from ..train.trainer import train
    rep = new_report("objectives", "objectives", "Pre-training objectives judged by a "
                     "downstream task (genre of a Shakespeare passage)", opts, intro=_INTRO)
    deadline = Deadline(opts["max_minutes"])
    work = Path(opts["work_dir"] or tempfile.mkdtemp(prefix="tevo-objectives-"))
    rows, curves, chance = [], {}, None
    for seed in opts["seeds"]:
        for obj in opts["objectives"]:
            item = f"{obj} seed {seed}"
            if deadline.expired():
                rep.skip(item, deadline.reason())
                continue
            run_dir = work / f"{obj}-s{seed}"
            t0 = time.perf_counter()
            _reuse_data(work / f"{obj}-s{opts['seeds'][0]}", run_dir)
            try:
                pre = train(pretrain_config(obj, seed, opts, str(run_dir)), run_dir=run_dir)
                ft = finetune(run_dir, "genre", finetune_overrides(seed, opts))
            except Exception as e:                      # one failing run never stops the rest
                rep.error(item, e)
                continue
            chance = ft.get("chance", chance)
            hist = [(r["elapsed"], r["loss"]) for r in read_metrics(run_dir)
                    if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
            curves.setdefault(obj, []).append(hist)
            rows.append({"objective": obj, "seed": seed, "arch": ARCH.get(obj, "bert"),
                         "pretrain_steps": pre.get("steps"),
                         "pretrain_seconds": pre.get("train_seconds"),
                         "pretrain_tokens": pre.get("tokens"),
                         "params": pre.get("params"),
                         "final_pretrain_loss": pre.get("final_train_loss"),
                         "val_accuracy": ft.get("val_accuracy"),
                         "test_accuracy": ft.get("test_accuracy"),
                         "wall_s": time.perf_counter() - t0})
    rep.data = sanitize({"rows": rows, "chance": chance, "work_dir": str(work)})
    table = []
    means = {}
    for obj in opts["objectives"]:
        rs = [r for r in rows if r["objective"] == obj]
        if not rs:
            continue
        acc = [r["test_accuracy"] for r in rs if r["test_accuracy"] is not None]
        m, sd = mean_sd(acc) if acc else (float("nan"), float("nan"))
        means[obj] = (m, sd, len(acc))
        vm, vsd = mean_sd([r["val_accuracy"] for r in rs if r["val_accuracy"] is not None]
                          or [float("nan")])
        sm, _ = mean_sd([r["pretrain_steps"] for r in rs])
        lm, lsd = mean_sd([r["final_pretrain_loss"] for r in rs
                           if r["final_pretrain_loss"] is not None] or [float("nan")])
        table.append([obj, rs[0]["arch"] + (" (causal)" if obj == "decbert" else ""),
                      f"{rs[0]['params']:,}", fmt(sm, 4), f"{fmt(lm)} ± {fmt(lsd, 2)}",
                      f"{fmt(vm)} ± {fmt(vsd, 2)}", f"**{fmt(m)} ± {fmt(sd, 2)}**", len(acc)])
    ch = chance or {}
    rep.table(["objective", "model", "parameters", "pre-training steps (mean)",
               "final pre-training loss (own objective)", "genre val accuracy (8 batches)",
               "genre test accuracy (held-out works)", "seeds"], table,
              heading="Fine-tuned genre accuracy (mean ± sd over seeds)",
              note=f"Chance (majority class of the test works, always "
                   f"'{ch.get('majority_class')}'): {fmt(ch.get('majority_accuracy'))}; always "
                   f"answering the training majority '{ch.get('train_majority_class')}': "
                   f"{fmt(ch.get('train_majority_accuracy'))}; {ch.get('examples')} test "
                   f"passages. Pre-training losses are each objective's own (MLM CE at masked "
                   f"positions, the generator's MLM CE for electra, CE of the predicted tokens "
                   f"for plm, CE per target token for span, next-token CE for clm): not "
                   f"comparable across rows.")

    def draw(fig):
        ax = fig.add_subplot(111)
        for obj, hs in curves.items():
            for i, h in enumerate(hs):
                if h:
                    ax.plot([t for t, _ in h], [v for _, v in h], alpha=0.8,
                            label=obj if i == 0 else None,
                            color=f"C{list(curves).index(obj)}")
        ax.set_xlabel("pre-training time (s)")
        ax.set_ylabel("training loss of the run's own objective (nats)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    rep.figure("loss", "pre-training loss curves (every seed; each objective's own loss)", draw)
    if "electra" in means and "mlm" in means:
        (e, esd, _), (b, bsd, _) = means["electra"], means["mlm"]
        if math.isfinite(e) and math.isfinite(b):
            verdict = "agrees" if e > b else "does not agree" if e < b else \
                "can neither confirm nor refute it (equal accuracy)"
            sep = abs(e - b) > (esd + bsd) if math.isfinite(esd + bsd) else False
            rep.notes.append(
                f"ELECTRA's claim (replaced-token detection beats MLM at equal compute): this "
                f"run {verdict} — electra {fmt(e)} ± {fmt(esd, 2)} vs mlm {fmt(b)} ± "
                f"{fmt(bsd, 2)} test accuracy"
                + ("" if sep else "; the difference is within one standard deviation of "
                                  "the seeds, so it is not a clear result") + ".")
    if opts["quick"] or float(opts["pretrain_minutes"]) < 10:
        rep.notes.append(f"Smoke budget: {fmt(opts['pretrain_minutes'])} min of pre-training "
                         f"and {opts['finetune_steps']} fine-tuning steps per run on a shared "
                         f"CPU; the models are far from converged, so the ranking says little "
                         f"about the objectives at a real budget.")
    return [rep]


_INTRO = """Each objective pre-trains the same encoder-sized model (pre-LN, learned positions,
softmax attention; `bert` for mlm, electra, plm and decbert (causal masks), `gpt` for clm, the
encoder–decoder `transformer` for span, whose encoder is then fine-tuned) for the same
wall-clock budget on the Shakespeare corpus with the genre task's validation and test works held
out. Equal compute is equal time on the same machine: ELECTRA's generator (1/4 width) and XLNet's
query stream are paid for out of the same budget. Each run is then fine-tuned with one recipe
(`tevo finetune RUN task=genre`: a linear head on the mean hidden state of a bidirectional
encoder or the last token of a causal model; all weights trained) and scored on the held-out
works."""


@BENCHMARKS.register(
    "objectives", paper="ELECTRA (Clark et al., 2020), §3.3: pre-training objectives compared at "
                        "equal compute by downstream accuracy",
    equation="pre-train (equal time) → fine-tune on genre → test accuracy, mean ± sd over seeds",
    test="tests/test_genre.py::test_bench_objectives_runs_and_reports",
    commands=("objectives",))
class ObjectivesStudy(Study):
    """mlm / electra / plm / decbert / span / clm pre-training judged by genre accuracy."""

    commands = (Command("objectives", "pre-training objectives at equal compute, judged by "
                        "fine-tuned genre accuracy", OPTIONS, run_objectives,
                        quick_minutes=15),)
