"""The cross-segment memory study (``tevo bench memory``): associative recall across segment
boundaries for every segment memory at one training budget.

Task (built here, in the spirit of the associative-recall tasks of ``tevo.tasks``): a sample is
D + 1 segments of S tokens. Segment 0 holds P key–value pairs ``k₁ v₁ … k_P v_P`` (keys from
one range of the vocabulary, values from another) padded with filler tokens; segments 1 … D−1
are filler; segment D asks for the pairs again in a shuffled order, ``k_i v_i``, and the score
is the accuracy of predicting each v_i after its k_i. A model reads the sample segment by
segment, so the values are D segments back: without a memory the answer is chance (1/|values|).

Each memory is trained as it trains in ``tevo train``: memories that split a call into segments
themselves (rmt, autocompressor, memformer) get the whole sample in one call (BPTT through all
its segments); the others (xl_memory, compressive, block_recurrent, memorizing,
sparse_long_memory) get one segment per call with their memory carried and stop-gradient, as in
their papers. Every variant shares the model (d_model, layers, heads, rope), the optimiser, the
steps and the batch: an equal budget.
"""
from __future__ import annotations

import math
import time

from ..registry import BENCHMARKS, MEMORIES
from ._common import (Command, Deadline, Option, Study, count_params, fmt, mean_sd, new_report,
                      pick_device, sanitize, stderr)

OPTIONS = (
    Option("memories", "strs", ["none", "xl_memory", "compressive", "rmt", "block_recurrent",
                                "memorizing", "memory_tokens"], "variants ('none': no memory)"),
    Option("distances", "ints", [1, 2, 4], "segments between the pairs and the queries"),
    Option("seeds", "int", 3, "seeds per point", quick=1),
    Option("segment", "int", 16, "segment length S", quick=8),
    Option("pairs", "int", 2, "key–value pairs per sample", quick=1),
    Option("keys", "int", 16, "distinct keys"),
    Option("values", "int", 16, "distinct values"),
    Option("steps", "int", 800, "training steps per run", quick=30),
    Option("batch", "int", 32, "samples per step", quick=8),
    Option("lr", "float", 3e-3, "learning rate (AdamW, warm-up then cosine)"),
    Option("d_model", "int", 64, "model width", quick=32),
    Option("n_layers", "int", 2, "layers"),
    Option("eval_examples", "int", 512, "held-out samples for accuracy", quick=64),
)

# segment-internal memories: the sample is one call, cut into segments of S inside
SPLITTING = ("rmt", "autocompressor", "memformer")


def memory_spec(name: str, S: int, D: int, d: int):
    """The memory of each variant at segment length S and distance D (None: no memory)."""
    return {"none": None,
            "xl_memory": {"name": "xl_memory", "mem_len": S},
            "compressive": {"name": "compressive", "mem_len": S, "cmem_len": S, "rate": 2},
            "sparse_long_memory": {"name": "sparse_long_memory", "mem_len": 2 * S},
            "rmt": {"name": "rmt", "mem_tokens": 4, "segment": S, "bptt": D + 1},
            "autocompressor": {"name": "autocompressor", "summary": 2, "segment": S,
                               "bptt": D + 1, "max_summaries": 2 * (D + 1)},
            "memformer": {"name": "memformer", "slots": 4, "segment": S, "bptt": D + 1,
                          "heads": 4},
            "block_recurrent": {"name": "block_recurrent", "block": S, "states": 4, "heads": 4},
            "memorizing": {"name": "memorizing", "mem_len": S, "mem_size": 8 * S, "k": 8},
            }.get(name, "unknown")


