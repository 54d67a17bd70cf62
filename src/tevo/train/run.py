"""Open a finished (or interrupted) run folder: its exact config, tokenizer, data cache and the
weights of its latest checkpoint — what ``tevo eval`` and ``tevo generate`` work from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig, load_config
from ..data.pipeline import DataModule, build_data, build_eval_data
from ..errors import InputError
from ..registry import MODELS, OBJECTIVES
from .checkpoint import WEIGHTS, latest_checkpoint, load_weights
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
             data_overrides: list[str] | None = None) -> Run:
    """The run's model (eval mode, latest or given checkpoint), objective and data.
    ``data_overrides`` ("path=notes.txt", "data.seq_len=512", ...) evaluate on other text with
    the run's own tokenizer, without touching the run's cached data."""
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
        data = build_eval_data(cfg, objective, run_dir, run_tok)
    else:
        data = build_data(cfg, objective, run_dir)
    if data.vocab_size > cfg.model.vocab_size:     # ids past the embedding table (a converted run)
        raise InputError(f"{run_dir}: the tokenizer has {data.vocab_size} tokens but the model "
                         f"only {cfg.model.vocab_size} (model.vocab_size); use the model's own "
                         f"tokenizer")
    objective.setup(data.vocab_size, data.special_ids)
    ck = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ck is None or not (ck / WEIGHTS).exists():
        raise InputError(f"no checkpoint in {run_dir / 'checkpoints'}")
    dev = resolve_device(device)
    model = MODELS.get(cfg.model.arch, "model.arch").obj(cfg.model)
    objective.attach(model)                        # the objective's own modules (saved with it)
    load_weights(model, ck / WEIGHTS)
    model.to(dev).eval()
    return Run(run_dir, cfg, model, objective, data, ck, dev)
