"""``tevo convert``: Hugging Face directories ⇄ tevo run directories.

    tevo convert --from-hf HF_DIR --out RUN_DIR [--check]
    tevo convert --to-hf RUN_DIR --out HF_DIR [--check]

A run directory is the layout ``tevo train`` writes and ``tevo eval`` / ``tevo generate`` read:
``config.yaml`` (the full run config; its ``model`` section is the converted architecture) and
``checkpoints/step_00000000/model.safetensors`` (with a ``state.pt`` holding only the step: there
is no optimiser state to resume). The HF tokenizer files are copied to ``RUN_DIR/hf_tokenizer``
and the run's ``data.tokenizer`` set to ``{name: hf, path: hf_tokenizer}`` (relative: the run
folder can move), so ``tevo generate`` / ``tevo eval`` use the model's own tokenizer. ``--check``
loads both sides and prints the largest logit difference on a random padded batch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.tokenizer import HF_FILES as TOKENIZER_FILES   # what a HF tokenizer dir holds
from ..errors import TevoError

WEIGHTS = "model.safetensors"          # as in tevo.train.checkpoint
HEAD_WEIGHTS = "head.safetensors"      # an extra head kept beside the tevo body (ELECTRA)
CONFIG = "config.yaml"
STEP_DIR = "checkpoints/step_00000000"
TOKENIZER_DIR = "hf_tokenizer"         # the HF tokenizer files, carried along unchanged

OBJECTIVES = {"gpt": "clm", "bert": "mlm", "transformer": "seq2seq"}


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert weights between Hugging Face transformers and tevo",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="HF_DIR",
                     help="a Hugging Face model directory (config.json + safetensors)")
    src.add_argument("--to-hf", metavar="RUN_DIR", help="a tevo run directory")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--check", action="store_true",
                   help="compare the logits of both sides on a random padded batch")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the converted model config (e.g. mixer.impl=eager)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=_convert)


# -- run directories --------------------------------------------------------------------------
def save_run(model, run_dir, name: str | None = None, source: str | None = None,
             tokenizer=None) -> Path:
    """Write ``config.yaml`` + a step-0 checkpoint of a tevo model (and its extra head);
    ``tokenizer``: the run's ``data.tokenizer`` spec (default: the config's)."""
    import torch

    from ..config import RunConfig, save_config
    from ..train.checkpoint import save_weights
    from .heads import ModelWithHead
    out = Path(run_dir)
    ck = out / STEP_DIR
    ck.mkdir(parents=True, exist_ok=True)
    body = model.body if isinstance(model, ModelWithHead) else model
    cfg = body.cfg
    if isinstance(model, ModelWithHead):
        cfg.extra.setdefault("hf", {})["head"] = model.head_spec
        save_weights(model.head, ck / HEAD_WEIGHTS)
    hf = cfg.extra.get("hf", {})
    run = RunConfig(model=cfg, objective=OBJECTIVES.get(cfg.arch, "clm"),
                    name=name or f"hf-{hf.get('model_type', cfg.arch)}")
    run.train.out_dir = str(out)
    run.data.seq_len = min(run.data.seq_len, cfg.max_len)   # windows the position table covers
    if tokenizer is not None:
        run.data.tokenizer = tokenizer
    save_config(run, out / CONFIG)
    save_weights(body, ck / WEIGHTS)
    torch.save({"step": 0, "tokens": 0, "converted_from": str(source or hf.get("model_type"))},
               ck / "state.pt")
    return out


def load_run(run_dir):
    """The tevo model of a run directory (eval mode, latest checkpoint), with its extra head."""
    from .. import build_model
    from ..config import load_config
    from ..train.checkpoint import load_weights
    from .heads import ModelWithHead, build_head
    d = Path(run_dir)
    if not (d / CONFIG).is_file():
        raise TevoError(f"{d}: no {CONFIG} (not a tevo run directory)")
    cfg = load_config(d / CONFIG)
    model = build_model(cfg.model)
    weights = _weights_file(d)
    load_weights(model, weights)
    head = (cfg.model.extra or {}).get("hf", {}).get("head")
    if head:
        h = build_head(head)
        load_weights(h, weights.parent / HEAD_WEIGHTS)
        model = ModelWithHead(model, h)
    return model.eval()


def _weights_file(d: Path) -> Path:
    """The newest checkpoint's weights (``checkpoints/step_*/model.safetensors``)."""
    steps = sorted((p for p in (d / "checkpoints").glob("step_*") if (p / WEIGHTS).is_file()),
                   key=lambda p: p.name)
    if steps:
        return steps[-1] / WEIGHTS
    if (d / WEIGHTS).is_file():
        return d / WEIGHTS
    raise TevoError(f"{d}: no checkpoints/step_*/{WEIGHTS}")