class RecallAcrossSegments:
    """Samples of D + 1 segments: pairs in segment 0, queries in segment D (see the module)."""

    def __init__(self, S: int, D: int, pairs: int, keys: int, values: int):
        if 2 * pairs > S:
            from ..errors import ConfigError
            raise ConfigError("pairs", pairs, why=f"2·pairs must fit a segment of {S}")
        self.S, self.D, self.P, self.K, self.Vv = S, D, pairs, keys, values
        self.filler = keys + values                       # filler ids: [K + Vv, K + Vv + 8)
        self.vocab_size = keys + values + 8

    def sample(self, n: int, gen):
        import torch
        S, D, P = self.S, self.D, self.P
        T = (D + 1) * S
        ids = torch.randint(self.filler, self.vocab_size, (n, T), generator=gen)
        keys = torch.stack([torch.randperm(self.K, generator=gen)[:P] for _ in range(n)])
        vals = torch.randint(self.K, self.K + self.Vv, (n, P), generator=gen)
        ids[:, 0:2 * P:2], ids[:, 1:2 * P:2] = keys, vals
        order = torch.stack([torch.randperm(P, generator=gen) for _ in range(n)])
        q0 = D * S
        ids[:, q0:q0 + 2 * P:2] = keys.gather(1, order)
        ids[:, q0 + 1:q0 + 2 * P:2] = vals.gather(1, order)
        answer_pos = torch.arange(q0, q0 + 2 * P, 2)      # predict ids[p + 1] from position p
        return ids, answer_pos


def _logits(model, ids, name: str, S: int):
    """Logits of a sample read as its memory is trained (module docstring)."""
    import torch
    if name == "none":
        return torch.cat([model(ids[:, s:s + S]).logits for s in range(0, ids.shape[1], S)], 1)
    if name in SPLITTING:
        return model.forward_segment(ids).logits
    mem, outs = None, []
    for s in range(0, ids.shape[1], S):
        o = model.forward_segment(ids[:, s:s + S], mem)
        outs.append(o.logits)
        mem = o.state
    return torch.cat(outs, 1), o.aux_loss


