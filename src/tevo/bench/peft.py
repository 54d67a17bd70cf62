"""The PEFT study (``tevo bench peft``): full fine-tuning, LoRA (the ``peft`` library), PaFi, HiWi
and MEFT at an equal number of steps, after *Parameter-Efficient Fine-Tuning without
Introducing New Latency* (Liao et al., 2023) and *Make Pre-trained Model Reversible* (Liao et
al., 2023). A base run is trained with the Trainer on the Shakespeare corpus (byte tokenizer),
then fine-tuned on another real domain (the ``stdlib`` corpus of Python source) by each method
with ``tevo finetune --peft`` (the same Trainer; full fine-tuning trains every weight), over
seeds. Reported: held-out bits per character on stdlib (the Trainer's final evaluation on the
validation files, the base before fine-tuning beside them), trainable parameters, the
activation bytes kept for backward in one training step (saved-tensor hooks: the activation
memory that MEFT's reversible backward cuts), the peak training memory of a step (weights +
gradients and AdamW's two moments of the trained parameters + those activations: an account
from sizes, not an allocator reading, which the CPU does not give), and the forward latency of
the fine-tuned model after merging and before it, each against the base model's (base and
fine-tuned forwards alternated, median of repeats, so machine load hits both alike)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..errors import ConfigError
from ..registry import BENCHMARKS
from ._common import Command, Deadline, Option, Study, fmt, mean_sd, new_report

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
    Option("eval_batches", "int", 50, "validation batches of the final evaluation (>= 1)",
           quick=4),
    Option("work_dir", "str", None, "folder for the Trainer runs (default: a temporary one)"),
)
PEFT_OPTIONS = {"lora": {"rank": 8}, "pafi": {"sparsity": 0.005}, "hiwi": {"rank": 8},
                "meft": {"rank": 8, "lam": 0.1}}


def _common(opts) -> list[str]:
    n = opts["seq_len"]
    return [f"data.seq_len={n}", f"model.max_len={n}", f"train.batch_size={opts['batch_size']}",
            "train.max_minutes=null", "train.eval_every=0", "train.sample_tokens=0",
            "train.plot=false", "train.precision=fp32", "train.progress=false",
            "model.dropout=0.0", f"train.final_eval_batches={opts['eval_batches']}"]


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


def _latencies(model, base, batch, repeats: int = 15) -> tuple[float, float]:
    """Median forward time of ``model`` and of ``base`` on ``batch``, the two alternated so
    that a change in machine load hits both."""
    import torch
    model.eval()
    base.eval()
    ts, tb = [], []
    with torch.no_grad():
        for _ in range(2):                     # warm-up
            model(batch)
            base(batch)
        for _ in range(repeats):
            for m, out in ((model, ts), (base, tb)):
                t = time.perf_counter()
                m(batch)
                out.append(time.perf_counter() - t)
    return statistics.median(ts), statistics.median(tb)


def train_memory_bytes(model, trainable: int, activation_bytes: int) -> int:
    """Weights (all, fp32) + gradients and AdamW's two moments of the trained parameters (fp32)
    + the activations saved for backward."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + 3 * 4 * int(trainable) + int(activation_bytes)


def check_options(opts: dict) -> None:
    def need(ok, name, why):
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')}", opts[name], why=why)
    need(bool(opts["methods"]) and set(opts["methods"]) <= set(METHODS), "methods",
         f"choose from {', '.join(METHODS)}")
    for name in ("d_model", "n_layers", "seq_len", "base_steps", "steps", "batch_size",
                 "eval_batches"):
        need(opts[name] >= 1, name, "must be >= 1")
    need(len(opts["seeds"]) >= 1, "seeds", "needs at least one seed")


