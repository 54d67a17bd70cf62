"""The recall study (``tevo bench recall``): multi-query associative recall (Zoology: keys from
one half of the vocabulary, values from the other, queries at power-law gaps) and induction
heads, accuracy per causal mixer against model width and sequence length, the best of a small
learning-rate sweep per point (the H3 / Hyena / Based line of work). The tasks are the
registered ``mqar`` and ``induction`` of ``tevo.tasks``.
"""
from __future__ import annotations

from ..registry import BENCHMARKS, MIXERS, TASKS
from ._common import (Command, build_or_tiny, Deadline, Option, Study, count_params, fmt, new_report,
                      pick_device, sanitize, stderr)
from .complexity import reference_first
from .modifications import _with_heads


def task_spec(task: str, n: int, opts: dict) -> dict:
    """Zoology's MQAR scaling: n/16 key–value pairs (4 at n = 64); induction over 16 symbols."""
    if task == "mqar":
        return {"name": "mqar", "vocab": max(opts["mqar_vocab"], 2 * (n // 16) + 4),
                "seq_len": n, "num_kv_pairs": max(1, n // 16)}
    return {"name": "induction", "vocab": opts["induction_vocab"], "seq_len": n}


OPTIONS = (
    Option("mixers", "strs", None, "mixers (default: every causal mixer)"),
    Option("tasks", "strs", ["mqar", "induction"], "registered tasks to run"),
    Option("widths", "ints", [64, 128, 256], "model widths", quick=[64]),
    Option("lengths", "ints", [64, 128, 256], "sequence lengths", quick=[64]),
    Option("lrs", "floats", [3e-4, 1e-3, 3e-3], "learning-rate sweep (best one kept)",
           quick=[3e-3]),
    Option("steps", "int", 3000, "training steps per run", quick=100),
    Option("batch", "int", 64, "sequences per step", quick=16),
    Option("n_layers", "int", 2, "layers"),
    Option("heads", "int", 4, "heads (mixers that take them)"),
    Option("eval_examples", "int", 1024, "held-out examples for accuracy", quick=256),
    Option("mqar_vocab", "int", 256, "MQAR vocabulary (grown to fit the key–value pairs)",
           quick=64),
    Option("induction_vocab", "int", 16, "induction-heads vocabulary"),
)

_INTRO = """Accuracy of a {L}-layer causal decoder (learned positions) on the registered `mqar`
(Zoology: n/16 key–value pairs, keys from the lower half of the vocabulary, values from the
upper half, queries at power-law gaps) and `induction` tasks, per mixer, width and length; each
point is the best accuracy over the learning rates {lrs} after {steps} steps of {b} sequences.
Accuracy is measured on {ev} held-out examples (a separate seed). Chance: 1/(values) for MQAR,
1/vocabulary for induction."""


def run_recall(opts: dict) -> list:
    import torch

    from . import _train
    dev = pick_device(opts["device"])
    rep = new_report("recall", "recall", "Associative recall and induction heads", opts,
                     intro=_INTRO.format(L=opts["n_layers"], lrs=opts["lrs"], steps=opts["steps"],
                                         b=opts["batch"], ev=opts["eval_examples"]))
    rep.notes.append("Trained with tevo.bench's own minimal loop (bench/_train.py), not the full "
                     "Trainer.")
    if opts["quick"]:
        rep.notes.append("--quick trains far too briefly for these tasks to be learnt: the "
                         "numbers check the harness, not the mixers.")
    tasks = []
    for t in opts["tasks"]:
        if t in TASKS:
            tasks.append(t)
        else:
            rep.skip(t, "not a registered task")
    names = list(opts["mixers"] or MIXERS.names())
    for n in [n for n in names if n not in MIXERS]:
        rep.skip(n, "not a registered mixer")
    keep = []
    for n in [n for n in names if n in MIXERS]:
        s = MIXERS.get(n).supports
        if s is not None and not s.causal:
            rep.skip(n, "no causal form")
        else:
            keep.append(n)
    names = reference_first(keep)
    deadline = Deadline(opts["max_minutes"])
    res: dict = {t: {} for t in tasks}
    for n_len in sorted(opts["lengths"]):
        for d in sorted(opts["widths"]):
            for name in names:
                for task_name in tasks:
                    key = f"{name} {task_name} d={d} n={n_len}"
                    if deadline.expired():
                        rep.skip(key, deadline.reason())
                        continue
                    try:
                        task = TASKS.build(task_spec(task_name, n_len, opts))
                    except Exception as e:
                        rep.skip(key, f"task refused: {e}")
                        continue
                    ev = [task.sample(opts["eval_examples"], seed=10**6 + opts["seed"])]
                    runs = []
                    for lr in opts["lrs"]:
                        if deadline.expired():
                            break
                        cfg = {"arch": "gpt", "vocab_size": task.vocab_size, "d_model": d,
                               "n_layers": opts["n_layers"], "max_len": n_len,
                               "mixer": _with_heads(name, MIXERS, opts["heads"]),
                               "position": "learned", "dropout": 0.0}
                        torch.manual_seed(opts["seed"])
                        try:
                            model, cfg = build_or_tiny(cfg, (("mixer", "mixer"),))
                        except Exception as e:
                            rep.skip(key, f"refused by the config: {e}"[:300])
                            break
                        stderr(f"[recall] {key} lr={lr:g}")
                        try:
                            tr = _train.train(model, _train.TaskBatches(task, opts["batch"],
                                                                        seed=opts["seed"]),
                                              opts["steps"], lr, weight_decay=0.1, device=dev,
                                              deadline=deadline.end)
                            acc = _train.evaluate_accuracy(model, ev, device=dev)
                        except Exception as e:
                            rep.error(f"{key} lr={lr:g}", e)
                            continue
                        if _train.stopped(tr):
                            rep.skip(f"{key} lr={lr:g}", "study time limit reached during its "
                                                         "training (--max-minutes)")
                            continue
                        runs.append({"lr": lr, "accuracy": acc, "status": tr["status"],
                                     "wall_s": tr["wall_s"], "params": count_params(model),
                                     "mixer": cfg["mixer"]})
                    if runs:
                        best = max(runs, key=lambda r: r["accuracy"])
                        res[task_name].setdefault(name, {})[f"d={d} n={n_len}"] = {
                            "best_accuracy": best["accuracy"], "best_lr": best["lr"],
                            "runs": runs}
    rep.data = sanitize({"widths": opts["widths"], "lengths": opts["lengths"], "results": res})
    cols = [f"d={d} n={n}" for n in sorted(opts["lengths"]) for d in sorted(opts["widths"])]
    for task_name in tasks:
        rows = []
        for name in names:
            r = res[task_name].get(name)
            if not r:
                continue
            rows.append([name] + [f"{fmt(r[c]['best_accuracy'], 3)} (lr {r[c]['best_lr']:g})"
                                  if c in r else "—" for c in cols])
        rows.sort(key=lambda row: -max([float(c.split()[0]) for c in row[1:] if c != "—"]
                                       or [0.0]))
        rep.table(["mixer"] + cols, rows, heading=f"{task_name}: best accuracy",
                  note="Best accuracy over the learning-rate sweep (its learning rate in "
                       "brackets).")
        rep.figure(task_name, f"{task_name}: accuracy per mixer", _bars(res[task_name], cols))
    return [rep]


def _bars(res_t: dict, cols: list[str]):
    def draw(fig):
        ax = fig.add_subplot(111)
        names = list(res_t)
        w = 0.8 / max(1, len(cols))
        for j, c in enumerate(cols):
            ax.bar([i + j * w for i in range(len(names))],
                   [res_t[n].get(c, {}).get("best_accuracy", 0.0) for n in names], w, label=c)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    return draw


@BENCHMARKS.register(
    "recall",
    paper="Zoology (Arora et al., 2023); Hungry Hungry Hippos (H3, Fu et al., 2023); Hyena "
          "(Poli et al., 2023); Based (Arora et al., 2024)",
    equation="MQAR and induction-head accuracy per mixer, width and length (best of an lr sweep)",
    test="tests/test_bench.py::test_recall_runs_registered_tasks_and_keeps_best_lr",
    commands=("recall",))
class RecallStudy(Study):
    """Multi-query associative recall and induction heads across mixers."""

    commands = (Command("recall", "MQAR and induction-head accuracy per mixer against width "
                                  "and length, best of a learning-rate sweep", OPTIONS,
                        run_recall, quick_minutes=2.5),)