def copy_tokenizer(src, dst) -> list[str]:
    """Copy the Hugging Face tokenizer files of ``src`` (if any) into ``dst``."""
    import shutil
    src = Path(src)
    found = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    if found:
        Path(dst).mkdir(parents=True, exist_ok=True)
        for f in found:
            shutil.copy2(src / f, Path(dst) / f)
    return found


# -- the command ------------------------------------------------------------------------------
def _convert(args) -> int:
    from .hf import ConversionError, from_hf, to_hf
    summary: dict = {}
    try:
        if args.from_hf:
            model = from_hf(args.from_hf, overrides=args.override, warn=False)
            tok = _tokenizer_summary(args.from_hf, getattr(model, "body", model).cfg.vocab_size)
            save_run(model, args.out, source=args.from_hf,
                     tokenizer={"name": "hf", "path": TOKENIZER_DIR} if tok["files"] else None)
            copy_tokenizer(args.from_hf, Path(args.out) / TOKENIZER_DIR)
            summary = {"from": args.from_hf, "to": args.out,
                       "model_type": model.hf_conversion["model_type"],
                       "params": sum(p.numel() for p in model.parameters()),
                       "missing": model.hf_conversion["missing"], "tokenizer": tok}
            if args.check:
                summary["check"] = _check(_hf_model(args.from_hf), model)
        else:
            model = load_run(args.to_hf)
            to_hf(model, args.out)
            copy_tokenizer(Path(args.to_hf) / TOKENIZER_DIR, args.out)
            summary = {"from": args.to_hf, "to": args.out}
            if args.check:
                summary["check"] = _check(_hf_model(args.out), model)
    except ConversionError as e:
        raise TevoError(str(e)) from e
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    if args.check and summary["check"]["max_abs_diff"] > 1e-4:
        print(f"error: logits differ by {summary['check']['max_abs_diff']:.3g}")
        return 1
    return 0


def _tokenizer_summary(hf_dir, model_vocab: int) -> dict:
    """The HF tokenizer files of ``hf_dir`` and whether they load; a vocabulary larger than the
    model's is an error (its ids would index past the embedding table)."""
    from ..data.tokenizer import HFTokenizer
    files = [f for f in TOKENIZER_FILES if (Path(hf_dir) / f).is_file()]
    if not files:
        return {"files": [], "note": "no tokenizer files: the run keeps the default tokenizer"}
    try:
        tok = HFTokenizer(hf_dir)
    except TevoError as e:                 # converted anyway; generate/eval repeat the error
        return {"files": files, "error": str(e)}
    if tok.vocab_size > model_vocab:
        raise TevoError(f"{hf_dir}: the tokenizer has {tok.vocab_size} tokens but the model "
                        f"only {model_vocab} (vocab_size in config.json); not converted")
    return {"files": files, "vocab_size": tok.vocab_size, "specials": tok.special_ids}


def _hf_model(path):
    """The transformers model saved in ``path``, built from the class its config names."""
    from .hf import _need_transformers
    transformers = _need_transformers()
    cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    names = list(getattr(cfg, "architectures", None) or [])
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        cls = transformers.AutoModel
    return cls.from_pretrained(str(path), attn_implementation="eager").eval()


def _check(hf, model) -> dict:
    from .compare import check_equivalence
    return check_equivalence(hf, model)
