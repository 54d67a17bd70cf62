"""The cross-segment memory study (``tevo bench memory``): associative recall across segment
boundaries for every segment memory at one training budget.

Task (built here, in the spirit of the associative-recall tasks of ``tevo.tasks``): a sample is
D + 1 segments of S tokens. Segment 0 holds P key–value pairs ``k₁ v₁ … k_P v_P`` (keys from
one range of the vocabulary, values from another) padded with filler tokens; segments 1 … D−1
are filler; segment D asks for the pairs again in a shuffled order, ``k_i v_i``, and the score
is the accuracy of predicting each v_i after its k_i. A model reads the sample segment by
segment, so the values are D segments back: without a memory the answer is chance (1/|values|).

Each memory is trained as in its paper: memories that back-propagate through the segments of a
call (rmt, autocompressor, memformer: BPTT; block_recurrent: the state through every block of a
call) get the whole sample in one call, cut into segments of S inside; the others (xl_memory,
compressive, memorizing, sparse_long_memory) get one segment per call with their memory carried
and stop-gradient. ``memory_tokens`` (Memory Transformer) is a bidirectional encoder whose [mem]
tokens live inside one sequence: it reads each segment on its own (the queried values replaced
by a mask token, predicted at their own positions), so it has no path across a segment boundary
and measures what in-segment memory tokens give here. Every variant shares the width, depth,
heads, rope, the optimiser, the steps and the batch: an equal budget. The recall loop is this
study's own (the task is not a text corpus the Trainer reads).

Bits per character (the second part): for each memory, a causal LM with that memory and the
same LM without it are trained through the project's Trainer (``tevo.train``: the Shakespeare
bytes read in order in lanes, memory carried across steps, as ``tevo train`` runs a config with
``model.memory``) for the same steps, batch and segment length, then scored on the whole test
split (held-out works) as ``tevo eval RUN --split test`` scores them (the memory read in order,
lane after lane). The page gives the paired difference on / off per seed with its 95 %
t-interval.
"""
from __future__ import annotations

import math
import time

import tempfile
from pathlib import Path

from ..registry import BENCHMARKS, MEMORIES
from ._common import (Command, Deadline, Option, Study, count_params, fmt, mean_sd, new_report,
                      pick_device, sanitize, stderr)

BPC_DEFAULT = ["xl_memory", "compressive", "rmt", "block_recurrent", "memorizing",
               "memory_tokens"]

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
    Option("bpc_memories", "strs", BPC_DEFAULT, "memories scored on / off in bits per "
                                                "character (empty: skip that part)"),
    Option("bpc_steps", "int", 400, "Trainer steps of each bits-per-character run", quick=4),
    Option("bpc_seq_len", "int", 32, "segment length (data.seq_len) of those runs", quick=16),
    Option("bpc_batch", "int", 16, "lanes (train.batch_size) of those runs", quick=4),
    Option("bpc_d_model", "int", 32, "width of those runs (n_layers: --n-layers)", quick=16),
    Option("bpc_lr", "float", 6e-3, "learning rate of those runs (tevo train's default)"),
    Option("bpc_eval_batches", "int", 0, "test batches of 64 rows scored per run (0: the whole "
                                         "test split, the same text on and off)", quick=2),
    Option("work_dir", "str", None, "folder for the Trainer runs (default: a temporary one)"),
)

# memories whose gradient crosses the segments of one call (BPTT / the block recurrence): the
# sample is one call, cut into segments of S inside
SPLITTING = ("rmt", "autocompressor", "memformer", "block_recurrent")
ENCODERS = ("memory_tokens",)            # bidirectional models: the answers are masked


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
            "memory_tokens": None,           # a model (arch), not a memory: see _model_config
            }.get(name, "unknown")


def _model_config(name: str, spec, task, opts: dict) -> dict:
    S, D = opts["segment"], task.D
    cfg = {"arch": "gpt", "vocab_size": task.vocab_size, "d_model": opts["d_model"],
           "n_layers": opts["n_layers"], "max_len": max(64, (D + 1) * S + 16),
           "mixer": {"name": "softmax", "heads": 4}, "position": "rope", "dropout": 0.0}
    if name == "memory_tokens":          # + one [mask] id; 4 [mem] tokens per segment
        cfg.update(arch="memory_tokens", vocab_size=task.vocab_size + 1,
                   extra={"mem_tokens": 4, "mem_variant": "memtr"})
    if spec is not None:
        cfg["memory"] = spec
    return cfg


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


