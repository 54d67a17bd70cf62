"""Open a finished (or interrupted) run folder: its exact config, tokenizer, data cache and the
weights of its latest checkpoint — what ``tevo eval`` and ``tevo generate`` work from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig, load_config
from ..data.corpora import load_whole_text
from ..data.pipeline import CorpusData, DataModule, build_data, build_eval_data
from ..data.stream import TokenStream
from ..data.tokenizer import load_tokenizer
from ..errors import InputError
from ..registry import MODELS, OBJECTIVES
from .checkpoint import WEIGHTS, load_weights, open_checkpoint
from .distributed import resolve_device
from .trainer import CONFIG


@dataclass
class Run:
    run_dir: Path
    cfg: RunConfig
    model: torch.nn.Module
    objective: object
    data: DataModule
    checkpoint: Path
    device: torch.device

    @property
    def tokenizer(self):
        return self.data.tokenizer

    @property
    def step(self) -> int:
        return int(self.checkpoint.name.rsplit("_", 1)[-1])


FIXED_DATA_KEYS = ("tokenizer", "vocab_size")     # what the trained model's ids depend on


def load_run(run_dir, device: str = "cpu", checkpoint=None,
             data_overrides: list[str] | None = None, whole: bool = False) -> Run:
    """The run's model (eval mode, latest or given checkpoint), objective and data.
    ``data_overrides`` ("path=notes.txt", "data.seq_len=512", ...) evaluate on other text with
    the run's own tokenizer, without touching the run's cached data; with ``whole`` that text
    is not split: all of it is the split ``all``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise InputError(f"{run_dir} is not a tevo run folder (no {CONFIG})")
    cfg = load_config(run_dir / CONFIG)
    objective = OBJECTIVES.build(cfg.objective, "objective")
    if data_overrides:
        ov = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
        for o in ov:
            key = o.split("=", 1)[0].split(".")[1]
            if key in FIXED_DATA_KEYS:
                raise InputError(f"--data {o}: the model was trained with its tokenizer; "
                                 f"data.{key} cannot change at evaluation")
        run_tok = cfg.data.tokenizer
        cfg = load_config(run_dir / CONFIG, ov)
        data = (whole_text_data(cfg, objective, run_dir, run_tok) if whole and
                cfg.data.task is None else build_eval_data(cfg, objective, run_dir, run_tok))
    else:
        data = build_data(cfg, objective, run_dir)
    if data.vocab_size > cfg.model.vocab_size:     # ids past the embedding table (a converted run)
        raise InputError(f"{run_dir}: the tokenizer has {data.vocab_size} tokens but the model "
                         f"only {cfg.model.vocab_size} (model.vocab_size); use the model's own "
                         f"tokenizer")
    objective.setup(data.vocab_size, data.special_ids)
    # pinned: the weights are read (and checksummed) now, so pruning by a trainer still
    # running cannot take them away; a damaged latest checkpoint falls back to an intact one
    ck, blobs = open_checkpoint(run_dir, (WEIGHTS,), checkpoint)
    if ck is None:
        raise InputError(f"no checkpoint in {run_dir / 'checkpoints'}")
    dev = resolve_device(device)
    model = MODELS.get(cfg.model.arch, "model.arch").obj(cfg.model)
    objective.attach(model)                        # the objective's own modules (saved with it)
    load_weights(model, blobs.pop(WEIGHTS))
    model.to(dev).eval()
    return Run(run_dir, cfg, model, objective, data, ck, dev)


def whole_text_data(cfg, objective, run_dir, tokenizer_spec) -> CorpusData:
    """``cfg.data``'s text, unsplit, tokenized with the run's tokenizer as the split ``all``; a
    text shorter than one window is a one-line error."""
    tok = load_tokenizer(tokenizer_spec, run_dir, objective.specials)
    text = load_whole_text(cfg.data)
    ids = tok.encode_array(text)
    window = cfg.data.seq_len + (1 if objective.data_format == "lm" else 0)
    if len(ids) < window:
        raise InputError(f"{cfg.data.path or cfg.data.corpus}: {len(ids)} tokens, too short for "
                         f"one window of {window} (data.seq_len={cfg.data.seq_len}); give "
                         f"--data seq_len=N with N < {len(ids)}" if len(ids) > 1 else
                         f"{cfg.data.path or cfg.data.corpus}: too short to evaluate "
                         f"({len(ids)} tokens)")
    stream = TokenStream.from_ids(ids, tok.vocab_size)
    meta = {"splits": {"all": {"tokens": int(len(ids)), "chars": len(text),
                               "bytes": len(text.encode("utf-8"))}}}
    return CorpusData({"train": stream, "all": stream}, tok, meta, objective.data_format,
                      cfg.data.seq_len, cfg.train.seed)
