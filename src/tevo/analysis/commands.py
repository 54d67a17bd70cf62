"""``tevo analyze ...``: analysis tools that read a trained run.

    tevo analyze ffn-memory RUN_DIR [--weights FILE] [--text FILE] [--layers 0,1] [--keys 5]
                                    [--top 5] [--tokens 10] [--max-tokens 8192] [--json]

A run folder holds ``config.yaml`` (the exact RunConfig), the tokenizer file of trained
tokenizers, and checkpoints ``checkpoints/step_N/model.safetensors`` (the latest is used unless
``--weights`` names a file or a checkpoint folder). The text defaults to the run corpus's
validation split.
"""
from __future__ import annotations

import json
from pathlib import Path


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="analysis tools for a trained run")
    sub = p.add_subparsers(dest="tool", required=True)
    s = sub.add_parser("ffn-memory", help="FFN keys' top-triggering prefixes and their values' "
                                          "top tokens (Geva et al., 2021)")
    s.add_argument("run_dir")
    s.add_argument("--weights", help="a .safetensors file or checkpoint folder "
                                     "(default: the run's latest checkpoint)")
    s.add_argument("--text", help="a text file to read (default: the corpus's validation split)")
    s.add_argument("--layers", help="comma-separated layer indices (default: all)")
    s.add_argument("--keys", default="5",
                   help="keys per layer: a count (most strongly triggered) or a list 3,17,40")
    s.add_argument("--top", type=int, default=5, help="trigger prefixes per key")
    s.add_argument("--tokens", type=int, default=10, help="value tokens per key")
    s.add_argument("--context", type=int, default=24, help="prefix tokens shown")
    s.add_argument("--max-tokens", type=int, default=8192, help="tokens of text to read")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_ffn_memory)


def find_weights(run_dir: Path, weights: str | None = None) -> Path:
    """The weights file: --weights (a file or a checkpoint folder), else the latest checkpoint,
    else RUN/model.safetensors."""
    from ..errors import InputError
    from ..train.checkpoint import CKPT_DIR, WEIGHTS
    if weights:
        w = Path(weights)
        w = w / WEIGHTS if w.is_dir() else w
        if not w.exists():
            raise InputError(f"no weights file {w}")
        return w
    steps = sorted((int(p.name.rsplit("_", 1)[-1]), p / WEIGHTS)
                   for p in (run_dir / CKPT_DIR).glob("step_*")
                   if p.name.rsplit("_", 1)[-1].isdigit() and (p / WEIGHTS).exists())
    if steps:
        return steps[-1][1]
    if (run_dir / WEIGHTS).exists():
        return run_dir / WEIGHTS
    raise InputError(f"no checkpoint in {run_dir / CKPT_DIR} and no {WEIGHTS} in {run_dir}; "
                     f"pass --weights")


def load_run_model(run_dir, weights: str | None = None, device: str = "cpu"):
    """(RunConfig, model in eval mode, tokenizer) of a run folder."""
    import torch

    from ..config import load_config
    from ..data.tokenizer import load_tokenizer
    from ..errors import InputError
    from ..registry import MODELS, OBJECTIVES
    from ..train.checkpoint import load_weights
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise InputError(f"{run_dir} is not a tevo run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    model = MODELS.get(cfg.model.arch, "model.arch").obj(cfg.model)
    load_weights(model, find_weights(run_dir, weights))
    model.to(torch.device(device)).eval()
    specials = getattr(OBJECTIVES.build(cfg.objective, "objective"), "specials", ())
    tok = load_tokenizer(cfg.data.tokenizer, run_dir, specials)
    return cfg, model, tok


def _ffn_memory(args) -> int:
    import torch

    from ..data.corpora import load_corpus
    from .ffn_memory import ffn_kv_memory, format_report
    cfg, model, tok = load_run_model(args.run_dir, args.weights, args.device)
    text = Path(args.text).read_text() if args.text else load_corpus(cfg.data)["val"]
    ids = torch.as_tensor(tok.encode(text)[:args.max_tokens], dtype=torch.long)
    keys = [int(k) for k in args.keys.split(",")] if "," in args.keys else int(args.keys)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    report = ffn_kv_memory(model, ids, tok.decode, layers=layers, keys=keys, top=args.top,
                           tokens=args.tokens, context=args.context)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
