"""``tevo train | eval | generate``.

    tevo train                                   # the default preset: a small GPT on Shakespeare
    tevo train gpt2 model.n_layers=2 data.seq_len=128 train.steps=500
    tevo train --resume runs/default             # continue exactly where it stopped
    tevo eval runs/default --split test --lengths 128,256,512
    tevo generate runs/default --prompt "ROMEO:" --max-new-tokens 300 --top-k 40
    tevo generate runs/default --prompt "ROMEO:" --max-new-tokens 50 --beams 4
    tevo generate runs/default --method pcw --context-file play.txt --window 256 --prompt "Q:"
    tevo finetune runs/bert task=genre           # a labelled task on the pre-trained weights
    tevo finetune runs/default --peft pafi peft.sparsity=0.01 data.corpus=stdlib

Under ``torchrun --nproc_per_node N -m tevo train ...`` the same command trains with DDP.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

DEFAULT_PRESET = "default"


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...]: the first item without '=' is the config."""
    config, overrides = None, []
    for i, it in enumerate(items):
        if "=" in it:
            overrides.append(it)
        elif i == 0:
            config = it
        else:
            from ..errors import ConfigError
            raise ConfigError("train", it, why=f"expected key=value after the config, got {it!r}")
    return config, overrides


def _train(args) -> int:
    from ..config import load_config
    from ..errors import InputError
    from . import distributed
    from .trainer import CONFIG, train
    config, overrides = _split_args(args.args)
    if args.resume:
        if config:
            raise InputError("give a config or --resume RUN_DIR, not both (a resumed run uses "
                             "its own config.yaml; key=value overrides still apply)")
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG).exists():
            raise InputError(f"cannot resume: {run_dir} has no {CONFIG}")
        cfg = load_config(run_dir / CONFIG, overrides)
        summary = train(cfg, run_dir=run_dir, resume=True)
    else:
        cfg = load_config(config or DEFAULT_PRESET, overrides)
        summary = train(cfg)
    distributed.barrier()                  # under torchrun: leave the process group together
    distributed.cleanup()
    if args.json:
        print(json.dumps(_json_safe(summary), indent=1, allow_nan=False))
    if summary.get("stopped") == "interrupted":     # as shells expect: 130 for Ctrl-C
        return 128 + int(summary.get("signal", 2))
    return 0


