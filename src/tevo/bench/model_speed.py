"""Whole-model training-step time and peak memory (``tevo bench model_speed``): the hourglass
against the plain decoder at equal depth and width.

Hierarchical Transformers Are More Efficient Language Models (Nawrot et al., 2022), §3: with
L_pre + L_post full-resolution layers and L_mid layers on n/k shortened tokens, a step costs
O((L_pre + L_post)(n²d + n d²) + L_mid((n/k)²d + (n/k)d²)) instead of L(n²d + n d²) for the
plain decoder of the same depth L and width d: the paper's claim is that shortening buys this
saving in time and memory. Each row here is one model built from a config (``gpt`` and
``hourglass`` with factor k, 1 pre + L−2 shortened + 1 post layers, the same d, heads, FFN,
RoPE and vocabulary), trained for a few AdamW steps on random bytes at each length n; the
table gives the median step time (forward + backward + optimiser step) ± sd over the timed
steps, the peak resident memory of one step above the memory held before it, and the FLOPs of
one forward + backward (torch's counter) — the ratio the formula predicts, beside the ratio
measured. Points are measured in this process, one after another, each after a warm-up step.
"""
from __future__ import annotations

import math

from ._common import Command, Deadline, Option, Study, count_params, flop_counter, fmt, \
    fmt_bytes, fmt_seconds, loglog_plot, mean_sd, median, new_report
from ..registry import BENCHMARKS

OPTIONS = (
    Option("lengths", "ints", [512, 1024, 2048, 4096], "sequence lengths n",
           quick=[64, 128]),
    Option("factors", "ints", [2, 4], "hourglass shortening factors k", quick=[2]),
    Option("d_model", "int", 64, "model width d (both models)", quick=32),
    Option("n_layers", "int", 6, "depth L of both models (hourglass: 1 pre, L−2 shortened, "
                                 "1 post)", quick=4),
    Option("heads", "int", 4, "attention heads", quick=2),
    Option("batch", "int", 1, "sequences per step"),
    Option("repeat", "int", 3, "timed steps per point (after one warm-up step)", quick=2),
)


def model_configs(opts: dict) -> list[tuple[str, dict]]:
    """(row label, model config) for the plain decoder and one hourglass per factor."""
    n_max = max(opts["lengths"])
    base = {"vocab_size": 256, "d_model": opts["d_model"], "n_layers": opts["n_layers"],
            "max_len": n_max, "position": "rope", "dropout": 0.0,
            "mixer": {"name": "softmax", "heads": opts["heads"]}}
    rows = [("decoder (gpt)", {**base, "arch": "gpt"})]
    for k in opts["factors"]:
        rows.append((f"hourglass k={k}", {**base, "arch": "hourglass",
                                          "extra": {"factor": k, "pre_layers": 1,
                                                    "post_layers": 1}}))
    return rows