def _logits(model, ids, name: str, S: int, pos=None, mask_id=None):
    """(logits (B, T, V), auxiliary loss) of a sample read as its memory is trained (module
    docstring), and the positions whose logits predict the answers ids[:, pos + 1]."""
    import torch
    if name in ENCODERS:                 # bidirectional: hide the answers, predict them there
        x = ids.clone()
        x[:, pos + 1] = mask_id
        out = [model(x[:, s:s + S]) for s in range(0, ids.shape[1], S)]
        return torch.cat([o.logits for o in out], 1), 0.0, pos + 1
    if name == "none":
        out = [model(ids[:, s:s + S]) for s in range(0, ids.shape[1], S)]
        return torch.cat([o.logits for o in out], 1), 0.0, pos
    if name in SPLITTING:
        o = model.forward_segment(ids)
        return o.logits, o.aux_loss, pos
    mem, outs, aux = None, [], 0.0
    for s in range(0, ids.shape[1], S):
        o = model.forward_segment(ids[:, s:s + S], mem)
        outs.append(o.logits)
        aux = aux + o.aux_loss
        mem = o.state
    return torch.cat(outs, 1), aux, pos


def _run_one(name, spec, task, opts, seed, dev, deadline):
    import torch
    import torch.nn.functional as F

    import tevo
    S = opts["segment"]
    torch.manual_seed(seed)
    model = tevo.build_model(_model_config(name, spec, task, opts)).to(dev).train()
    mask_id = task.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    steps, warm = opts["steps"], max(1, opts["steps"] // 10)
    t0, c0 = time.time(), time.process_time()
    for step in range(steps):
        if deadline.expired():
            return None
        lr = opts["lr"] * min(1.0, (step + 1) / warm) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, pos = task.sample(opts["batch"], gen)
        ids = ids.to(dev)
        logits, aux, at = _logits(model, ids, name, S, pos, mask_id)
        loss = F.cross_entropy(logits[:, at].flatten(0, 1), ids[:, pos + 1].flatten()) + aux
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
            logits, _, at = _logits(model, ids, name, S, pos, mask_id)
            pred = logits[:, at].argmax(-1)
            correct += int((pred == ids[:, pos + 1]).sum())
            total += pred.numel()
    return {"accuracy": correct / total, "final_loss": loss.item(), "wall_s": time.time() - t0,
            "cpu_s": time.process_time() - c0, "params": count_params(model)}


def bpc_spec(name: str, L: int):
    """The memory of each variant in the bits-per-character runs (segments of L tokens); the
    memories that back-propagate through segments get two segments of L/2 per step."""
    h = max(1, L // 2)
    return {"xl_memory": {"name": "xl_memory", "mem_len": L},
            "compressive": {"name": "compressive", "mem_len": L, "cmem_len": L, "rate": 2},
            "sparse_long_memory": {"name": "sparse_long_memory", "mem_len": 2 * L},
            "lamemo": {"name": "lamemo", "mem_len": L},
            "rmt": {"name": "rmt", "mem_tokens": 4, "segment": h, "bptt": 2},
            "autocompressor": {"name": "autocompressor", "summary": 2, "segment": h,
                               "bptt": 2, "max_summaries": 8},
            "memformer": {"name": "memformer", "slots": 4, "segment": h, "bptt": 2,
                          "heads": 4},
            "block_recurrent": {"name": "block_recurrent", "block": h, "states": 4,
                                "heads": 4},
            "memorizing": {"name": "memorizing", "mem_len": L, "mem_size": 8 * L, "k": 8},
            }.get(name, "unknown")


def bpc_config(spec, seed: int, opts: dict, run_dir: Path):
    """The RunConfig of one bits-per-character run: ``tevo train``'s default config (the
    Shakespeare bytes, whole works held out) at this study's size, with ``spec`` as
    ``model.memory`` (None: no memory)."""
    from ..config import load_config
    L, steps = int(opts["bpc_seq_len"]), int(opts["bpc_steps"])
    cfg = load_config("default", [
        f"model.d_model={int(opts['bpc_d_model'])}", f"model.n_layers={int(opts['n_layers'])}",
        f"model.max_len={max(64, 2 * L + 16)}", f"data.seq_len={L}",
        f"train.steps={steps}", f"train.batch_size={int(opts['bpc_batch'])}",
        f"train.lr={float(opts['bpc_lr'])}", f"train.warmup={max(1, steps // 10)}",
        "train.max_minutes=null", "train.eval_every=0", "train.ckpt_every=0",
        "train.final_eval_batches=1", "train.sample_tokens=0", "train.progress=false",
        "train.plot=false", "train.precision=fp32", f"train.seed={int(seed)}",
        f"train.threads={int(opts.get('threads') or 1)}", f"train.out_dir={run_dir}",
        f"train.device={opts.get('device') or 'auto'}"])
    cfg.model.memory = spec
    return cfg


def _bpc_run(spec, seed: int, opts: dict, run_dir: Path) -> dict:
    """Train through the Trainer, then score the whole test split as ``tevo eval --split test``
    does (a memory read in order, lane after lane)."""
    from ..train.evaluate import evaluate
    from ..train.run import load_run
    from ..train.trainer import train
    c0 = time.process_time()
    s = train(bpc_config(spec, seed, opts, run_dir), run_dir=run_dir)
    run = load_run(run_dir, opts.get("device") or "auto")
    r = evaluate(run.model, run.objective, run.data, "test", 64,
                 int(opts.get("bpc_eval_batches") or 0) or None, run.device, "fp32")
    return {"test_bits_per_char": r["bits_per_char"], "test_tokens": r["eval_tokens"],
            "steps": s.get("steps"), "tokens": s.get("tokens"), "params": s.get("params"),
            "final_train_loss": s.get("final_train_loss"),
            "train_seconds": s.get("train_seconds"), "cpu_s": time.process_time() - c0}


def run_memory(opts: dict) -> list:
    from ..registry import MODELS
    dev = pick_device(opts["device"])
    rep = new_report("memory", "memory", "Segment memories: recall across segments and bits "
                     "per character, each at one budget", opts,
                     intro=__doc__.split("\n\n", 1)[1].replace("\n", " ").split(
                         "Each memory is trained")[0].strip())
    rep.notes.append("Recall: trained with this study's own loop (bench/memory.py; the task is "
                     "not a corpus), the memory carried as in its paper. Bits per character: "
                     "every run through the Trainer (tevo.train), as tevo train runs a config "
                     "with model.memory.")
    if opts["quick"]:
        rep.notes.append("--quick trains far too briefly for recall to be learnt: the numbers "
                         "check the harness, not the memories.")
    names = []
    for n in opts["memories"]:
        if n in ENCODERS and n in MODELS:
            names.append(n)
        elif n != "none" and n not in MEMORIES:
            rep.skip(n, "not a registered memory (not implemented yet)")
        elif memory_spec(n, 1, 1, 1) == "unknown":
            rep.skip(n, "no study configuration for this memory")
        else:
            names.append(n)
    bpc_names = []
    for n in opts["bpc_memories"]:
        if n in ENCODERS:
            rep.skip(f"{n} (bits per character)", "a bidirectional encoder: it has no "
                     "next-token distribution, so no bits per character on / off")
        elif n not in MEMORIES:
            rep.skip(f"{n} (bits per character)", "not a registered memory")
        elif bpc_spec(n, 2) == "unknown":
            rep.skip(f"{n} (bits per character)", "no study configuration for this memory")
        else:
            bpc_names.append(n)
    work = Path(opts["work_dir"] or tempfile.mkdtemp(prefix="tevo-memory-"))
    deadline = Deadline(opts["max_minutes"])
    runs: dict = {}                                 # (name, D) -> [result per seed]
    bpc: dict = {}                                  # name ("none": off) -> {seed: result}
    tasks = {D: RecallAcrossSegments(opts["segment"], D, opts["pairs"], opts["keys"],
                                     opts["values"]) for D in sorted(opts["distances"])}
    # seeds outermost: a study cut by --max-minutes keeps whole seeds of both parts
    for seed in range(opts["seed"], opts["seed"] + opts["seeds"]):
        for D, task in tasks.items():
            for name in names:
                key = f"{name} D={D} seed={seed}"
                if deadline.expired():
                    rep.skip(key, deadline.reason())
                    continue
                stderr(f"[memory] {key}")
                try:
                    r = _run_one(name, memory_spec(name, opts["segment"], D, opts["d_model"]),
                                 task, opts, seed, dev, deadline)
                except Exception as e:
                    rep.error(key, e)
                    continue
                if r is None:
                    rep.skip(key, "study time limit reached during its training (--max-minutes)")
                    continue
                runs.setdefault((name, D), []).append({"seed": seed, **r})
        for name in (["none"] + bpc_names) if bpc_names else []:
            key = f"bits per character: {name if name != 'none' else 'no memory'} seed={seed}"
            if deadline.expired():
                rep.skip(key, deadline.reason())
                continue
            stderr(f"[memory] {key}")
            try:
                bpc.setdefault(name, {})[seed] = _bpc_run(
                    None if name == "none" else bpc_spec(name, opts["bpc_seq_len"]), seed, opts,
                    work / f"{name}-s{seed}")
            except Exception as e:
                rep.error(key, e)
    res: dict = {}
    for (name, D), rs in runs.items():
        m, sd = mean_sd([r["accuracy"] for r in rs])
        res.setdefault(name, {})[str(D)] = {"mean": m, "sd": sd, "runs": rs}
    chance = 1.0 / opts["values"]
    cols = [str(D) for D in sorted(opts["distances"])]
    rows = [[n] + [(f"{fmt(res[n][c]['mean'], 3)} ± {fmt(res[n][c]['sd'], 2)} "
                    f"(n={len(res[n][c]['runs'])})" if c in res[n] else "—") for c in cols]
            for n in names if n in res]
    cpu = sum(r["cpu_s"] for rs in runs.values() for r in rs)
    rep.table(["memory"] + [f"D={c}" for c in cols], rows, heading="Accuracy per distance",
              note=f"Mean ± sd over seeds of the accuracy on the queried values (chance "
                   f"{chance:.3f}); D = segments between the pairs and the queries, "
                   f"S = {opts['segment']}, {opts['pairs']} pairs, {opts['keys']} keys, "
                   f"{opts['values']} values, {opts['steps']} steps of {opts['batch']} samples "
                   f"(lr {opts['lr']:g}), d_model {opts['d_model']}, {opts['n_layers']} layers, "
                   f"{opts['eval_examples']} held-out samples per point; "
                   f"{cpu / 60:.1f} CPU-minutes in all.")
    rep.figure("accuracy", "accuracy per distance", _plot(res, cols, chance))
    rep.section("Paper claims against this run: recall",
                _claims(res, cols, chance, opts))
    bpc_rows, diffs = _bpc_table(bpc, bpc_names)
    rep.data = sanitize({"distances": opts["distances"], "chance": chance, "results": res,
                         "bits_per_char": {n: {str(k): v for k, v in d.items()}
                                           for n, d in bpc.items()},
                         "bits_per_char_differences": diffs, "work_dir": str(work)})
    if bpc_names:
        bcpu = sum(r["cpu_s"] for d in bpc.values() for r in d.values())
        rep.table(["memory", "bits/char off", "bits/char on", "Δ on − off [95 % CI]",
                   "verdict", "seeds"], bpc_rows,
                  heading="Bits per character on the held-out works, each memory on vs off",
                  note=f"Mean ± sd over seeds of the bits per character on the whole test "
                       f"split (held-out works: Julius Caesar, The Tempest); Δ is the paired "
                       f"difference per seed (the off run of a seed is the same for every "
                       f"memory) with its 95 % t-interval. Each run: tevo train's default "
                       f"config at d_model {opts['bpc_d_model']}, {opts['n_layers']} layers, "
                       f"segments of {opts['bpc_seq_len']} bytes, {opts['bpc_batch']} lanes, "
                       f"{opts['bpc_steps']} steps (lr {opts['bpc_lr']:g}); rmt and "
                       f"block_recurrent run two segments (blocks) of "
                       f"{max(1, opts['bpc_seq_len'] // 2)} per step, so gradient crosses one "
                       f"segment boundary; {bcpu / 60:.1f} CPU-minutes in all. A small budget: "
                       f"the models are far from converged.")
        rep.section("Paper claims against this run: bits per character",
                    _bpc_claims(diffs, bpc_names))
    return [rep]


def _bpc_table(bpc: dict, names: list) -> tuple[list, dict]:
    from ..train.sweep import paired_difference
    off = bpc.get("none", {})
    rows, diffs = [], {}
    om, osd = mean_sd([r["test_bits_per_char"] for r in off.values()])
    for n in names:
        on = bpc.get(n, {})
        seeds = sorted(set(on) & set(off))
        if not seeds:
            continue
        d = paired_difference([on[s]["test_bits_per_char"] for s in seeds],
                              [off[s]["test_bits_per_char"] for s in seeds])
        diffs[n] = d
        m, sd = mean_sd([on[s]["test_bits_per_char"] for s in seeds])
        verdict = ("no measurable difference" if not d["measurable"] else
                   "the memory helps" if d["hi"] < 0 else "the memory hurts")
        rows.append([n, f"{fmt(om, 4)} ± {fmt(osd, 2)}", f"{fmt(m, 4)} ± {fmt(sd, 2)}",
                     f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]", verdict, len(seeds)])
    return rows, diffs


BPC_CLAIMS = {
    "xl_memory": "Transformer-XL (§4): the segment-level recurrence lowers the bits per "
                 "character of character-level language modelling",
    "compressive": "Compressive Transformer (§5): the compressed memory lowers the bits per "
                   "character (the paper compares with Transformer-XL; Δ here is against no "
                   "memory, the xl_memory row gives the other side)",
    "rmt": "RMT (§4): memory tokens lower the perplexity of segment-wise language modelling",
    "block_recurrent": "Block-Recurrent Transformer (§4): the recurrent state lowers the "
                       "perplexity of long-document language modelling",
    "memorizing": "Memorizing Transformer (§4): kNN memory lowers the perplexity of language "
                  "modelling",
}


def _bpc_claims(diffs: dict, names: list) -> str:
    lines = []
    for n in names:
        claim = BPC_CLAIMS.get(n, f"{n}: the memory lowers the bits per character")
        d = diffs.get(n)
        if d is None:
            lines.append(f"- {claim}: not measured in this run.")
            continue
        ci = f"Δ = {d['mean']:+.4f} bits/char, 95 % CI [{d['lo']:+.4f}, {d['hi']:+.4f}], " \
             f"n = {d['n']}"
        if not d["measurable"]:
            v = "not reproduced at this budget: no measurable difference"
        elif d["hi"] < 0:
            v = "reproduced: the memory lowers the bits per character"
        else:
            v = "not reproduced: the memory raises the bits per character at this budget"
        lines.append(f"- {claim}: {v} ({ci}).")
    return "\n".join(lines)


def _claims(res, cols, chance, opts) -> str:
    """One sentence per paper claim, each verdict computed from the accuracies: a distance is
    'learnt' when the mean accuracy exceeds both 2 × chance and chance + 0.2, 'at chance' when
    it is below chance + 0.1."""
    def acc(n, c):
        return res.get(n, {}).get(c, {}).get("mean")

    def learnt(n, c):
        a = acc(n, c)
        return a is not None and a > max(2 * chance, chance + 0.2)

    def at_chance(n, c):
        a = acc(n, c)
        return a is not None and a < chance + 0.1

    def show(n):
        return ", ".join(f"D={c}: {acc(n, c):.3f}" for c in cols if acc(n, c) is not None)

    lines = []
    L, S = opts["n_layers"], opts["segment"]
    base_ok = all(at_chance("none", c) for c in cols if acc("none", c) is not None) \
        and "none" in res
    xl_ok = learnt("xl_memory", cols[0])
    lines.append(f"- Does this budget answer the question? The no-memory baseline is "
                 f"{'at chance at every distance' if base_ok else 'NOT at chance everywhere'} "
                 f"({show('none') or 'not measured'}; chance {chance:.3f}) and xl_memory "
                 f"{'learns' if xl_ok else 'does NOT learn'} the shortest distance "
                 f"({show('xl_memory') or 'not measured'}): "
                 f"{'yes' if base_ok and xl_ok else 'no, the verdicts below say little'}.")
    if "xl_memory" in res:
        reach = [c for c in cols if int(c) <= L]          # mem_len = S: L·M = L segments
        ok = all(learnt("xl_memory", c) for c in reach if acc("xl_memory", c) is not None) and \
            all(at_chance("xl_memory", c) for c in cols if c not in reach
                and acc("xl_memory", c) is not None)
        part = any(learnt("xl_memory", c) for c in reach)
        lines.append(f"- Transformer-XL (§3.2): with memory length M = S and {L} layers the "
                     f"longest dependency is about {L}·M tokens, so recall at D ≤ {L} and chance "
                     f"beyond: {'reproduced' if ok else 'partly reproduced' if part else 'not reproduced at this budget'} "
                     f"({show('xl_memory')}).")
    if "compressive" in res:
        far = [c for c in cols if int(c) > L]
        better = [c for c in far if learnt("compressive", c) and not learnt("xl_memory", c)]
        lines.append(f"- Compressive Transformer (§3): compressed memories (rate 2, "
                     f"{S} slots) keep segments older than Transformer-XL's memory reachable, "
                     f"so compressive should recall at D > {L} where xl_memory cannot: "
                     f"{'reproduced at D=' + ','.join(better) if better else 'not reproduced at this budget'} "
                     f"({show('compressive')}).")
    for n, claim, need in (
            ("rmt", "RMT (§3): memory tokens carried from segment to segment (BPTT through "
                    "all D+1 segments here) transmit information across segments", cols),
            ("block_recurrent", "Block-Recurrent Transformer (§3): the gated recurrent state "
                                "carries information past the sliding window of two blocks "
                                "(recall at D ≥ 2)", [c for c in cols if int(c) >= 2]),
            ("memorizing", "Memorizing Transformer (§3): kNN retrieval over a store of 8 "
                           "segments reaches any past segment in it", cols)):
        if n not in res:
            lines.append(f"- {claim}: not measured in this run.")
            continue
        got = [c for c in need if learnt(n, c)]
        v = ("reproduced" if got and len(got) == len(need) else
             f"partly reproduced (learnt at D={','.join(got)})" if got else
             "not reproduced at this budget")
        lines.append(f"- {claim}: {v} ({show(n)}).")
    if "memory_tokens" in res:
        flat = all(at_chance("memory_tokens", c) for c in cols
                   if acc("memory_tokens", c) is not None)
        lines.append(f"- Memory Transformer (§2) claims [mem] tokens help as a workspace "
                     f"inside one sequence, not across segments; read segment by segment they "
                     f"have no path to an earlier segment, and this run "
                     f"{'agrees: chance at every distance' if flat else 'does NOT show chance everywhere (a leak to investigate)'} "
                     f"({show('memory_tokens')}).")
    return "\n".join(lines)


def _plot(res, cols, chance):
    def draw(fig):
        ax = fig.add_subplot(111)
        xs = [int(c) for c in cols]
        for i, (n, r) in enumerate(res.items()):
            pts = [(int(c), r[c]["mean"], r[c]["sd"]) for c in cols if c in r]
            if pts:
                dx = 0.04 * (i - len(res) / 2)           # offsets keep error bars apart
                ax.errorbar([p[0] * (1 + dx) for p in pts], [p[1] for p in pts],
                            [0.0 if p[2] != p[2] else p[2] for p in pts],
                            marker="o", capsize=3, label=n)
        ax.axhline(chance, color="grey", ls=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel("distance D (segments between pairs and queries)")
        ax.set_ylabel("accuracy (mean ± sd over seeds)")
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
                                  "budget (accuracy per distance, mean ± sd over seeds) and "
                                  "bits per character with each memory on vs off",
                        OPTIONS, run_memory, quick_minutes=3.0),)
