"""The context-extension study (``tevo bench context``): can a model trained with a short
context answer from k contexts of that length read in parallel? After Parallel Context Windows
(Ratner et al., 2023) and NBCE (Su, 2023). A causal decoder is trained on the registered
``mqar`` task (multi-query associative recall) at length L; at test time k = 2, 4, 8 contexts,
each a block of key–value pairs as in training (together k times longer than any training
context, with distinct keys), are followed by one query key whose pair sits in a random one of
them. Accuracy of the greedy next token (the value) with ``pcw`` (windows sharing positions,
the query attending to all), ``nbce`` (min-entropy pooling, β = 0.25, the post's choice), and
truncation to the last window (the only context a model limited to L can keep), over seeds."""
from __future__ import annotations

import statistics

from ..registry import BENCHMARKS
from ._common import Command, Option, Study, fmt, new_report

OPTIONS = (
    Option("ks", "ints", [2, 4, 8], "numbers of contexts"),
    Option("length", "int", 64, "training length L", quick=32),
    Option("pairs", "int", 8, "key-value pairs per context (context = 2·pairs tokens)",
           quick=4),
    Option("vocab", "int", 256, "MQAR vocabulary", quick=128),
    Option("d_model", "int", 64, "width", quick=32),
    Option("n_layers", "int", 2, "layers"),
    Option("steps", "int", 3000, "training steps", quick=30),
    Option("batch", "int", 64, "sequences per step", quick=16),
    Option("lr", "float", 3e-3, "learning rate"),
    Option("examples", "int", 200, "test queries per k", quick=20),
    Option("seeds", "ints", [0, 1, 2], "training seeds", quick=[0]),
    Option("methods", "strs", ["truncate", "pcw", "nbce"], "methods compared"),
)


def _examples(k: int, pairs: int, vocab: int, n: int, gen):
    """n tests: k contexts of ``pairs`` (key, value) pairs, distinct keys over all of them, and
    the query key and its value."""
    import torch
    half = vocab // 2
    out = []
    for _ in range(n):
        keys = torch.randperm(half - 1, generator=gen)[:k * pairs] + 1
        vals = torch.randint(half, vocab, (k * pairs,), generator=gen)
        kv = torch.stack([keys, vals], 1).reshape(k, 2 * pairs)       # (k, 2·pairs)
        j = int(torch.randint(0, k * pairs, (1,), generator=gen))
        out.append(([kv[i] for i in range(k)], keys[j:j + 1], int(vals[j])))
    return out


def _predict(model, method, contexts, query) -> int:
    import torch

    from ..inference.nbce import nbce_generate
    from ..inference.parallel_context import pcw_generate
    if method == "pcw":
        return int(pcw_generate(model, contexts, query, 1, greedy=True)[0])
    if method == "nbce":
        return int(nbce_generate(model, contexts, query, 1, greedy=True, beta=0.25)[0])
    if method == "truncate":
        with torch.no_grad():
            return int(model(torch.cat([contexts[-1], query])[None]).logits[0, -1].argmax())
    raise ValueError(method)


def run_context(opts: dict) -> list:
    import torch

    from ..registry import TASKS
    from . import _train
    import tevo
    L, P = opts["length"], opts["pairs"]
    task = TASKS.build({"name": "mqar", "vocab": opts["vocab"], "seq_len": L,
                        "num_kv_pairs": P}, "task")
    rows = []
    for seed in opts["seeds"]:
        torch.manual_seed(seed)
        model = tevo.build_model({"arch": "gpt", "vocab_size": task.vocab_size,
                                  "d_model": opts["d_model"], "n_layers": opts["n_layers"],
                                  "max_len": L, "mixer": {"name": "softmax", "heads": 4},
                                  "position": "rope", "dropout": 0.0})
        _train.train(model, _train.TaskBatches(task, opts["batch"], seed=seed), opts["steps"],
                     opts["lr"], weight_decay=0.1)
        model.eval()
        gen = torch.Generator().manual_seed(1000 + seed)
        for k in [1] + list(opts["ks"]):
            ex = _examples(k, P, opts["vocab"], opts["examples"], gen)
            for method in opts["methods"]:
                hits = sum(_predict(model, method, c, q) == v for c, q, v in ex)
                rows.append({"seed": seed, "k": k, "method": method,
                             "accuracy": hits / len(ex)})
    rep = new_report("context", "context", "Context extension: k contexts of the training length",
                     opts, intro=__doc__.split("\n\n")[0].replace("\n", " "))
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: the --quick budget trains a tiny model for a "
                         "few steps; the accuracies are not evidence either way.")
    summ = {}
    for r in rows:
        summ.setdefault((r["method"], r["k"]), []).append(r["accuracy"])
    ks = [1] + list(opts["ks"])
    table = []
    for method in opts["methods"]:
        row = [method]
        for k in ks:
            a = summ[(method, k)]
            row.append(f"{fmt(statistics.mean(a), 3)}"
                       + (f" ± {fmt(statistics.stdev(a), 2)}" if len(a) > 1 else ""))
        table.append(row)
    rep.table(["method"] + [f"k = {k}" for k in ks], table,
              heading=f"accuracy, {len(opts['seeds'])} seed(s), {opts['examples']} queries per k "
                      f"(k = 1: the training setting)")
    rep.data = {"rows": rows}
    chance = 1.0 / (opts["vocab"] - opts["vocab"] // 2)
    for method in [m for m in opts["methods"] if m != "truncate"]:
        if "truncate" in opts["methods"]:
            better = all(statistics.mean(summ[(method, k)]) >
                         statistics.mean(summ[("truncate", k)]) for k in opts["ks"])
            rep.notes.append(f"{method} answers better than truncation to the last window at "
                             f"every k > 1: {'yes' if better else 'no'} (chance {chance:.3f}).")

    def draw(fig):
        ax = fig.add_subplot(111)
        for method in opts["methods"]:
            ax.plot(ks, [statistics.mean(summ[(method, k)]) for k in ks], marker="o",
                    label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of contexts k")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend()
    rep.figure("accuracy", "recall accuracy against the number of contexts", draw)
    return [rep]


@BENCHMARKS.register(
    "context", paper="Parallel Context Windows (Ratner et al., 2023); NBCE (Su, 2023)",
    equation="accuracy of the recalled value vs k contexts: pcw, nbce, truncation",
    test="tests/test_bench_context.py::test_bench_context_quick_writes_the_table",
    commands=("context",))
class ContextStudy(Study):
    """MQAR from k parallel contexts of the training length: pcw / nbce vs truncation."""

    commands = (Command("context", "MQAR from k contexts of the training length: pcw, nbce, "
                                   "truncation", OPTIONS, run_context, quick_minutes=2),)
