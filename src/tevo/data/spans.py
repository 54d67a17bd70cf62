"""Labelled spans for span extraction (GlobalPointer): a task's passages and their typed spans.

Batches (format ``spans``): ``{"input_ids": (B, n), "attention_mask": (B, n),
"spans": (B, T, n, n) bool}`` with ``spans[b, α, i, j]`` true when characters i..j (inclusive)
of passage b form a span of type α. Span offsets are character offsets, so the run's tokenizer
must give one token per character: ``bytes`` (the task's text is ASCII). Spans are kept as
index lists and made dense per batch. Training batch k draws passages from a generator seeded
by (seed, k) (state = one counter, exact resume); evaluation reads a split in order, all of it
or ``max_batches`` global batches spread evenly over it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .labelled import SPLIT_IDS
from .pipeline import DataModule, _seed
from .tokenizer import build_tokenizer


class SpanData(DataModule):
    """Fixed-length passages (bytes) and their typed spans, per split."""

    fmt = "spans"

    def __init__(self, task, seed: int = 0, model_extra: dict | None = None):
        self.task, self.seed = task, int(seed)
        self.tokenizer = build_tokenizer("bytes")
        self.vocab_size = self.tokenizer.vocab_size
        self.special_ids = {}
        self.types = task.num_types
        # the model's number of span types comes from the task unless set
        self.model_fields = {"extra": {"gp_types": self.types, **(model_extra or {})}}
        self.ids, self.spans = {}, {}
        for split, rows in task.splits().items():
            if not rows:
                raise ConfigError("data.task", task.registry_name, why=f"no {split} passages")
            texts = [p for p, _, _ in rows]
            if any(len(t) != len(texts[0]) or not t.isascii() for t in texts):
                raise ConfigError("data.task", task.registry_name,
                                  why="span passages must be ASCII and of one length")
            self.seq_len = len(texts[0])
            self.ids[split] = torch.from_numpy(np.frombuffer("".join(texts).encode("ascii"),
                                                             dtype=np.uint8)
                                               .astype(np.int64).reshape(len(rows), -1))
            self.spans[split] = [torch.tensor(s, dtype=torch.long).reshape(-1, 3)
                                 for _, s, _ in rows]
        self.k = 0

    def _rows(self, split: str, idx) -> dict:
        idx = torch.as_tensor(idx, dtype=torch.long)
        n = self.seq_len
        dense = torch.zeros(len(idx), self.types, n, n, dtype=torch.bool)
        for r, i in enumerate(idx.tolist()):
            s = self.spans[split][i]
            dense[r, s[:, 0], s[:, 1], s[:, 2]] = True
        ids = self.ids[split][idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
                "spans": dense}

    def train_batch(self, n: int) -> dict:
        gen = torch.Generator().manual_seed(_seed(self.seed, 0, self.k))
        self.k += 1
        return self._rows("train", torch.randint(0, len(self.ids["train"]), (n,),
                                                 generator=gen))

    def eval_batches(self, split, batch_size, max_batches=None, rank=0, world=1, seq_len=None):
        if split not in SPLIT_IDS:
            raise ConfigError("split", split, list(SPLIT_IDS))
        if seq_len is not None and seq_len != self.seq_len:
            raise ConfigError("lengths", seq_len, why="span passages have a fixed length")
        total = len(self.ids[split])
        idx = np.arange(total)
        if max_batches is not None and max_batches * batch_size * world < total:
            idx = np.linspace(0, total - 1, max_batches * batch_size * world).round().astype(int)
        idx = idx[rank::world]
        for i in range(0, len(idx), batch_size):
            yield self._rows(split, idx[i:i + batch_size])

    def state_dict(self) -> dict:
        return {"batch": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state.get("batch", 0))

    @classmethod
    def build(cls, task, cfg) -> "SpanData":
        name = cfg.data.tokenizer if isinstance(cfg.data.tokenizer, str) \
            else (cfg.data.tokenizer or {}).get("name")
        if name != "bytes":
            raise ConfigError("data.tokenizer", cfg.data.tokenizer, ["bytes"],
                              why="span offsets are characters: the span task needs one "
                                  "token per character")
        return cls(task, cfg.train.seed, cfg.model.extra)