def _json_safe(v):
    """NaN and ±Inf as null, so that --json output is valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _non_finite(out: dict) -> list[str]:
    """The metrics of an evaluation that are NaN or infinite (per length too)."""
    bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    for r in out.get("lengths") or []:
        bad += [f"{k}@{r['length']}" for k, v in r.items()
                if isinstance(v, float) and not math.isfinite(v)]
    return bad


def _lengths(text: str | None) -> list[int]:
    from ..errors import InputError
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--lengths expects comma-separated integers, got {text!r}") from None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


@contextmanager
def _run_threads(run):
    """Within: the CPU thread setting the run was trained with (``train.threads``)."""
    import torch

    from .trainer import resolve_threads
    old = torch.get_num_threads()
    n = resolve_threads(run.cfg.train.threads)
    if n and run.device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _eval(args) -> int:
    from ..errors import TevoError
    from .run import load_run
    whole = bool(args.data) and args.split is None     # other text: all of it, unless --split
    args.split = "all" if whole else (args.split or "val")
    run = load_run(args.run_dir, args.device, data_overrides=args.data, whole=whole)
    with _run_threads(run):
        out = _evaluate_run(run, args)
    bad = _non_finite(out)
    if args.json:
        print(json.dumps(_json_safe(out), indent=1, allow_nan=False))
    if bad:
        msg = (f"the evaluation of {run.checkpoint} is not finite ({', '.join(bad[:4])}): the "
               f"weights are damaged or training diverged")
        if args.json:
            import sys
            print(f"error: {msg}", file=sys.stderr)
            return 1
        raise TevoError(msg)
    if not args.json:
        _print_eval(run, args, out)
    return 0


def _evaluate_run(run, args) -> dict:
    from .evaluate import evaluate, evaluate_lengths
    tc = run.cfg.train
    bs = args.batch_size or max(1, tc.batch_size // tc.grad_accum)
    lengths = _lengths(args.lengths)
    out = {"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "step": run.step,
           "split": args.split}
    out.update(evaluate(run.model, run.objective, run.data, args.split, bs, args.max_batches,
                        run.device, tc.precision))
    if not out.get("eval_tokens"):
        from ..errors import InputError
        raise InputError(f"the {args.split} split holds no complete window of "
                         f"{run.data.seq_len} tokens; lower data.seq_len (--data seq_len=N)")
    if run.objective.data_format == "image" and run.cfg.objective != "ddpm":   # a classifier
        out.update(_confusion(run, args.split, bs))
    if lengths:
        out["lengths"] = evaluate_lengths(run.model, run.objective, run.data, lengths,
                                          args.split, bs * run.data.seq_len, args.max_batches,
                                          run.device, tc.precision)
    return out


def _confusion(run, split: str, batch_size: int) -> dict:
    """The confusion matrix of an image classifier on ``split``, and its PNG in the run."""
    from .evaluate import confusion_matrix
    from .log import plot_confusion
    m = confusion_matrix(run.model, run.data, split, batch_size, run.device,
                         run.cfg.train.precision)
    out = {"confusion_matrix": m.tolist(), "classes": list(run.data.classes)}
    png = plot_confusion(m, run.data.classes, run.run_dir / f"confusion_{split}.png",
                         f"{run.run_dir.name} @ {run.step}, {split}")
    if png:
        out["confusion_png"] = str(png)
    return out


def _print_eval(run, args, out: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{run.run_dir} @ step {run.step} — {args.split}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in out.items():
        if k not in ("lengths", "run_dir", "checkpoint", "split", "step", "confusion_matrix",
                     "classes"):
            t.add_row(k, _fmt(v))
    Console().print(t)
    if out.get("lengths"):
        t = Table(title="per length")
        for c in ("length", "loss", "bits_per_char", "perplexity", "note"):
            t.add_column(c, justify="right")
        for r in out["lengths"]:
            t.add_row(str(r["length"]), _fmt(r.get("loss", "")), _fmt(r.get("bits_per_char", "")),
                      _fmt(r.get("perplexity", "")), r.get("error", "")[:60])
        Console().print(t)


def _generate(args) -> int:
    from .run import load_run
    run = load_run(args.run_dir, args.device)
    if run.cfg.objective == "ddpm":                   # a diffusion run: a PNG grid of samples
        with _run_threads(run):
            print(_diffusion_samples(run, args))
        return 0
    with _run_threads(run):
        text = _continue_prompt(run, args)
    print(text)
    return 0


def _diffusion_samples(run, args) -> str:
    """``--samples`` images by ancestral sampling (DDPM, Algorithm 2; x̂_0 clipped to
    [−--clip, --clip] unless it is 0) written as one PNG grid (default RUN/samples.png);
    returns its path."""
    import torch

    from ..errors import ConfigError
    from ..models.diffusion import image_grid_png
    n = args.samples
    if not isinstance(n, int) or n < 1:
        raise ConfigError("--samples", n, why="expected a positive integer")
    clip = getattr(args, "clip", 1.0)
    if clip is None or clip < 0:
        raise ConfigError("--clip", clip, why="expected 0 (no clipping) or a positive number")
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    images = run.model.sample(n, generator=gen, clip=clip or None)
    return str(image_grid_png(images, args.out or run.run_dir / "samples.png"))


def _continue_prompt(run, args) -> str:
    import torch

    from ..errors import InputError
    from ..inference.generate import generate
    from .evaluate import autocast
    if run.tokenizer is None or run.objective.data_format != "lm":
        raise InputError(f"{run.run_dir} is not a text language-model run (objective "
                         f"{run.cfg.objective!r}{', synthetic task' if run.cfg.data.task else ''})"
                         f"; generate needs one trained with clm on a corpus")
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    ids = run.tokenizer.encode(prompt)
    if not ids:
        raise InputError("the prompt is empty: give --prompt TEXT")
    x = torch.tensor([ids], device=run.device)
    gen = torch.Generator().manual_seed(args.seed)
    beams = getattr(args, "beams", 1)
    temperature = 0.8 if args.temperature is None else args.temperature
    if beams < 1:
        raise InputError(f"--beams must be >= 1, got {beams}")
    if beams > 1:              # a search: the sampling options have no meaning there
        given = [o for o, v in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                ("--top-p", args.top_p), ("--greedy", args.greedy or None))
                 if v is not None]
        if given:
            raise InputError(f"--beams {beams} is beam search, not sampling: drop "
                             f"{', '.join(given)}")
    method = getattr(args, "method", "generate")
    if method != "generate":
        if beams > 1:
            raise InputError(f"--method {method} decodes by sampling or --greedy, not --beams")
        with autocast(run.device, run.cfg.train.precision):
            new = _context_method(run, args, method, x[0], temperature, gen)
        return prompt + run.tokenizer.decode(new.tolist())
    with autocast(run.device, run.cfg.train.precision):
        if beams > 1:
            from ..inference.beam import beam_search
            out = beam_search(run.model, x, beams, args.max_new_tokens,
                              use_cache=False if args.no_cache else None).sequences
        else:
            out = generate(run.model, x, args.max_new_tokens, temperature=temperature,
                           top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                           use_cache=False if args.no_cache else None, generator=gen)
    return prompt + run.tokenizer.decode(out[0, len(ids):].tolist())


def _context_method(run, args, method, task, temperature, gen):
    """pcw / structured / nbce: the --context texts (or --context-file cut into --window
    tokens) read in parallel, then the prompt continued."""
    import torch

    from ..errors import InputError
    from ..registry import INFERENCE
    texts = list(args.context or [])
    pieces = [run.tokenizer.encode(t) for t in texts]
    if args.context_file:
        from pathlib import Path
        f = Path(args.context_file)
        if not f.exists():
            raise InputError(f"--context-file {f}: no such file")
        ids = run.tokenizer.encode(f.read_text())
        w = args.window
        if w is None or w < 1:
            raise InputError(f"--context-file needs --window N >= 1 (tokens per window), got {w}")
        pieces += [ids[i:i + w] for i in range(0, len(ids), w)]
    pieces = [p for p in pieces if p]
    if not pieces:
        raise InputError(f"--method {method} needs contexts: --context TEXT (repeatable) or "
                         f"--context-file PATH --window N")
    ctx = [torch.tensor(p, device=run.device) for p in pieces]
    name = {"structured": "structured_prompting"}.get(method, method)
    fn = INFERENCE.get(name, "--method").obj
    kw = dict(temperature=temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
              use_cache=False if args.no_cache else None, generator=gen)
    return fn(run.model, ctx, task, args.max_new_tokens, **kw)


def _finetune(args) -> int:
    from ..errors import InputError
    from .finetune import finetune
    task, overrides = "genre", []
    if getattr(args, "peft", None):
        return _peft_finetune(args)
    for it in args.args:
        if "=" not in it:
            raise InputError(f"expected key=value (task=NAME or a config override), got {it!r}")
        if it.startswith("task="):
            from ..config import _parse_value
            task = _parse_value(it.split("=", 1)[1])
        else:
            overrides.append(it)
    s = finetune(args.run_dir, task, overrides)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        ch = s.get("chance", {})
        print(f"test accuracy {s.get('test_accuracy', float('nan')):.4f} on held-out works "
              f"(chance: always '{ch.get('majority_class')}' = "
              f"{ch.get('majority_accuracy', float('nan')):.4f}); run: {s['run_dir']}")
    return 0


def _peft_finetune(args) -> int:
    from ..config import _parse_value
    from ..errors import InputError
    from .peft_finetune import peft_finetune
    opts, overrides = {}, []
    name, *rest = args.peft
    for it in [*args.args, *rest]:
        if "=" not in it:
            raise InputError(f"expected key=value (peft.OPTION=V or a config override), "
                             f"got {it!r}")
        k, v = it.split("=", 1)
        if k.startswith("peft."):
            opts[k[5:]] = _parse_value(v)
        else:
            overrides.append(it)
    s = peft_finetune(args.run_dir, {"name": name, **opts}, overrides)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print(f"{s['peft']}: {s['trainable_params']} of {s['total_params']} parameters trained"
              f"; val loss {s.get('final_val_loss', float('nan')):.4f}; run: {s['run_dir']}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model (no arguments: a small GPT on the embedded "
                                     "Shakespeare corpus)",
                       description="tevo train [CONFIG] [key=value ...] [--resume RUN_DIR]. "
                                   "CONFIG is a preset name or a YAML file (default: "
                                   f"{DEFAULT_PRESET}); overrides are dotted keys, e.g. "
                                   "model.n_layers=2 train.steps=100 data.tokenizer=chars.")
    p.add_argument("args", nargs="*", metavar="[CONFIG] [key=value]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=_train)

    p = sub.add_parser("finetune", help="fine-tune a pre-trained run on a labelled task "
                                        "(task=genre) and report held-out accuracy",
                       description="tevo finetune RUN_DIR [task=NAME] [key=value ...]: the "
                                   "run's model and tokenizer, its latest weights, a linear "
                                   "classification head, the one trainer; accuracy on the "
                                   "test split and the majority-class chance.")
    p.add_argument("run_dir")
    p.add_argument("args", nargs="*", metavar="[task=NAME] [key=value]")
    p.add_argument("--peft", default=None, nargs="+", metavar="NAME [key=value]",
                   help="parameter-efficient fine-tuning of a language-model run instead "
                        "(pafi, hiwi, meft, lora; options as peft.KEY=VALUE, data as "
                        "data.corpus=...): checkpoints hold only the trained delta")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=_finetune)

    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="default: val; with --data, the whole text unless a split is given")
    p.add_argument("--lengths", help="comma-separated sequence lengths, evaluated one by one "
                                     "(length extrapolation), e.g. 256,512,1024")
    p.add_argument("--max-batches", type=int, default=None,
                   help="evaluate this many evenly spaced batches (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluate on other data with the run's tokenizer, e.g. --data "
                        "path=notes.txt --data seq_len=512 (repeatable; the run's cache is "
                        "left as it is)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_eval)

    p = sub.add_parser("generate", help="continue a prompt with a trained language model")
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature "
                                                                   "(default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--beams", type=int, default=1,
                   help="beam search with N beams (1: greedy or sampling as set)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole context each step")
    p.add_argument("--method", default="generate",
                   choices=["generate", "pcw", "structured", "nbce"],
                   help="context extension: read --context pieces in parallel (Parallel "
                        "Context Windows, Structured Prompting, NBCE) before the prompt")
    p.add_argument("--context", action="append", default=[], metavar="TEXT",
                   help="one context window / demonstration group / NBCE context (repeatable)")
    p.add_argument("--context-file", default=None, help="a text cut into --window tokens each")
    p.add_argument("--window", type=int, default=None, help="tokens per window of "
                                                            "--context-file")
    p.add_argument("--escapes", action="store_true", help="interpret \\n etc. in the prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=16,
                   help="a diffusion run (objective ddpm): images to sample into the PNG grid")
    p.add_argument("--out", default=None, help="a diffusion run: the PNG path (default "
                                               "RUN/samples.png)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="a diffusion run: clip x̂_0 to [−CLIP, CLIP] at each step (the DDPM "
                        "authors' code; 0: the paper's Algorithm 2 unclipped)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=_generate)
