"""The deeper-vs-wider study (``tevo bench deeper_wider``), after *Deeper vs Wider: A
Revisit of Transformer Configuration* (Xue et al., 2022): at an equal parameter budget, does
depth or width buy more? It is a ``tevo sweep`` (``tevo.train.sweep``): the depths of the grid
each get the width (``model.d_model``, in steps of 2 × heads) whose model has the parameter
count closest to the shallowest point's, every point is an ordinary run of the Trainer on the
embedded corpus, 3 seeds each, and every depth is compared with the shallowest by the paired
difference of held-out bits per character over seeds (95 % t-interval). The same sweep, with
any other dotted key, is ``tevo sweep ... --match-params model.d_model``.
"""
from __future__ import annotations

from pathlib import Path

from ..registry import BENCHMARKS
from ._common import Command, Option, Study, fmt, new_report

OPTIONS = (
    Option("depths", "ints", [2, 4, 8], "numbers of layers (the first is the baseline)",
           quick=[1, 2]),
    Option("d_model", "int", 192, "width of the shallowest model (sets the parameter budget)",
           quick=32),
    Option("heads", "int", 4, "attention heads (widths move in steps of 2 × heads)", quick=2),
    Option("steps", "int", 2000, "training steps per run", quick=20),
    Option("seq_len", "int", 128, "context length", quick=32),
    Option("batch_size", "int", 16, "sequences per step", quick=8),
    Option("seeds", "ints", [0, 1, 2], "seeds per point", quick=[0, 1]),
    Option("jobs", "int", 2, "runs at once (one process and one thread each)"),
    Option("engine", "str", "local", "local processes or ray", choices=("local", "ray")),
    Option("runs", "str", "runs/deeper_wider", "folder of the sweep's run folders (kept out of "
                                              "the report's folder: each holds its data and "
                                              "checkpoints)"),
)


def run_deeper_wider(opts: dict) -> list:
    from ..train.sweep import Sweep, aggregate, run_sweep
    h = opts["heads"]
    overrides = [f"model.d_model={opts['d_model']}", f"model.mixer={{name: softmax, heads: {h}}}",
                 f"data.seq_len={opts['seq_len']}", f"model.max_len={opts['seq_len']}",
                 f"train.steps={opts['steps']}", f"train.batch_size={opts['batch_size']}",
                 "train.max_minutes=null", "train.eval_every=0", "train.ckpt_every=0",
                 "train.sample_tokens=0", "train.plot=false", "train.precision=fp32",
                 f"train.warmup={max(1, opts['steps'] // 20)}"]
    if opts["quick"]:
        overrides.append("train.final_eval_batches=8")
    sweep = Sweep(out=Path(opts["runs"]), config="default",
                  overrides=overrides, grid={"model.n_layers": list(opts["depths"])},
                  seeds=list(opts["seeds"]), match="model.d_model", match_step=2 * h)
    records = run_sweep(sweep, jobs=opts["jobs"], engine=opts["engine"], progress=True)
    rows = aggregate(sweep, records)
    rep = new_report("deeper_wider", "deeper_wider", "Deeper vs wider at equal parameters",
                     opts, intro=__doc__.split("\n\n")[0].replace("\n", " "))
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: the --quick budget trains for a few steps.")
    tokens = records[0]["summary"].get("tokens")
    rep.text(f"Budget per run: {opts['steps']} steps × {opts['batch_size']} × "
             f"{opts['seq_len']} tokens = {tokens:,} tokens; seeds {opts['seeds']}.")
    table = []
    for r in rows:
        d = r.get("diff")
        table.append([r["point"]["model.n_layers"], r["point"]["model.d_model"],
                      f"{r['params']:,}", f"{fmt(r['mean'], 4)} ± {fmt(r['sd'], 2)}",
                      f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "—",
                      r["verdict"], f"{r['tokens_per_second']:,.0f}"])
    rep.table(["layers", "d_model", "params", "val bits/char (mean ± sd)",
               "Δ vs shallowest [95 % CI]", "verdict", "tokens/s"], table)
    rep.text("Reproduce a point: " + "; ".join(f"`{r['command']}`" for r in rows[:1]))

    def draw(fig):
        ax = fig.add_subplot(111)
        xs = [r["point"]["model.n_layers"] for r in rows]
        ax.errorbar(xs, [r["mean"] for r in rows],
                    yerr=[0 if r["sd"] != r["sd"] else r["sd"] for r in rows], marker="o",
                    capsize=4)
        for r in rows:
            ax.annotate(f"d={r['point']['model.d_model']}", (r["point"]["model.n_layers"],
                                                              r["mean"]), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("layers (width adjusted for equal parameters)")
        ax.set_ylabel("held-out bits per character")
        ax.grid(True, alpha=0.3)
    rep.figure("depth", "bits per character against depth at equal parameters", draw)
    rep.data = {"rows": rows}
    return [rep]


@BENCHMARKS.register(
    "deeper_wider", paper="Deeper vs Wider: A Revisit of Transformer Configuration (Xue et al., "
                          "2022)",
    equation="params(L, d) ≈ const: d chosen per depth L; compare loss over seeds",
    test="tests/test_sweep.py::"
         "test_match_params_keeps_the_parameter_count_and_bad_input_is_one_line",
    commands=("deeper_wider",))
class DeeperWiderStudy(Study):
    """Depth against width at an equal parameter count (a sweep of Trainer runs)."""

    commands = (Command("deeper_wider", "depth vs width at equal parameters (sweep of runs)",
                        OPTIONS, run_deeper_wider, quick_minutes=10),)