def run_peft(opts: dict) -> list:
    import torch

    from ..config import load_config
    from ..train.peft_finetune import PeftTrainer, load_peft_model, peft_config
    from ..train.run import load_run
    from ..train.sweep import paired_difference
    from ..train.trainer import Trainer
    check_options(opts)
    deadline = Deadline(opts["max_minutes"])
    import tempfile
    out = Path(opts["work_dir"] or tempfile.mkdtemp(prefix="tevo-peft-"))
    base_dir = out / "base"
    common = _common(opts)
    cfg = load_config("default", [*common, f"model.d_model={opts['d_model']}",
                                  f"model.n_layers={opts['n_layers']}",
                                  f"train.steps={opts['base_steps']}",
                                  f"train.warmup={max(1, opts['base_steps'] // 20)}",
                                  f"train.out_dir={base_dir}", f"train.seed={opts['seed']}"])
    t0 = time.perf_counter()
    base_summary = Trainer(cfg).fit()
    base_s = time.perf_counter() - t0
    base = load_run(base_dir)
    # the base on the held-out stdlib files, by the same evaluation as every fine-tune
    fc0, _, _ = peft_config(base_dir, {"name": "pafi"}, [*common, "data.corpus=stdlib",
                                                          f"train.out_dir={out / 'base-eval'}"])
    base_bpc = Trainer(fc0).evaluate("val", opts["eval_batches"]).get("bits_per_char")
    batch = torch.randint(0, 256, (opts["batch_size"], opts["seq_len"]),
                          generator=torch.Generator().manual_seed(0))
    rep = new_report("peft", "peft", "Parameter-efficient fine-tuning: Shakespeare → stdlib",
                     opts, intro=__doc__.split("\n\n")[0].replace("\n", " "))
    rows = []
    for seed in opts["seeds"]:                       # seeds outermost: a time limit keeps
        for method in opts["methods"]:               # whole seeds of every method
            if deadline.expired():
                rep.skip(f"{method} seed {seed}", deadline.reason())
                continue
            run_dir = out / f"{method}-{seed}"
            ft = [*common, "data.corpus=stdlib", f"train.steps={opts['steps']}",
                  f"train.warmup={max(1, opts['steps'] // 10)}", f"train.seed={seed}",
                  f"train.out_dir={run_dir}"]
            name = "pafi" if method == "full" else method   # full: the same config, all trained
            fc, m, weights = peft_config(base_dir, {"name": name, **PEFT_OPTIONS.get(name, {})},
                                         ft)
            t0 = time.perf_counter()
            if method == "full":
                tr = Trainer(fc)
                n_train = sum(p.numel() for p in tr.model.parameters())
            else:
                tr = PeftTrainer(fc, m, weights, base_dir)
                n_train = tr.meta["trainable_params"]
            s = tr.fit()
            train_s = time.perf_counter() - t0
            act = _activation_bytes(tr.model.train(), batch)
            mem = train_memory_bytes(tr.model, n_train, act)
            unmerged_ratio = None
            if method == "full":
                merged = tr.model
            else:
                merged, _, _ = load_peft_model(run_dir, base_dir)
                unmerged, _, _ = load_peft_model(run_dir, base_dir, merge=False)
                lu, lb = _latencies(unmerged, base.model, batch)
                unmerged_ratio = lu / lb
            lm, lb = _latencies(merged, base.model, batch)
            rows.append({"method": method, "seed": seed, "bpc": s.get("val_bits_per_char"),
                         "trainable": n_train, "activation_bytes": act, "train_memory_bytes": mem,
                         "latency_s": lm, "base_latency_s": lb, "latency_ratio": lm / lb,
                         "unmerged_latency_ratio": unmerged_ratio, "train_s": train_s})
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: the --quick budget trains a tiny model for a "
                         "few steps; no claim below is evidence either way.")
    rep.data = {"rows": rows, "base": {"train_s": base_s, "stdlib_val_bpc": base_bpc,
                                       "shakespeare_val_bpc":
                                           base_summary.get("val_bits_per_char")}}
    if not rows:
        return [rep]
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)

    def ms(xs, d=4):
        m, sd = mean_sd(xs)
        return fmt(m, d) + (f" ± {fmt(sd, 2)}" if len(xs) > 1 else "")
    table, summ = [], {}
    for meth, rs in by.items():
        bpc = [r["bpc"] for r in rs if r["bpc"] is not None]
        lat = [r["latency_ratio"] for r in rs]
        unm = [r["unmerged_latency_ratio"] for r in rs if r["unmerged_latency_ratio"] is not None]
        summ[meth] = {"bpc": mean_sd(bpc)[0] if bpc else float("nan"),
                      "latency_ratio": mean_sd(lat)[0], "latency_sd": mean_sd(lat)[1],
                      "unmerged_latency_ratio": mean_sd(unm)[0] if unm else None,
                      "activation_bytes": mean_sd([r["activation_bytes"] for r in rs])[0],
                      "train_memory_bytes": mean_sd([r["train_memory_bytes"] for r in rs])[0],
                      "trainable": rs[0]["trainable"]}
        table.append([meth, ms(bpc), f"{rs[0]['trainable']:,}",
                      f"{summ[meth]['activation_bytes'] / 2**20:.2f}",
                      f"{summ[meth]['train_memory_bytes'] / 2**20:.2f}", ms(lat, 2),
                      ms(unm, 2) if unm else "— (no adapter)"])
    table.append(["base (no fine-tuning)", fmt(base_bpc, 4),
                  "0", "—", "—", "1", "—"])
    rep.table(["method", "stdlib val bits/char (mean ± sd)", "trainable params",
               "activation MiB / step", "peak training MiB / step", "latency / base (merged)",
               "latency / base (unmerged)"], table,
              heading=f"{opts['steps']} fine-tuning steps of {opts['batch_size']} × "
                      f"{opts['seq_len']} bytes, seeds {opts['seeds']}",
              note=f"Base: d_model {opts['d_model']}, {opts['n_layers']} layers, "
                   f"{opts['base_steps']} steps on Shakespeare (val "
                   f"{fmt(base_summary.get('val_bits_per_char'), 4)} bits/char). Latency: a "
                   f"forward of {opts['batch_size']} × {opts['seq_len']} tokens, mean ± sd over "
                   f"seeds of the per-seed median ratio. Peak training memory: weights + "
                   f"(gradient + 2 AdamW moments) of the trained parameters + saved "
                   f"activations.")
    bpc_of = {m: {r["seed"]: r["bpc"] for r in rs if r["bpc"] is not None}
              for m, rs in by.items()}
    diffs = {}
    for meth in by:
        if meth != "full" and "full" in by:
            common_seeds = sorted(set(bpc_of[meth]) & set(bpc_of["full"]))
            diffs[f"{meth}_minus_full"] = paired_difference(
                [bpc_of[meth][x] for x in common_seeds], [bpc_of["full"][x] for x in common_seeds])
    rep.data.update({"summary": summ, "bpc_differences": diffs})
    for meth in ("pafi", "hiwi", "lora"):
        if meth in summ:
            a = summ[meth]
            ok = a["latency_ratio"] < 1.15
            unm = a["unmerged_latency_ratio"]
            rep.notes.append(
                f"'No added latency' ({meth}, merged): the fine-tuned model's forward takes "
                f"{a['latency_ratio']:.2f}"
                + (f" ± {a['latency_sd']:.2f}" if a["latency_sd"] == a["latency_sd"] else "")
                + f"× the base model's — "
                f"{'agrees' if ok else 'does not agree'} (within 15 %)"
                + (f"; before merging {unm:.2f}×" if unm is not None else "") + ".")
    if "meft" in summ and "full" in summ:
        a, f = summ["meft"], summ["full"]
        d = diffs.get("meft_minus_full")
        saving = a["train_memory_bytes"] < f["train_memory_bytes"] \
            and a["activation_bytes"] < f["activation_bytes"]
        similar = d is not None and d["hi"] < 0.1
        rep.notes.append(
            f"'Memory saving at similar quality' (meft vs full): activations "
            f"{a['activation_bytes'] / max(1, f['activation_bytes']):.2f}× and peak training "
            f"memory {a['train_memory_bytes'] / max(1, f['train_memory_bytes']):.2f}× full "
            f"fine-tuning's; bits/char difference "
            + (f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
               + ("" if d["measurable"] else " (no measurable difference)") if d else "—")
            + f" — {'agrees' if saving and similar else 'does not agree'} (similar: the 95 % "
              f"interval of the paired difference below +0.1 bit).")
    for meth in ("lora", "pafi", "hiwi"):
        d = diffs.get(f"{meth}_minus_full")
        if d:
            rep.notes.append(
                f"{meth} vs full fine-tuning, bits/char: {d['mean']:+.3f} "
                f"[{d['lo']:+.3f}, {d['hi']:+.3f}]"
                + (" (no measurable difference)" if not d["measurable"] else
                   (" (measurably worse)" if d["lo"] > 0 else " (measurably better)"))
                + f" with {summ[meth]['trainable'] / max(1, summ['full']['trainable']):.2%} of "
                  f"the trainable parameters.")

    def draw(fig):
        names = list(summ)
        ax = fig.add_subplot(121)
        errs = [mean_sd([r["bpc"] for r in by[n] if r["bpc"] is not None])[1] for n in names]
        ax.bar(names, [summ[n]["bpc"] for n in names],
               yerr=[0 if e != e else e for e in errs], capsize=3)
        if base_bpc is not None:
            ax.axhline(base_bpc, color="grey", ls="--", lw=0.8, label="base, no fine-tuning")
            ax.legend()
        ax.set_ylabel("stdlib val bits / char")
        ax.grid(True, axis="y", alpha=0.3)
        ax2 = fig.add_subplot(122)
        ax2.bar(names, [summ[n]["train_memory_bytes"] / 2**20 for n in names])
        ax2.set_ylabel("peak training MiB / step")
        ax2.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
    rep.figure("bpc", "held-out bits per character on stdlib after fine-tuning (left) and peak "
                      "training memory (right)", draw)
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
