"""From a config to batches: corpus → tokenizer → token streams → packed windows, or a
synthetic task; in the batch format the objective asks for.

Formats (``objective.data_format``):
- ``lm``:      ``{"input_ids": (B, n), "labels": (B, n)}``, labels = inputs shifted by one;
- ``mlm``:     ``{"input_ids": (B, n)}`` (the objective masks them);
- ``seq2seq``: ``{"src_ids": (B, n/2), "tgt_ids": (B, n/2 + 2)}`` with [BOS] … [EOS]
  (on a corpus: continue the first half of a window);
- ``spans``:   a span task's passages and typed spans (``tevo.data.spans``).

A run's tokenizer and tokenized splits are cached in the run folder (``tokenizer.json``,
``data/{train,val,test}.npy`` memory-mapped, ``data/meta.json``), so resuming, ``tevo eval``
and ``tevo generate`` never re-read or re-tokenize the corpus.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..registry import TASKS
from .corpora import SPLITS, corpus_spec, load_corpus
from .stream import LaneReader, TokenStream, WindowSampler, eval_starts
from .tokenizer import build_tokenizer, load_tokenizer

FORMATS = ("lm", "mlm", "seq2seq")


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of every tensor in a batch."""
    return {k: (v[start:stop] if isinstance(v, Tensor) else v) for k, v in batch.items()}


def batch_to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
            for k, v in batch.items()}