def measure_point(cfg: dict, n: int, batch: int, repeat: int) -> dict:
    """Step times, peak bytes of one step and FLOPs of one forward + backward at length n."""
    import time

    import torch
    import torch.nn.functional as F

    import tevo

    from ._speed_worker import _Memory
    torch.manual_seed(0)
    model = tevo.build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg["vocab_size"], (batch, n + 1))
    x, y = ids[:, :-1], ids[:, 1:]

    def loss_fn():
        logits = model(x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    step()                                          # warm-up: optimiser state, kernels
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = _Memory(torch.device("cpu")).measure(step, lambda: None)
    with flop_counter() as fc:
        loss_fn().backward()
    return {"times": times, "median_s": median(times), "sd_s": mean_sd(times)[1],
            "peak_bytes": peak, "flops": fc.get_total_flops(), "params": count_params(model)}


def run_model_speed(opts: dict) -> list:
    rep = new_report("model_speed", "model_speed",
                     "Whole-model training step: hourglass vs the plain decoder at equal depth",
                     opts, intro=__doc__.split("\n\n")[1].replace("\n", " "))
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: --quick measures tiny models at short "
                         "lengths.")
    deadline = Deadline(opts["max_minutes"])
    rows = model_configs(opts)
    res: dict = {label: {} for label, _ in rows}
    for n in sorted(opts["lengths"]):
        for label, cfg in rows:
            if deadline.expired():
                rep.skip(f"{label} n={n}", deadline.reason())
                continue
            try:
                res[label][n] = measure_point(cfg, n, opts["batch"], opts["repeat"])
            except Exception as e:                  # one failing point keeps the others
                rep.error(f"{label} n={n}", e)
    plain = rows[0][0]
    table = []
    for n in sorted(opts["lengths"]):
        ref = res[plain].get(n)
        for label, _ in rows:
            r = res[label].get(n)
            if r is None:
                continue
            ratio = (lambda key: r[key] / ref[key] if ref and ref[key] else None)
            table.append([n, label, f"{r['params']:,}",
                          f"{fmt_seconds(r['median_s'])} ± {fmt_seconds(r['sd_s'])}",
                          fmt(ratio("median_s")), fmt_bytes(r["peak_bytes"]),
                          fmt(ratio("peak_bytes")), f"{r['flops'] / 1e9:.3g}",
                          fmt(ratio("flops"))])
    rep.text(f"Both models: d = {opts['d_model']}, L = {opts['n_layers']} layers, "
             f"{opts['heads']} heads of softmax attention, RoPE, MLP ×4, batch "
             f"{opts['batch']}; {opts['repeat']} timed steps per point; torch threads as "
             f"given by --threads.")
    rep.table(["n", "model", "params", "step time (median ± sd)", "time / decoder",
               "peak memory", "memory / decoder", "GFLOPs fwd+bwd", "FLOPs / decoder"], table)
    rep.text(_claims(res, rows, opts))

    def series(key):
        return {label: (sorted(res[label]), [res[label][n][key] for n in sorted(res[label])])
                for label, _ in rows}
    if any(res.values()):
        rep.figure("time", "training-step time against length (log–log)",
                   loglog_plot(series("median_s"), "sequence length n", "seconds per step"))
        rep.figure("memory", "peak memory of one training step (log–log)",
                   loglog_plot(series("peak_bytes"), "sequence length n", "bytes"))
    rep.data = {"rows": {label: {str(n): r for n, r in pts.items()} for label, pts in res.items()}}
    return [rep]


def _claims(res: dict, rows: list, opts: dict) -> str:
    """One sentence per factor: is the hourglass faster and lighter than the decoder at every
    measured length, and by how much at the longest one?"""
    plain = rows[0][0]
    out = []
    for label, _ in rows[1:]:
        common = sorted(set(res[label]) & set(res[plain]))
        if not common:
            out.append(f"{label}: no length measured for both models, no claim.")
            continue
        tr = [res[label][n]["median_s"] / res[plain][n]["median_s"] for n in common]
        mr = [res[label][n]["peak_bytes"] / res[plain][n]["peak_bytes"]
              if res[plain][n]["peak_bytes"] else math.nan for n in common]
        fr = res[label][common[-1]]["flops"] / res[plain][common[-1]]["flops"]
        # the saving holds from the first length after which every ratio stays below 1
        t_from = next((n for i, n in enumerate(common) if all(t < 1 for t in tr[i:])), None)
        m_from = next((n for i, n in enumerate(common)
                       if all(m < 1 for m in mr[i:] if not math.isnan(m))), None)
        ok = t_from is not None and m_from is not None
        where = (f"faster from n = {t_from}" if t_from is not None else
                 f"not faster at n = {common[-1]}")
        where += (f", lighter from n = {m_from}" if m_from is not None else
                  f", not lighter at n = {common[-1]}")
        out.append(
            f"{label}: step time {tr[-1]:.2f}× the decoder's at n = {common[-1]} (FLOPs "
            f"{fr:.2f}×), peak memory {mr[-1]:.2f}×; the paper's saving at equal depth "
            f"{'is reproduced' if ok else 'is not reproduced'} here ({where} up to the longest "
            f"measured length).")
    return "\n\n".join(out)


@BENCHMARKS.register(
    "model_speed", paper="Hierarchical Transformers Are More Efficient Language Models "
                         "(Nawrot et al., 2022)",
    equation="(L_pre+L_post)·O(n²d + nd²) + L_mid·O((n/k)²d + (n/k)d²) vs L·O(n²d + nd²)",
    test="tests/test_bench_model_speed.py::test_quick_run_reports_every_row",
    commands=("model_speed",))
class ModelSpeedStudy(Study):
    """Training-step time and memory of whole models (hourglass vs decoder)."""

    commands = (Command("model_speed", "whole-model training-step time and memory: hourglass "
                                       "vs the plain decoder at equal depth",
                        OPTIONS, run_model_speed, quick_minutes=3),)
