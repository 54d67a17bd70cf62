"""The vision study (``tevo bench vision``): a MetaFormer-style comparison on the 8×8 digits.

Every vision preset (vit, xcit, poolformer, gfnet, swinv2, nest, crossformer) and the
``metaformer`` model with every registered token mixer that fits an image grid (the same
two-stage block structure, only the mixer changing) train through the one Trainer at the same
budget (steps × batch), ``seeds`` seeds each; the table gives test accuracy mean ± sd,
parameters and training images per second, and a plot ranks them. The PoolFormer paper's claim
(Yu et al., 2022) is that the general block, not the particular mixer, carries most of the
accuracy: the report says how far the MetaFormer rows spread compared with the best one.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..registry import BENCHMARKS, MIXERS
from ._common import Command, Option, Study, fmt, mean_sd, new_report

PRESETS = ("vit", "xcit", "poolformer", "gfnet", "swinv2", "nest", "crossformer")
# mixers sized by options that the MetaFormer rows set (a window of 2 tiles every stage grid)
MIXER_OPTIONS = {"swin_window": {"window": 2}, "nest": {"window": 2},
                 "crossformer_lsda": {"group": 2}, "afno": {"blocks": 4}}

OPTIONS = (
    Option("presets", "strs", list(PRESETS), "vision presets to train", quick=["vit", "poolformer"]),
    Option("mixers", "strs", None, "mixers in the MetaFormer rows (default: every one that fits "
                                   "an image grid)", quick=["pool", "softmax"]),
    Option("steps", "int", 300, "training steps per run", quick=5),
    Option("batch_size", "int", 64, "images per step", quick=16),
    Option("seeds", "ints", [0, 1, 2], "seeds per row", quick=[0]),
)


def _train(config: str, overrides: list[str], seed: int, opts: dict) -> dict:
    from ..config import load_config
    from ..train.run import load_run
    from ..train.evaluate import evaluate
    from ..train.trainer import train
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, overrides + [
            f"train.steps={opts['steps']}", f"train.batch_size={opts['batch_size']}",
            f"train.seed={seed}", "train.max_minutes=null", "train.eval_every=0",
            "train.ckpt_every=0", "train.plot=false", "train.progress=false",
            f"train.warmup={max(1, opts['steps'] // 10)}", f"train.out_dir={tmp}/run"])
        s = train(cfg)
        run = load_run(s["run_dir"])
        r = evaluate(run.model, run.objective, run.data, "test", 256)
    return {"accuracy": r["accuracy"], "params": s["params"],
            "images_per_second": s["tokens_per_second"]}


def run_vision(opts: dict) -> list:
    rep = new_report("vision", "vision", "Vision models and grid mixers on the digits", opts,
                     intro=__doc__.split("\n\n")[1].replace("\n", " "))
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: the --quick budget trains for a few steps.")
    mixers = opts["mixers"] or [n for n in MIXERS.names() if MIXERS.get(n).supports.image]
    rows = [(p, p, []) for p in opts["presets"]]
    for m in mixers:
        spec = {"name": m, **MIXER_OPTIONS.get(m, {})}
        flow = "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"
        rows.append((f"metaformer + {m}", "poolformer", [f"model.mixer={flow}",
                                                         "model.position=learned"]))
    table, results = [], []
    for label, config, overrides in rows:
        runs = []
        for seed in opts["seeds"]:
            try:
                runs.append(_train(config, overrides, seed, opts))
            except Exception as e:                  # one failing row keeps the others
                rep.skip(label, f"{type(e).__name__}: {e}")
                break
        if not runs:
            continue
        mean, sd = mean_sd([r["accuracy"] for r in runs])
        ips, _ = mean_sd([r["images_per_second"] for r in runs])
        results.append({"row": label, "mean": mean, "sd": sd, "params": runs[0]["params"],
                        "images_per_second": ips})
        table.append([label, f"{fmt(mean, 4)} ± {fmt(sd, 3)}", f"{runs[0]['params']:,}",
                      f"{ips:,.0f}"])
    rep.text(f"Budget per run: {opts['steps']} steps × {opts['batch_size']} images; seeds "
             f"{opts['seeds']}; test split of the fixed stratified digits split.")
    rep.table(["model", "test accuracy (mean ± sd)", "params", "images/s"], table)
    meta = [r for r in results if r["row"].startswith("metaformer")]
    if len(meta) >= 2:
        best = max(r["mean"] for r in meta)
        spread = best - min(r["mean"] for r in meta)
        rep.text(f"MetaFormer rows (one block structure, {len(meta)} mixers): best "
                 f"{best:.4f}, spread {spread:.4f}; the claim that the block carries most of "
                 f"the accuracy {'holds' if spread < 0.1 * best else 'does not hold'} here "
                 f"(spread under a tenth of the best accuracy).")

    def draw(fig):
        ax = fig.add_subplot(111)
        rs = sorted(results, key=lambda r: r["mean"])
        ax.barh([r["row"] for r in rs], [r["mean"] for r in rs],
                xerr=[0 if r["sd"] != r["sd"] else r["sd"] for r in rs], capsize=3)
        ax.set_xlabel("test accuracy")
        ax.grid(True, axis="x", alpha=0.3)
    if results:
        rep.figure("accuracy", "test accuracy per model (mean ± sd over seeds)", draw)
    rep.data = {"rows": results}
    return [rep]


@BENCHMARKS.register(
    "vision", paper="MetaFormer Is Actually What You Need for Vision (Yu et al., 2022)",
    equation="same block, same budget: accuracy per token mixer",
    test="tests/test_vision.py::test_bench_vision_quick_runs_and_reports",
    commands=("vision",))
class VisionStudy(Study):
    """Vision presets and MetaFormer with every grid mixer, on the digits."""

    commands = (Command("vision", "image models and grid mixers on the digits (accuracy ± sd)",
                        OPTIONS, run_vision, quick_minutes=5),)
