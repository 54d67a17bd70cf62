"""The reference study (``tevo bench reference``): tevo beside other libraries, when they are
installed — x-transformers and Hugging Face transformers' GPT-2 and Llama — on the same
architecture (layers, width, heads, vocabulary, sequence length, batch), all built from configs
with random weights. Training-step time (forward, loss, backward, AdamW) and decode tokens/s
(batch 1, KV cache, greedy) are measured in one process, the libraries taking turns after a
warm-up, and reported as ratios to tevo with min / median / max over the rounds; model FLOPs
utilisation is the counted FLOPs of a step over its time, against this machine's measured
matrix-multiply peak in fp32 and bf16.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import time
from contextlib import nullcontext

from ..registry import BENCHMARKS, FFNS, NORMS, POSITIONS
from ._common import (Command, Deadline, Option, Study, count_params, flop_counter, fmt,
                      median, new_report, pick_device, sanitize, stderr)


# -- the machine's peak -----------------------------------------------------------------------
def matmul_peak(dtype: str, size: int = 2048, seconds: float = 2.0, device="cpu") -> float:
    """Best measured FLOP/s of a square matrix product of ``size`` in ``dtype``."""
    import torch
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size, device=device).to(dt)
    b = torch.randn(size, size, device=device).to(dt)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return best


# -- models of each library -------------------------------------------------------------------
def tevo_config(arch: str, c: dict) -> dict:
    if arch == "gpt2":
        return {"arch": "gpt", "vocab_size": c["vocab"], "d_model": c["d"], "n_layers": c["layers"],
                "max_len": c["seq"], "mixer": {"name": "softmax", "heads": c["heads"]},
                "ffn": {"name": "mlp", "mult": 4, "activation": "gelu_tanh"},
                "norm": "layernorm", "residual": "pre_ln", "position": "learned",
                "tie_embeddings": True, "dropout": 0.0}
    return {"arch": "gpt", "vocab_size": c["vocab"], "d_model": c["d"], "n_layers": c["layers"],
            "max_len": c["seq"], "mixer": {"name": "softmax", "heads": c["heads"], "bias": False},
            "ffn": {"name": "swiglu", "d_ff": llama_ff(c["d"])}, "norm": "rmsnorm",
            "residual": "pre_ln", "position": "rope", "tie_embeddings": True, "dropout": 0.0}


def llama_ff(d: int) -> int:
    """SwiGLU hidden size 2/3 · 4d (the LLaMA rule without rounding)."""
    return int(2 * 4 * d / 3)


def build_tevo(arch, c):
    import tevo
    return tevo.build_model(tevo_config(arch, c))


def build_hf(arch, c):
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=c["vocab"], n_positions=c["seq"], n_embd=c["d"],
                         n_layer=c["layers"], n_head=c["heads"], resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                         bos_token_id=0, eos_token_id=0)
        cfg._attn_implementation = "sdpa"
        return GPT2LMHeadModel(cfg)
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=c["vocab"], hidden_size=c["d"], intermediate_size=llama_ff(c["d"]),
                      num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                      num_key_value_heads=c["heads"], max_position_embeddings=c["seq"],
                      tie_word_embeddings=True, attention_bias=False, bos_token_id=0,
                      eos_token_id=0, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def build_x(arch, c):
    from x_transformers import Decoder, TransformerWrapper
    if arch == "gpt2":
        layers = Decoder(dim=c["d"], depth=c["layers"], heads=c["heads"], attn_flash=True,
                         attn_dim_head=c["d"] // c["heads"])
        return TransformerWrapper(num_tokens=c["vocab"], max_seq_len=c["seq"],
                                  attn_layers=layers, tie_embedding=True)
    layers = Decoder(dim=c["d"], depth=c["layers"], heads=c["heads"], attn_flash=True,
                     attn_dim_head=c["d"] // c["heads"], rotary_pos_emb=True,
                     rotary_emb_dim=c["d"] // c["heads"], ff_no_bias=True, use_rmsnorm=True,
                     ff_glu=True, ff_swish=True,
                     ff_mult=llama_ff(c["d"]) / c["d"])
    return TransformerWrapper(num_tokens=c["vocab"], max_seq_len=c["seq"], attn_layers=layers,
                              tie_embedding=True, use_abs_pos_emb=False)


LIBRARIES = {              # name: (module, distribution, builder)
    "tevo": (None, "tevo", build_tevo),
    "x-transformers": ("x_transformers", "x-transformers", build_x),
    "hf-transformers": ("transformers", "transformers", build_hf),
}

DIFFERENCES = {
    "x-transformers": "LayerNorm without bias, attention projections without bias, "
                      "scaled absolute position embedding and tied output (GPT-2 pair); a bias "
                      "in the SwiGLU input projection (Llama pair)",
    "hf-transformers": "the reference GPT-2 / Llama implementations (sdpa attention)",
}


def logits_of(lib: str, model, ids):
    out = model(ids)
    return out if lib == "x-transformers" else out.logits


# -- measurements -----------------------------------------------------------------------------
class Runner:
    """One library's model, optimiser and batch: ``step()`` trains once, ``decode(k)`` greedily
    generates k tokens with the library's KV cache."""

    def __init__(self, lib: str, model, c: dict, dtype: str, device):
        import torch
        self.lib, self.model, self.c, self.dtype = lib, model.to(device), c, dtype
        self.device = device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, c["vocab"], (c["batch"], c["seq"] + 1), generator=g).to(device)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def _ac(self):
        import torch
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def step(self) -> None:
        import torch.nn.functional as F
        self.model.train()
        x, y = self.ids[:, :-1], self.ids[:, 1:]
        with self._ac():
            logits = logits_of(self.lib, self.model, x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sync()

    def decode(self, prompt: int, new: int) -> None:
        import torch
        self.model.eval()
        seq = self.ids[:1, :prompt]
        with torch.no_grad(), self._ac():
            if self.lib == "tevo":
                out = self.model(seq, state=self.model.init_state(1))
                for _ in range(new):
                    nxt = out.logits[:, -1:].argmax(-1)
                    out = self.model(nxt, state=out.state)
            elif self.lib == "hf-transformers":
                out = self.model(seq, use_cache=True)
                for _ in range(new):
                    nxt = out.logits[:, -1:].argmax(-1)
                    out = self.model(nxt, past_key_values=out.past_key_values, use_cache=True)
            else:
                logits, cache = self.model(seq, return_intermediates=True, cache=None)
                for _ in range(new):
                    seq = torch.cat([seq, logits[:, -1:].argmax(-1)], 1)
                    logits, cache = self.model(seq, return_intermediates=True, cache=cache)
        self.sync()

    def step_flops(self) -> float:
        """FLOPs of one training step (forward + backward), counted once."""
        import torch.nn.functional as F
        fc = flop_counter()
        x, y = self.ids[:, :-1], self.ids[:, 1:]
        with fc:
            logits = logits_of(self.lib, self.model, x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return float(fc.get_total_flops())


def alternate(runners: dict, fn_name: str, rounds: int, reps: int, deadline, *args) -> dict:
    """Time ``reps`` calls per library per round, libraries taking turns (the order rotates each
    round); returns {lib: [seconds per call, one per round]}."""
    libs = list(runners)
    times = {lib: [] for lib in libs}
    for r in range(rounds):
        if r and deadline.expired():
            break
        order = libs[r % len(libs):] + libs[:r % len(libs)]
        for lib in order:
            fn = getattr(runners[lib], fn_name)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(*args)
            times[lib].append((time.perf_counter() - t0) / reps)
    return times


def ratio_stats(times: dict, ref: str = "tevo") -> dict:
    """Per library: its time over tevo's, round by round → min / median / max (> 1: tevo is
    faster)."""
    out = {}
    for lib, ts in times.items():
        if lib == ref:
            continue
        rs = [a / b for a, b in zip(ts, times[ref]) if b > 0]
        if rs:
            out[lib] = {"min": min(rs), "median": median(rs), "max": max(rs), "rounds": rs}
    return out


OPTIONS = (
    Option("archs", "strs", ["gpt2", "llama"], "architectures: gpt2, llama"),
    Option("libraries", "strs", list(LIBRARIES), "libraries (those not installed are skipped)"),
    Option("dtype", "strs", ["fp32", "bf16"], "fp32 and/or bf16 (autocast)"),
    Option("layers", "int", 6, "layers", quick=2),
    Option("d_model", "int", 384, "width", quick=128),
    Option("heads", "int", 6, "heads", quick=4),
    Option("vocab", "int", 1024, "vocabulary"),
    Option("seq_len", "int", 256, "sequence length", quick=128),
    Option("batch", "int", 8, "batch", quick=4),
    Option("rounds", "int", 5, "alternating rounds", quick=3),
    Option("reps", "int", 3, "steps per library per round", quick=2),
    Option("decode_tokens", "int", 128, "tokens generated per decode run", quick=32),
    Option("prompt", "int", 32, "prompt length for decoding", quick=16),
    Option("peak_size", "int", 2048, "matrix size of the peak measurement", quick=1024),
)

_INTRO = """tevo against other libraries on the same decoder: {L} layers, width {d}, {h} heads,
vocabulary {V}, {B} × {n} tokens per training step. *GPT-2*: learned positions, pre-LN
LayerNorm, tanh-GELU MLP 4×, tied embeddings. *Llama*: RoPE, RMSNorm, SwiGLU (hidden
{ff}), no biases, tied embeddings. All built from configs with random weights. A training step
is forward + cross-entropy + backward + AdamW; decoding generates {G} tokens greedily after a
{P}-token prompt, batch 1, with each library's KV cache. Libraries take turns in one process
after a warm-up ({R} rounds of {k} calls, the order rotating); ratios are the other library's
time over tevo's, per round (> 1: tevo is faster). MFU: counted FLOPs of one step (torch's
counter) / step time / this machine's measured matrix-multiply peak in that precision."""


def run_reference(opts: dict) -> list:
    import torch
    dev = pick_device(opts["device"])
    c = {"layers": opts["layers"], "d": opts["d_model"], "heads": opts["heads"],
         "vocab": opts["vocab"], "seq": opts["seq_len"], "batch": opts["batch"]}
    rep = new_report("reference", "reference", "tevo beside x-transformers and Hugging Face",
                     opts, intro=_INTRO.format(L=c["layers"], d=c["d"], h=c["heads"], V=c["vocab"],
                                               B=c["batch"], n=c["seq"], ff=llama_ff(c["d"]),
                                               G=opts["decode_tokens"], P=opts["prompt"],
                                               R=opts["rounds"], k=opts["reps"]))
    deadline = Deadline(opts["max_minutes"])
    versions = {"torch": torch.__version__}
    libs = []
    for lib in opts["libraries"]:
        if lib not in LIBRARIES:
            rep.skip(lib, f"unknown library (valid: {', '.join(LIBRARIES)})")
            continue
        mod, dist, _ = LIBRARIES[lib]
        if mod and importlib.util.find_spec(mod) is None:
            rep.skip(lib, f"not installed (pip install {dist})")
            continue
        if mod:
            try:
                importlib.import_module(mod)
            except Exception as e:                      # a broken install is reported
                rep.skip(lib, f"import failed: {type(e).__name__}: {e}")
                continue
        try:
            versions[lib] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "?"
        libs.append(lib)
    peaks = {}
    for dt in opts["dtype"]:
        stderr(f"[reference] matmul peak {dt}")
        peaks[dt] = matmul_peak(dt, opts["peak_size"], 2.0 if opts["quick"] else 4.0, dev)
    results = {}
    for arch in opts["archs"]:
        if arch == "llama":
            miss = [f"{k} {n!r}" for k, n, reg in (("position", "rope", POSITIONS),
                                                   ("ffn", "swiglu", FFNS),
                                                   ("norm", "rmsnorm", NORMS)) if n not in reg]
            if miss:
                rep.skip("llama", "tevo lacks " + ", ".join(miss))
                continue
        for dt in opts["dtype"]:
            key = f"{arch} {dt}"
            if deadline.expired():
                rep.skip(key, deadline.reason())
                continue
            runners, params = {}, {}
            for lib in libs:
                torch.manual_seed(opts["seed"])
                try:
                    model = LIBRARIES[lib][2](arch, c)
                    runners[lib] = Runner(lib, model, c, dt, dev)
                    params[lib] = count_params(model)
                    runners[lib].step()                     # warm-up (twice: allocator, kernels)
                    runners[lib].step()
                    runners[lib].decode(opts["prompt"], 4)
                except Exception as e:
                    rep.error(f"{lib} {key}", e)
                    runners.pop(lib, None)
            if "tevo" not in runners:
                rep.skip(key, "tevo failed to build or run")
                continue
            stderr(f"[reference] {key}: training steps")
            steps = alternate(runners, "step", opts["rounds"], opts["reps"], deadline)
            stderr(f"[reference] {key}: decoding")
            dec = alternate(runners, "decode", opts["rounds"], 1, deadline, opts["prompt"],
                            opts["decode_tokens"])
            flops = {}
            for lib, r in runners.items():
                try:
                    flops[lib] = r.step_flops()
                except Exception as e:
                    rep.error(f"{lib} {key} FLOP count", e)
            res = {}
            for lib in runners:
                st = median(steps[lib])
                res[lib] = {"params": params[lib], "step_s": steps[lib], "step_median_s": st,
                            "tokens_per_s_train": c["batch"] * c["seq"] / st,
                            "decode_s": dec[lib],
                            "decode_tokens_per_s": opts["decode_tokens"] / median(dec[lib]),
                            "step_flops": flops.get(lib),
                            "mfu": (flops[lib] / st / peaks[dt]) if lib in flops else None}
            results[key] = {"libraries": res, "step_ratio": ratio_stats(steps),
                            "decode_ratio": ratio_stats(dec)}
            del runners
    rep.data = sanitize({"config": c, "peaks_flops": peaks, "versions": versions,
                         "results": results})
    _tables(rep, results, peaks, versions)
    return [rep]


def _ratio_text(r: dict | None) -> str:
    if not r:
        return "—"
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def _tables(rep, results: dict, peaks: dict, versions: dict) -> None:
    rep.table(["precision", "measured matmul peak"],
              [[dt, f"{p / 1e9:,.0f} GFLOP/s"] for dt, p in peaks.items()],
              heading="This machine's matrix-multiply peak",
              note="Best of repeated square products (torch), the denominator of MFU.")
    rows = []
    for key, r in results.items():
        for lib, v in r["libraries"].items():
            rows.append([key, lib, fmt(v["params"]), f"{v['step_median_s'] * 1e3:,.1f} ms",
                         fmt(v["tokens_per_s_train"]),
                         _ratio_text(r["step_ratio"].get(lib)) if lib != "tevo" else "1 (ref.)",
                         fmt(v["decode_tokens_per_s"]),
                         _ratio_text(r["decode_ratio"].get(lib)) if lib != "tevo" else "1 (ref.)",
                         "—" if v["mfu"] is None else f"{100 * v['mfu']:.1f}%"])
    rep.table(["model / precision", "library", "params", "train step (median)", "train tokens/s",
               "step time ÷ tevo's: median (min–max)", "decode tokens/s",
               "decode time ÷ tevo's: median (min–max)", "MFU"], rows,
              heading="Side by side",
              note="Ratios > 1: the other library is slower than tevo. Versions: "
                   + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". Differences in "
                   "the peers' architectures: " + "; ".join(f"{k}: {v}" for k, v in
                                                             DIFFERENCES.items()) + ".")

    def draw(fig):
        ax = fig.add_subplot(111)
        keys = list(results)
        libs = sorted({lib for r in results.values() for lib in r["libraries"]})
        w = 0.8 / max(1, len(libs))
        for j, lib in enumerate(libs):
            ax.bar([i + j * w for i in range(len(keys))],
                   [results[k]["libraries"].get(lib, {}).get("step_median_s", 0) * 1e3
                    for k in keys], w, label=lib)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(keys))])
        ax.set_xticklabels(keys)
        ax.set_ylabel("training step, ms (median)")
        ax.legend()
    rep.figure("step", "training-step time per library", draw)


@BENCHMARKS.register(
    "reference", paper="x-transformers (Wang); Hugging Face transformers (Wolf et al., 2020)",
    equation="time ratios to tevo, min / median / max over alternating rounds; "
             "MFU = counted step FLOPs / time / measured matmul peak",
    test="tests/test_bench.py::test_reference_ratios_alternate_and_tevo_configs_match_peers",
    commands=("reference",))
class ReferenceStudy(Study):
    """tevo beside x-transformers and HF GPT-2/Llama: step time, decode tokens/s, MFU."""

    commands = (Command("reference", "tevo vs x-transformers and HF GPT-2/Llama: training step, "
                                     "decode tokens/s, MFU", OPTIONS, run_reference,
                        quick_minutes=1.5),)