def _run_one(name, spec, task, opts, seed, dev, deadline):
    import torch
    import torch.nn.functional as F

    import tevo
    S, D = opts["segment"], task.D
    torch.manual_seed(seed)
    cfg = {"arch": "gpt", "vocab_size": task.vocab_size, "d_model": opts["d_model"],
           "n_layers": opts["n_layers"], "max_len": max(64, (D + 1) * S + 16),
           "mixer": {"name": "softmax", "heads": 4}, "position": "rope", "dropout": 0.0}
    if spec is not None:
        cfg["memory"] = spec
    model = tevo.build_model(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    steps, warm = opts["steps"], max(1, opts["steps"] // 10)
    t0 = time.time()
    for step in range(steps):
        if deadline.expired():
            return None
        lr = opts["lr"] * min(1.0, (step + 1) / warm) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, pos = task.sample(opts["batch"], gen)
        ids = ids.to(dev)
        out = _logits(model, ids, name, S)
        logits, aux = out if isinstance(out, tuple) else (out, 0.0)
        loss = F.cross_entropy(logits[:, pos].flatten(0, 1), ids[:, pos + 1].flatten()) + aux
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    ev = torch.Generator().manual_seed(10**6 + seed)
    correct = total = 0
    with torch.no_grad():
        for _ in range(max(1, opts["eval_examples"] // 64)):
            ids, pos = task.sample(64, ev)
            ids = ids.to(dev)
            out = _logits(model, ids, name, S)
            logits = out[0] if isinstance(out, tuple) else out
            pred = logits[:, pos].argmax(-1)
            correct += int((pred == ids[:, pos + 1]).sum())
            total += pred.numel()
    return {"accuracy": correct / total, "final_loss": loss.item(), "wall_s": time.time() - t0,
            "params": count_params(model)}


def run_memory(opts: dict) -> list:
    dev = pick_device(opts["device"])
    rep = new_report("memory", "memory", "Recall across segments: segment memories at one budget",
                     opts, intro=__doc__.split("\n\n", 1)[1].replace("\n", " ").split(
                         "Each memory is trained")[0].strip())
    rep.notes.append("Trained with this study's own loop (bench/memory.py), the memory carried "
                     "as tevo train carries it; not the full Trainer.")
    if opts["quick"]:
        rep.notes.append("--quick trains far too briefly for recall to be learnt: the numbers "
                         "check the harness, not the memories.")
    names = []
    for n in opts["memories"]:
        if n != "none" and n not in MEMORIES:
            rep.skip(n, "not a registered memory (not implemented yet)")
        elif memory_spec(n, 1, 1, 1) == "unknown":
            rep.skip(n, "no study configuration for this memory")
        else:
            names.append(n)
    deadline = Deadline(opts["max_minutes"])
    res: dict = {}
    for D in sorted(opts["distances"]):
        task = RecallAcrossSegments(opts["segment"], D, opts["pairs"], opts["keys"],
                                    opts["values"])
        for name in names:
            runs = []
            for k in range(opts["seeds"]):
                key = f"{name} D={D} seed={opts['seed'] + k}"
                if deadline.expired():
                    rep.skip(key, deadline.reason())
                    continue
                stderr(f"[memory] {key}")
                try:
                    r = _run_one(name, memory_spec(name, opts["segment"], D, opts["d_model"]),
                                 task, opts, opts["seed"] + k, dev, deadline)
                except Exception as e:
                    rep.error(key, e)
                    continue
                if r is None:
                    rep.skip(key, "study time limit reached during its training (--max-minutes)")
                    continue
                runs.append(r)
            if runs:
                m, sd = mean_sd([r["accuracy"] for r in runs])
                res.setdefault(name, {})[str(D)] = {"mean": m, "sd": sd, "runs": runs}
    chance = 1.0 / opts["values"]
    rep.data = sanitize({"distances": opts["distances"], "chance": chance, "results": res})
    cols = [str(D) for D in sorted(opts["distances"])]
    rows = [[n] + [(f"{fmt(res[n][c]['mean'], 3)} ± {fmt(res[n][c]['sd'], 2)} "
                    f"(n={len(res[n][c]['runs'])})" if c in res[n] else "—") for c in cols]
            for n in names if n in res]
    rep.table(["memory"] + [f"D={c}" for c in cols], rows, heading="Accuracy per distance",
              note=f"Mean ± sd over seeds of the accuracy on the queried values (chance "
                   f"{chance:.3f}); D = segments between the pairs and the queries, "
                   f"S = {opts['segment']}, {opts['steps']} steps of {opts['batch']} samples, "
                   f"d_model {opts['d_model']}, {opts['n_layers']} layers.")
    rep.figure("accuracy", "accuracy per distance", _plot(res, cols, chance))
    rep.section("Paper claims against this run", _claims(res, cols, chance, opts))
    return [rep]


def _claims(res, cols, chance, opts) -> str:
    def acc(n, c):
        return res.get(n, {}).get(c, {}).get("mean")

    lines = []
    far = cols[-1]
    for n, claim in (
            ("xl_memory", "Transformer-XL: the cached states let a layer attend a segment back, "
                          "and N layers reach N·M tokens"),
            ("compressive", "Compressive Transformer: compressed memories keep older segments "
                            "reachable"),
            ("rmt", "RMT: memory tokens carry information across segments"),
            ("block_recurrent", "Block-Recurrent Transformer: the gated state carries "
                                "information past the attention window"),
            ("memorizing", "Memorizing Transformer: kNN retrieval reaches any past segment")):
        a = acc(n, far)
        if a is None:
            lines.append(f"- {claim}: not measured in this run.")
            continue
        verdict = ("reproduced" if a > max(2 * chance, chance + 0.2) else
                   "not reproduced at this budget")
        lines.append(f"- {claim}: {verdict} (accuracy {a:.3f} at D={far}, chance {chance:.3f}).")
    base = acc("none", far)
    if base is not None:
        lines.append(f"- Without a memory the queried values are unpredictable: accuracy "
                     f"{base:.3f} at D={far} (chance {chance:.3f}).")
    return "\n".join(lines)


def _plot(res, cols, chance):
    def draw(fig):
        ax = fig.add_subplot(111)
        xs = [int(c) for c in cols]
        for n, r in res.items():
            pts = [(int(c), r[c]["mean"], r[c]["sd"]) for c in cols if c in r]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                            marker="o", capsize=3, label=n)
        ax.axhline(chance, color="grey", ls=":", label="chance")
        ax.set_xticks(xs)
        ax.set_xlabel("distance (segments)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    return draw


@BENCHMARKS.register(
    "memory",
    paper="Transformer-XL; Compressive Transformers; Recurrent Memory Transformer; "
          "Block-Recurrent Transformers; Memorizing Transformers",
    equation="accuracy of recall D segments back, per segment memory, at one training budget",
    test="tests/test_bench_memory.py::test_memory_study_runs_every_variant_and_writes_its_page",
    commands=("memory",))
class MemoryStudy(Study):
    """Recall across segment boundaries for every segment memory at an equal budget."""

    commands = (Command("memory", "recall across segments for every segment memory at one "
                                  "budget (accuracy per distance, mean ± sd over seeds)",
                        OPTIONS, run_memory, quick_minutes=3.0),)
