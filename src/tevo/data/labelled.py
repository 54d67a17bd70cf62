"""Labelled text for fine-tuning: a task's (passage, label) pairs encoded with a run's tokenizer.

Batches (format ``classify``): ``{"input_ids": (B, n), "attention_mask": (B, n), "labels": (B,)}``
with passages right-padded to the longest one of the task (True = real token). Training batch k
draws passages from a generator seeded by (seed, k), so the state is one counter (exact
resume); evaluation reads a split's passages in order, all of them or ``max_batches`` global
batches spread evenly over it, the same whatever the number of ranks.

The tokenizer is the pre-trained run's (``data.extra.tokenizer_from``: its folder, and
``data.extra.specials``: its special tokens in id order), saved into the new run so that the
fine-tuned run opens on its own. A tokenizer that cannot encode the task's text is a one-line
ConfigError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .pipeline import DataModule, _seed
from .tokenizer import load_tokenizer

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class LabelledTextData(DataModule):
    """Fixed-length padded passages and their labels, per split."""

    fmt = "classify"

    def __init__(self, task, tokenizer, seed: int = 0):
        self.task, self.tokenizer, self.seed = task, tokenizer, int(seed)
        self.vocab_size = tokenizer.vocab_size
        self.special_ids = dict(tokenizer.special_ids)
        self.num_classes = task.num_classes
        enc = {}
        for split, rows in task.splits().items():
            try:
                enc[split] = [tokenizer.encode(text) for text, _, _ in rows]
            except InputError as e:
                raise ConfigError("data.task", task.registry_name,
                                  why=f"the run's {tokenizer.registry_name} tokenizer cannot "
                                      f"encode the task's text ({e})") from None
            if not rows:
                raise ConfigError("data.task", task.registry_name, why=f"no {split} passages")
        self.seq_len = max(len(ids) for ids in sum(enc.values(), []))
        self.ids, self.mask, self.labels = {}, {}, {}
        for split, rows in task.splits().items():
            n = len(rows)
            ids = np.zeros((n, self.seq_len), dtype=np.int64)
            mask = np.zeros((n, self.seq_len), dtype=bool)
            for i, t in enumerate(enc[split]):
                ids[i, :len(t)], mask[i, :len(t)] = t, True
            self.ids[split], self.mask[split] = torch.from_numpy(ids), torch.from_numpy(mask)
            self.labels[split] = torch.tensor([lab for _, lab, _ in rows], dtype=torch.long)
        self.k = 0

    def _rows(self, split: str, idx) -> dict:
        return {"input_ids": self.ids[split][idx], "attention_mask": self.mask[split][idx],
                "labels": self.labels[split][idx]}

    def train_batch(self, n: int) -> dict:
        gen = torch.Generator().manual_seed(_seed(self.seed, 0, self.k))
        self.k += 1
        return self._rows("train", torch.randint(0, len(self.labels["train"]), (n,),
                                                 generator=gen))

    def eval_batches(self, split, batch_size, max_batches=None, rank=0, world=1, seq_len=None):
        if split not in SPLIT_IDS:
            raise ConfigError("split", split, list(SPLIT_IDS))
        if seq_len is not None and seq_len != self.seq_len:
            raise ConfigError("lengths", seq_len, why="labelled passages have a fixed length")
        total = len(self.labels[split])
        idx = np.arange(total)
        if max_batches is not None and max_batches * batch_size * world < total:
            idx = np.linspace(0, total - 1, max_batches * batch_size * world).round().astype(int)
        idx = idx[rank::world]
        for i in range(0, len(idx), batch_size):
            yield self._rows(split, torch.from_numpy(idx[i:i + batch_size]))

    def state_dict(self) -> dict:
        return {"batch": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state.get("batch", 0))

    @classmethod
    def build(cls, task, cfg, objective, run_dir=None) -> "LabelledTextData":
        extra = cfg.data.extra or {}
        source = extra.get("tokenizer_from") or run_dir
        specials = tuple(extra.get("specials", objective.specials))
        tok = load_tokenizer(cfg.data.tokenizer, source, specials)
        if run_dir is not None and Path(run_dir).resolve() != Path(source).resolve():
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            tok.save(run_dir)
        return cls(task, tok, cfg.train.seed)
