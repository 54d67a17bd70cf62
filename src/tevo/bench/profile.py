"""Where the time goes (``tevo bench profile [CONFIG] [key=value ...]``): torch.profiler over a
few training steps and decode steps of any run config, the top operators by self time, and a
one-line split into matmul / attention / elementwise / optimizer / casts / other operators /
Python (wall time not spent inside any operator), saved as JSON, Markdown and a Chrome trace
(open ``profile_trace.json`` in chrome://tracing or Perfetto).

A training step is the trainer's own: the config's model, its objective's loss on random
windows of ``data.seq_len`` tokens (batch ``train.batch_size``), backward, gradient clipping
and the trainer's optimiser (fused AdamW), under the config's precision (autocast). Decode
steps are batch-1 greedy steps with the KV cache after a 32-token prompt, when every mixer of
the model has an incremental form.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..registry import BENCHMARKS
from ._common import Command, Option, Study, fmt, new_report

OPTIONS = (
    Option("config", "str", "default", "preset name or YAML file of the run to profile"),
    Option("set", "strs", [], "dotted overrides, comma-separated (model.n_layers=2,...)"),
    Option("steps", "int", 5, "profiled training steps (after 2 warm-up steps)", quick=2),
    Option("decode_steps", "int", 32, "profiled decode steps (0: none)", quick=4),
    Option("top", "int", 20, "operators listed"),
)

# operator name → category (first matching rule wins); names are aten/profiler record names
CATEGORIES = (
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention",
                   "aten::_softmax", "aten::softmax", "aten::_safe_softmax")),
    ("optimizer", ("optimizer.step", "adam", "_foreach_", "clip_grad", "zero_grad")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                "aten::baddbmm", "aten::addbmm", "mkldnn", "onednn", "aten::_addmm")),
    ("casts", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::type_as",
               "aten::_autocast")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k.lower() in low for k in keys):
            return cat
    if low.startswith("aten::"):
        return "elementwise"
    return "other"


def split(events: list[dict], wall_us: float) -> dict:
    """Seconds per category from the operators' self CPU times; 'python' is the wall time no
    operator accounts for (interpreter, module calls, allocation outside aten)."""
    out = {c: 0.0 for c in ("matmul", "attention", "elementwise", "optimizer", "casts",
                            "other")}
    for e in events:
        out[category(e["name"])] += e["self_us"]
    out["python"] = max(0.0, wall_us - sum(out.values()))
    return {k: v / 1e6 for k, v in out.items()}


def _events(prof) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        rows.append({"name": e.key, "calls": int(e.count),
                     "self_us": float(e.self_cpu_time_total),
                     "total_us": float(e.cpu_time_total)})
    return sorted(rows, key=lambda r: -r["self_us"])


def run_profile(opts: dict) -> list:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .. import build_model
    from ..config import load_config
    from ..errors import ConfigError
    from ..inference.generate import generate, supports_cache
    from ..registry import OBJECTIVES
    from ..train.evaluate import autocast, resolve_precision
    from ..train.optim import build_optimizer

    cfg = load_config(opts["config"], list(opts["set"] or []))
    objective = OBJECTIVES.build(cfg.objective, "objective")
    if objective.data_format != "lm" or cfg.data.task is not None:
        raise ConfigError("objective", cfg.objective, why="profile runs language-model configs "
                          "(clm on text); this one reads another data format")
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(opts["seed"])
    model = build_model(cfg).to(device).train()
    opt = build_optimizer(model, cfg.train, device.type)
    B, n, V = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size

    def step():
        ids = torch.randint(0, V, (B, n + 1))
        with autocast(device, precision):
            loss, _ = objective(model, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(opts["steps"]):
            step()
        train_wall = time.perf_counter() - t0
    train_events = _events(prof)
    trace = out / "profile_trace.json"
    prof.export_chrome_trace(str(trace))

    decode = None
    model.eval()
    if opts["decode_steps"] and supports_cache(model):
        prompt = torch.randint(0, V, (1, 32))
        with torch.no_grad(), autocast(device, precision):
            generate(model, prompt, 2, greedy=True)                       # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as dprof:
                t0 = time.perf_counter()
                generate(model, prompt, opts["decode_steps"], greedy=True)
                dec_wall = time.perf_counter() - t0
        decode = {"wall_s": dec_wall, "tokens_per_s": opts["decode_steps"] / dec_wall,
                  "events": _events(dprof)[:opts["top"]],
                  "split_s": split(_events(dprof), dec_wall * 1e6)}

    rep = new_report("profile", "profile", f"Profile of {opts['config']}", opts,
                     intro=__doc__.split("\n\n")[0].replace("\n", " "))
    sp = split(train_events, train_wall * 1e6)
    per = {k: v / opts["steps"] for k, v in sp.items()}
    rep.text(f"Config: `{opts['config']}` {' '.join(opts['set'] or [])}; precision "
             f"{precision}; batch {B} × {n} tokens; {opts['steps']} profiled training steps: "
             f"{fmt(train_wall / opts['steps'] * 1e3)} ms per step (under the profiler).")
    rep.text("Split of a training step: " + " · ".join(
        f"{k} {100 * v / max(train_wall, 1e-12):.0f} %" for k, v in sp.items()) + ".")
    rep.table(["operator", "calls", "self ms per step", "% of step", "category"],
              [[e["name"], e["calls"] // opts["steps"], fmt(e["self_us"] / 1e3 / opts["steps"]),
                f"{100 * e['self_us'] / 1e6 / max(train_wall, 1e-12):.1f}", category(e["name"])]
               for e in train_events[:opts["top"]]], heading="Training step: top operators")
    if decode:
        rep.text(f"Decode (batch 1, 32-token prompt, greedy, KV cache): "
                 f"{fmt(decode['tokens_per_s'])} tokens/s under the profiler. Split: " +
                 " · ".join(f"{k} {100 * v / max(decode['wall_s'], 1e-12):.0f} %"
                            for k, v in decode["split_s"].items()) + ".")
        rep.table(["operator", "calls", "self ms", "category"],
                  [[e["name"], e["calls"], fmt(e["self_us"] / 1e3), category(e["name"])]
                   for e in decode["events"]], heading="Decoding: top operators")
    elif opts["decode_steps"]:
        rep.notes.append("decoding not profiled: a mixer of this model has no incremental form")
    rep.text(f"Chrome trace of the training steps: `{trace.name}`.")
    rep.data = {"precision": precision, "batch": B, "seq_len": n, "steps": opts["steps"],
                "train_wall_s": train_wall, "split_s_per_step": per,
                "train_events": train_events[:max(opts["top"], 50)], "decode": decode,
                "trace": trace.name}
    return [rep]


@BENCHMARKS.register(
    "profile", paper="(tool) torch.profiler over training and decode steps of any config",
    equation="self time per operator; split = matmul / attention / elementwise / optimizer / "
             "casts / other / Python",
    test="tests/test_bench.py::test_profile_splits_a_training_step_and_writes_a_trace",
    commands=("profile",))
class ProfileStudy(Study):
    """Where a training step and a decode step spend their time."""

    commands = (Command("profile", "torch.profiler over training and decode steps of a config",
                        OPTIONS, run_profile, quick_minutes=2),)
