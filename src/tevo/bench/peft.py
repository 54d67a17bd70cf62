"""The PEFT study (``tevo bench peft``): full fine-tuning, LoRA (the ``peft`` library), PaFi, HiWi
and MEFT at an equal number of steps, after *Parameter-Efficient Fine-Tuning without
Introducing New Latency* (Liao et al., 2023) and *Make Pre-trained Model Reversible* (Liao et
al., 2023). A base run is trained with the Trainer on the Shakespeare corpus (byte tokenizer),
then fine-tuned on another real domain (the ``stdlib`` corpus of Python source) by each method
with ``tevo finetune --peft`` (the same Trainer; full fine-tuning trains every weight), over
seeds. Reported: held-out bits per character on stdlib, trainable parameters, the activation
bytes kept for backward in one training step (saved-tensor hooks: the activation memory that
MEFT's reversible backward cuts), and the forward latency of the fine-tuned model after merging
against the base model's (median of repeats)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..registry import BENCHMARKS
from ._common import Command, Option, Study, fmt, new_report

METHODS = ("full", "lora", "pafi", "hiwi", "meft")
OPTIONS = (
    Option("methods", "strs", list(METHODS), "fine-tuning methods (full = every weight)"),
    Option("d_model", "int", 128, "width of the base model", quick=32),
    Option("n_layers", "int", 4, "layers", quick=2),
    Option("seq_len", "int", 128, "context length", quick=32),
    Option("base_steps", "int", 1000, "steps of the base run on Shakespeare", quick=20),
    Option("steps", "int", 300, "fine-tuning steps of every method", quick=10),
    Option("batch_size", "int", 16, "sequences per step", quick=4),
    Option("seeds", "ints", [0, 1, 2], "seeds per method", quick=[0]),
)
PEFT_OPTIONS = {"lora": {"rank": 8}, "pafi": {"sparsity": 0.005}, "hiwi": {"rank": 8},
                "meft": {"rank": 8, "lam": 0.1}}


def _common(opts) -> list[str]:
    n = opts["seq_len"]
    return [f"data.seq_len={n}", f"model.max_len={n}", f"train.batch_size={opts['batch_size']}",
            "train.max_minutes=null", "train.eval_every=0", "train.sample_tokens=0",
            "train.plot=false", "train.precision=fp32", "train.progress=false",
            "model.dropout=0.0", "train.final_eval_batches=" + ("4" if opts["quick"] else "50")]


def _activation_bytes(model, batch) -> int:
    import torch
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch).logits.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return total[0]


def _latency(model, batch, repeats: int = 15) -> float:
    import torch
    model.eval()
    with torch.no_grad():
        for _ in range(3):                     # warm-up
            model(batch)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(batch)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_peft(opts: dict) -> list:
    import torch

    from ..config import load_config
    from ..train.peft_finetune import PeftTrainer, load_peft_model, peft_config
    from ..train.run import load_run
    from ..train.trainer import Trainer
    out = Path(opts["out"]) / "peft_runs"
    base_dir = out / "base"
    common = _common(opts)
    cfg = load_config("default", [*common, f"model.d_model={opts['d_model']}",
                                  f"model.n_layers={opts['n_layers']}",
                                  f"train.steps={opts['base_steps']}",
                                  f"train.warmup={max(1, opts['base_steps'] // 20)}",
                                  f"train.out_dir={base_dir}", f"train.seed={opts['seed']}"])
    Trainer(cfg).fit()
    base = load_run(base_dir)
    batch = torch.randint(0, 256, (opts["batch_size"], opts["seq_len"]),
                          generator=torch.Generator().manual_seed(0))
    rows = []
    for method in opts["methods"]:
        for seed in opts["seeds"]:
            run_dir = out / f"{method}-{seed}"
            ft = [*common, "data.corpus=stdlib", f"train.steps={opts['steps']}",
                  f"train.warmup={max(1, opts['steps'] // 10)}", f"train.seed={seed}",
                  f"train.out_dir={run_dir}"]
            name = "pafi" if method == "full" else method   # full: the same config, all trained
            fc, m, weights = peft_config(base_dir, {"name": name, **PEFT_OPTIONS.get(name, {})},
                                         ft)
            if method == "full":
                tr = Trainer(fc)
                n_train = sum(p.numel() for p in tr.model.parameters())
            else:
                tr = PeftTrainer(fc, m, weights, base_dir)
                n_train = tr.meta["trainable_params"]
            s = tr.fit()
            act = _activation_bytes(tr.model.train(), batch)
            if method == "full":
                merged = tr.model
            else:
                merged, _, _ = load_peft_model(run_dir, base_dir)
            rows.append({"method": method, "seed": seed, "bpc": s.get("val_bits_per_char"),
                         "trainable": n_train, "activation_bytes": act,
                         "latency_s": _latency(merged, batch),
                         "base_latency_s": _latency(base.model, batch)})
    rep = new_report("peft", "peft", "Parameter-efficient fine-tuning: Shakespeare → stdlib",
                     opts, intro=__doc__.split("\n\n")[0].replace("\n", " "))
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: the --quick budget trains a tiny model for a "
                         "few steps; no claim below is evidence either way.")
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    table, summ = [], {}
    for meth, rs in by.items():
        bpc = [r["bpc"] for r in rs if r["bpc"] is not None]
        mean = statistics.mean(bpc) if bpc else float("nan")
        sd = statistics.stdev(bpc) if len(bpc) > 1 else 0.0
        lat = statistics.median(r["latency_s"] / r["base_latency_s"] for r in rs)
        act = statistics.mean(r["activation_bytes"] for r in rs)
        summ[meth] = {"bpc": mean, "latency_ratio": lat, "activation_bytes": act}
        table.append([meth, f"{fmt(mean, 4)} ± {fmt(sd, 2)}", f"{rs[0]['trainable']:,}",
                      f"{act / 2**20:.2f}", f"{lat:.2f}"])
    rep.table(["method", "stdlib val bits/char (mean ± sd)", "trainable params",
               "activation MiB / step", "latency / base (merged)"], table,
              heading=f"{opts['steps']} fine-tuning steps, seeds {opts['seeds']}")
    rep.data = {"rows": rows, "summary": summ}
    for meth in ("pafi", "hiwi", "lora"):
        if meth in summ:
            lr = summ[meth]["latency_ratio"]
            rep.notes.append(f"'No added latency' ({meth}, merged): latency {lr:.2f}× the base "
                             f"model's — {'agrees' if lr < 1.15 else 'does not agree'} "
                             f"(within 15 %).")
    if "meft" in summ and "full" in summ:
        a, f = summ["meft"], summ["full"]
        ok = a["activation_bytes"] < f["activation_bytes"] and a["bpc"] - f["bpc"] < 0.1
        rep.notes.append(f"'Memory saving at similar quality' (meft vs full): activations "
                         f"{a['activation_bytes'] / max(1, f['activation_bytes']):.2f}× full, "
                         f"bits/char {a['bpc'] - f['bpc']:+.3f} — "
                         f"{'agrees' if ok else 'does not agree'} (similar: within 0.1 bit).")

    def draw(fig):
        ax = fig.add_subplot(111)
        names = list(summ)
        ax.bar(names, [summ[n]["bpc"] for n in names])
        ax.set_ylabel("stdlib val bits / char")
        ax.grid(True, axis="y", alpha=0.3)
    rep.figure("bpc", "held-out bits per character on stdlib after fine-tuning", draw)
    return [rep]


@BENCHMARKS.register(
    "peft", paper="Parameter-Efficient Fine-Tuning without Introducing New Latency (Liao et "
                  "al., 2023); Make Pre-trained Model Reversible (Liao et al., 2023); LoRA "
                  "(Hu et al., 2022)",
    equation="bits/char after equal-step fine-tuning; trainable params; activations; latency",
    test="tests/test_bench_peft.py::test_bench_peft_quick_writes_table_and_claims",
    commands=("peft",))
class PeftStudy(Study):
    """Full fine-tuning vs LoRA, PaFi, HiWi, MEFT on a new domain."""

    commands = (Command("peft", "full fine-tuning vs LoRA / PaFi / HiWi / MEFT: Shakespeare "
                                "base, stdlib fine-tuning", OPTIONS, run_peft,
                        quick_minutes=3),)