class DataModule:
    """What the trainer needs: global training batches from a resumable position, and fixed
    evaluation batches per split."""

    fmt: str = "lm"
    vocab_size: int = 0
    special_ids: dict = {}
    tokenizer = None
    seq_len: int = 0

    def train_batch(self, n: int) -> dict:
        raise NotImplementedError

    def read_in_order(self, lanes: int) -> None:
        """From now on, ``train_batch`` reads the training stream in order, in ``lanes``
        contiguous lanes (for a segment memory, see ``LaneReader``)."""
        raise ConfigError("model.memory", why="a segment memory trains on a text corpus read "
                                              "in order; a synthetic task (data.task) gives "
                                              "independent sequences")

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None,
                     rank: int = 0, world: int = 1, seq_len: int | None = None
                     ) -> Iterator[dict]:
        """This rank's batches of ``batch_size`` rows: the whole split, or ``max_batches``
        global batches (of ``batch_size × world`` rows) spread evenly over it, so every world
        size evaluates the same examples. ``seq_len`` overrides the length (extrapolation)."""
        raise NotImplementedError

    def stats(self, split: str) -> dict | None:
        """{"chars_per_token", "bytes_per_token"} of a text split (None for synthetic tasks)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------------------------
class CorpusData(DataModule):
    """Packed windows over the tokenized splits of a text corpus."""

    def __init__(self, streams: dict[str, TokenStream], tokenizer, meta: dict, fmt: str,
                 seq_len: int, seed: int = 0):
        if fmt not in FORMATS:
            raise ConfigError("objective", fmt, FORMATS, why=f"unknown data format {fmt!r}")
        self.streams, self.tokenizer, self.meta = streams, tokenizer, meta
        self.fmt, self.seq_len, self.seed = fmt, int(seq_len), int(seed)
        self.vocab_size = tokenizer.vocab_size
        self.special_ids = dict(tokenizer.special_ids)
        if fmt == "seq2seq":
            for s in ("[BOS]", "[EOS]"):
                if s not in self.special_ids:
                    raise ConfigError("objective", fmt, why=f"seq2seq on a corpus needs {s}")
        self.sampler = WindowSampler(len(streams["train"]), self.window(self.seq_len),
                                     self.seq_len, seed, what="train")
        self.lanes = None                        # a LaneReader once read_in_order is called

    def window(self, n: int) -> int:
        return n + 1 if self.fmt == "lm" else n

    def to_batch(self, w: Tensor) -> dict:
        if self.fmt == "lm":
            return {"input_ids": w[:, :-1], "labels": w[:, 1:]}
        if self.fmt == "mlm":
            return {"input_ids": w}
        h = w.shape[1] // 2
        B = w.shape[0]
        bos = torch.full((B, 1), self.special_ids["[BOS]"], dtype=torch.long)
        eos = torch.full((B, 1), self.special_ids["[EOS]"], dtype=torch.long)
        return {"src_ids": w[:, :h], "tgt_ids": torch.cat([bos, w[:, h:], eos], 1)}

    def train_batch(self, n: int) -> dict:
        if self.lanes is not None:
            if n != self.lanes.lanes:
                raise InputError(f"reading {self.lanes.lanes} lanes in order, asked for {n}")
            return self.to_batch(self.streams["train"].at(self.lanes.take()))
        starts = self.sampler.take(n)
        return self.to_batch(self.streams["train"].windows(starts, self.window(self.seq_len)))

    def read_in_order(self, lanes: int) -> None:
        if self.fmt != "lm":
            raise ConfigError("objective", self.fmt, ["clm"],
                              why="a segment memory reads the stream in order for next-token "
                                  "prediction")
        self.lanes = LaneReader(len(self.streams["train"]), lanes, self.seq_len)

    def ordered_eval_batches(self, split, batch_size, max_batches=None, rank=0, world=1,
                             seq_len=None):
        """Transformer-XL's evaluation order (for a segment memory): the split cut into
        ``batch_size × world`` contiguous lanes (the remainder dropped; rank r keeps lanes
        [r·batch_size, (r+1)·batch_size)), each read from its start in consecutive segments
        of ``seq_len`` tokens (``lm`` batches; the last segment of a lane may be shorter). The
        first ``max_batches`` segments of every lane, or all of them: a memory needs the text
        before a segment, so a subset is a prefix, not evenly spaced windows."""
        if split not in self.streams:
            raise ConfigError("split", split, list(self.streams))
        n = int(seq_len or self.seq_len)
        stream = self.streams[split]
        lane_len = len(stream) // (batch_size * world)
        if lane_len < 2:
            raise InputError(f"the {split} split has {len(stream)} tokens, too few for "
                             f"{batch_size * world} lanes")
        starts = np.arange(rank * batch_size, (rank + 1) * batch_size, dtype=np.int64) * lane_len
        for k, i in enumerate(range(0, lane_len - 1, n)):
            if max_batches is not None and k >= max_batches:
                break
            yield self.to_batch(stream.windows(starts + i, min(n, lane_len - 1 - i) + 1))

    def eval_batches(self, split, batch_size, max_batches=None, rank=0, world=1, seq_len=None):
        if split not in self.streams:
            raise ConfigError("split", split, list(self.streams))
        n = int(seq_len or self.seq_len)
        stream = self.streams[split]
        # the same windows whatever the number of ranks: batches are global, then sharded
        max_windows = None if max_batches is None else max_batches * batch_size * world
        starts = eval_starts(len(stream), self.window(n), n, max_windows)[rank::world]
        for i in range(0, len(starts), batch_size):
            yield self.to_batch(stream.windows(starts[i:i + batch_size], self.window(n)))

    def stats(self, split: str) -> dict | None:
        s = self.meta["splits"].get(split)
        if not s or not s["tokens"]:
            return None
        return {"chars_per_token": s["chars"] / s["tokens"],
                "bytes_per_token": s["bytes"] / s["tokens"], "tokens": s["tokens"]}

    def state_dict(self) -> dict:
        if self.lanes is not None:
            return {"sampler": self.sampler.state_dict(), "lanes": self.lanes.state_dict()}
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])
        if "lanes" in state and self.lanes is not None:
            self.lanes.load_state_dict(state["lanes"])

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, data, fmt: str, specials=(), seed: int = 0, run_dir=None,
              is_main: bool = True, barrier=None) -> "CorpusData":
        """Tokenize the corpus (main process), cache it in ``run_dir/data``, and open it."""
        key = cache_key(data, specials)
        cache = Path(run_dir) / "data" if run_dir is not None else None
        if cache is not None and is_main and not _cache_ok(cache, key):
            streams, tok, meta = tokenize_corpus(data, specials, key, run_dir)
            cache.mkdir(parents=True, exist_ok=True)
            tok.save(run_dir)
            for s, st in streams.items():
                st.save(cache / f"{s}.npy")
            _write_json(cache / "meta.json", meta)
        if barrier is not None:
            barrier()
        if cache is not None:
            meta = json.loads((cache / "meta.json").read_text())
            tok = load_tokenizer(data.tokenizer, run_dir, specials)
            streams = {s: TokenStream.open(cache / f"{s}.npy") for s in SPLITS}
        else:
            streams, tok, meta = tokenize_corpus(data, specials, key)
        return cls(streams, tok, meta, fmt, data.seq_len, seed)


def cache_key(data, specials) -> dict:
    name, kw = corpus_spec(data)
    return {"corpus": {"name": name, **kw}, "tokenizer": data.tokenizer,
            "vocab_size": data.vocab_size, "specials": list(specials)}


def _cache_ok(cache: Path, key: dict) -> bool:
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == json.loads(json.dumps(key)) and all(
        (cache / f"{s}.npy").exists() for s in SPLITS)


def _write_json(path: Path, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def tokenize_corpus(data, specials=(), key: dict | None = None, run_dir=None, tokenizer=None):
    """(streams, tokenizer, meta): the tokenizer is fitted on the training split only
    (``run_dir``: where a tokenizer's relative paths start, as for ``hf``), unless a fitted
    ``tokenizer`` is given (evaluating a trained run on other text)."""
    texts = load_corpus(data)
    tok = tokenizer if tokenizer is not None else build_tokenizer(
        data.tokenizer, texts["train"], specials, data.vocab_size, run_dir)
    streams, meta = {}, {"key": key or cache_key(data, specials), "splits": {},
                         "vocab_size": tok.vocab_size, "specials": tok.special_ids}
    for s in SPLITS:
        ids = tok.encode_array(texts[s])
        streams[s] = TokenStream.from_ids(ids, tok.vocab_size)
        meta["splits"][s] = {"tokens": int(len(ids)), "chars": len(texts[s]),
                             "bytes": len(texts[s].encode("utf-8"))}
    return streams, tok, meta


# --------------------------------------------------------------------------------------------
def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class TaskData(DataModule):
    """Batches of a synthetic task: training batch k is drawn from a generator seeded by
    (seed, k); evaluation batches from seeds of their own split. State = the batch counter."""

    SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, task, fmt: str, seed: int = 0):
        if fmt not in task.formats:
            raise ConfigError("objective", fmt, task.formats,
                              why=f"task {task.registry_name!r} has no {fmt!r} batches")
        self.task, self.fmt, self.seed = task, fmt, int(seed)
        self.vocab_size, self.special_ids = task.vocab_size, dict(task.special_ids)
        self.seq_len = task.seq_len
        self.k = 0

    def train_batch(self, n: int) -> dict:
        gen = torch.Generator().manual_seed(_seed(self.seed, 0, self.k))
        self.k += 1
        return self.task.batch(n, gen, self.fmt)

    def eval_batches(self, split, batch_size, max_batches=None, rank=0, world=1, seq_len=None):
        if split not in self.SPLIT_IDS:
            raise ConfigError("split", split, list(self.SPLIT_IDS))
        if seq_len is not None and seq_len != self.seq_len:
            raise ConfigError("lengths", seq_len, why="synthetic tasks have a fixed length")
        for i in range(max_batches or 16):
            gen = torch.Generator().manual_seed(_seed(self.seed, self.SPLIT_IDS[split], i))
            b = self.task.batch(batch_size * world, gen, self.fmt)    # global, then sharded
            yield slice_batch(b, rank * batch_size, (rank + 1) * batch_size)

    def state_dict(self) -> dict:
        return {"batch": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state.get("batch", 0))


def build_eval_data(cfg, objective, run_dir, tokenizer_spec) -> "CorpusData":
    """The corpus of ``cfg.data`` tokenized with the run's own tokenizer (``tokenizer_spec``, as
    trained and saved in ``run_dir``), in memory: the run's cached splits and tokenizer are
    left untouched."""
    if cfg.data.task is not None or objective.data_format == "image":
        return build_data(cfg, objective)
    tok = load_tokenizer(tokenizer_spec, run_dir, objective.specials)
    streams, tok, meta = tokenize_corpus(cfg.data, objective.specials, None, run_dir, tok)
    return CorpusData(streams, tok, meta, objective.data_format, cfg.data.seq_len, cfg.train.seed)


def _is_image_corpus(corpus) -> bool:
    from ..registry import CORPORA
    name = corpus if isinstance(corpus, str) else (corpus or {}).get("name")
    return name in CORPORA and CORPORA.get(name).extra.get("modality") == "image"


def build_data(cfg, objective, run_dir=None, is_main: bool = True, barrier=None) -> DataModule:
    """The DataModule for a RunConfig and its objective."""
    fmt = objective.data_format
    if fmt == "image":                                   # labelled images (tevo.data.images)
        from .images import ImageData
        return ImageData.build(cfg.data, cfg.train.seed)
    if cfg.data.task is None and _is_image_corpus(cfg.data.corpus):
        raise ConfigError("data.corpus", cfg.data.corpus, ["image_classification"],
                          why=f"an image corpus trains an image model: set objective="
                              f"image_classification and model.arch=vit (not {fmt!r} text)")
    if cfg.data.task is not None:
        task = TASKS.build(cfg.data.task, "data.task")
        if "spans" in getattr(task, "formats", ()) or fmt == "spans":   # (tevo.data.spans)
            if fmt not in task.formats:
                raise ConfigError("objective", fmt, ["global_pointer"] if "spans" in
                                  task.formats else list(task.formats),
                                  why=f"task {task.registry_name!r} has no {fmt!r} batches")
            from .spans import SpanData
            return SpanData.build(task, cfg)
        if getattr(task, "needs_tokenizer", False):      # labelled text (tevo.data.labelled)
            if fmt not in task.formats:
                raise ConfigError("objective", fmt, ["text_classification"],
                                  why=f"task {task.registry_name!r} gives labelled passages, "
                                      f"not {fmt!r} batches")
            from .labelled import LabelledTextData
            return LabelledTextData.build(task, cfg, objective, run_dir)
        return TaskData(task, fmt, cfg.train.seed)
    return CorpusData.build(cfg.data, fmt, objective.specials, cfg.train.seed, run_dir,
                            is_main, barrier)
