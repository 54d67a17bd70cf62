"""Synthetic sequence tasks that isolate one mechanism: copy, reverse, sort, multi-query
associative recall (MQAR) and induction heads.

Every task is deterministic given a ``torch.Generator``: the data pipeline seeds one per batch
from (seed, split, batch index), so a run is reproducible and resumable from a batch counter.

A task gives batches in one or two formats:
- ``lm``: ``{"input_ids": (B, n), "labels": (B, n)}`` for a decoder-only model; ``labels[t]``
  is the target of the output at t (already shifted), -100 where nothing is scored;
- ``seq2seq``: ``{"src_ids": (B, m), "tgt_ids": (B, t + 2)}`` with ``[BOS] target [EOS]``.

Token ids: the task's symbols are 0..vocab-1, then its special tokens (``special_ids``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import TASKS

IGNORE = -100


class SyntheticTask:
    """Base: ``batch(n, generator, fmt)``; subclasses give ``pairs`` (src, tgt) or ``lm_batch``."""

    formats = ("lm", "seq2seq")
    specials = ("[SEP]", "[BOS]", "[EOS]")

    def __init__(self, vocab: int = 16, length: int = 16):
        if int(vocab) < 2 or int(length) < 1:
            raise ConfigError(f"task.{self.registry_name}", {"vocab": vocab, "length": length},
                              why="needs vocab >= 2 and length >= 1")
        self.vocab, self.length = int(vocab), int(length)
        self.special_ids = {s: self.vocab + i for i, s in enumerate(self.specials)}

    @property
    def vocab_size(self) -> int:
        return self.vocab + len(self.specials)

    @property
    def seq_len(self) -> int:
        """Length of an ``lm`` input sequence."""
        return 2 * self.length

    def pairs(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def lm_batch(self, n: int, gen: torch.Generator) -> dict:
        src, tgt = self.pairs(n, gen)
        m = src.shape[1]
        sep = torch.full((n, 1), self.special_ids["[SEP]"], dtype=torch.long)
        full = torch.cat([src, sep, tgt], 1)                       # (n, m + 1 + t)
        labels = full[:, 1:].clone()
        labels[:, :m] = IGNORE                                     # score only the target
        return {"input_ids": full[:, :-1].contiguous(), "labels": labels}

    def seq2seq_batch(self, n: int, gen: torch.Generator) -> dict:
        src, tgt = self.pairs(n, gen)
        bos = torch.full((n, 1), self.special_ids["[BOS]"], dtype=torch.long)
        eos = torch.full((n, 1), self.special_ids["[EOS]"], dtype=torch.long)
        return {"src_ids": src, "tgt_ids": torch.cat([bos, tgt, eos], 1)}

    def batch(self, n: int, gen: torch.Generator, fmt: str = "lm") -> dict:
        if fmt not in self.formats:
            raise ConfigError("objective", fmt, self.formats,
                              why=f"task {self.registry_name!r} has no {fmt!r} form")
        return self.lm_batch(n, gen) if fmt == "lm" else self.seq2seq_batch(n, gen)

    def sample(self, n: int, seed: int = 0, fmt: str = "lm") -> dict:
        """``n`` examples from a fresh generator seeded with ``seed`` (same seed, same batch)."""
        return self.batch(n, torch.Generator().manual_seed(int(seed)), fmt)

    def _symbols(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.randint(0, self.vocab, (n, self.length), generator=gen)


@TASKS.register("copy", paper="Neural Turing Machines (Graves et al., 2014), copy task",
                equation="x_1..x_m [SEP] → x_1..x_m", complexity=("", ""),
                test="tests/test_data_tasks.py::test_copy_reverse_sort_targets",
                tiny={"vocab": 8, "length": 6})
class CopyTask(SyntheticTask):
    """Reproduce the input sequence after a separator."""

    def pairs(self, n, gen):
        x = self._symbols(n, gen)
        return x, x.clone()


@TASKS.register("reverse", paper="Sequence to Sequence Learning with Neural Networks "
                                 "(Sutskever et al., 2014); reversal as a synthetic probe",
                equation="x_1..x_m [SEP] → x_m..x_1",
                test="tests/test_data_tasks.py::test_copy_reverse_sort_targets",
                tiny={"vocab": 8, "length": 6})
class ReverseTask(SyntheticTask):
    """Output the input sequence reversed."""

    def pairs(self, n, gen):
        x = self._symbols(n, gen)
        return x, x.flip(1)


@TASKS.register("sort", paper="Pointer Networks (Vinyals et al., 2015), sorting task",
                equation="x_1..x_m [SEP] → sort(x)",
                test="tests/test_data_tasks.py::test_copy_reverse_sort_targets",
                tiny={"vocab": 8, "length": 6})
class SortTask(SyntheticTask):
    """Output the input symbols in ascending order."""

    def pairs(self, n, gen):
        x = self._symbols(n, gen)
        return x, x.sort(1).values


@TASKS.register("mqar", paper="Zoology: Measuring and Improving Recall in Efficient Language "
                              "Models (Arora et al., 2023), multi-query associative recall",
                equation="k_1 v_1 … k_D v_D, then each k_i reappears at a power-law gap; "
                         "predict v_i right after it",
                test="tests/test_data_tasks.py::test_mqar_queries_recall_their_values",
                tiny={"vocab": 32, "seq_len": 24, "num_kv_pairs": 4})
class MQARTask(SyntheticTask):
    """Key–value pairs, then queries of the keys; the target after each query is its value.
    Keys come from the lower half of the vocabulary, values from the upper half; positions that
    are not queries hold random tokens (Zoology's ``random_non_queries``)."""

    formats = ("lm",)
    specials = ()

    def __init__(self, vocab: int = 128, seq_len: int = 64, num_kv_pairs: int = 8,
                 power_a: float = 0.01, random_non_queries: bool = True):
        self.vocab, self._seq_len, self.d = int(vocab), int(seq_len), int(num_kv_pairs)
        self.power_a, self.random_non_queries = float(power_a), bool(random_non_queries)
        self.special_ids = {}
        if self._seq_len % 2 or self.d * 4 > self._seq_len:
            raise ConfigError("task.mqar", {"seq_len": seq_len, "num_kv_pairs": num_kv_pairs},
                              why="needs an even seq_len >= 4 * num_kv_pairs")
        if self.vocab // 2 - 1 < self.d or self.vocab - self.vocab // 2 < self.d:
            raise ConfigError("task.mqar.vocab", vocab,
                              why=f"too small for {self.d} distinct keys and values")

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def lm_batch(self, n: int, gen: torch.Generator) -> dict:
        D, L, V = self.d, self._seq_len, self.vocab
        half = V // 2
        # distinct keys in 1..half-1 and values in half..V-1 per example
        keys = torch.rand(n, half - 1, generator=gen).argsort(1)[:, :D] + 1
        values = torch.rand(n, V - half, generator=gen).argsort(1)[:, :D] + half
        ctx = torch.stack([keys, values], 2).reshape(n, 2 * D)        # k1 v1 k2 v2 …
        space = (L - 2 * D) // 2
        # gaps drawn without replacement with p(g) ∝ a·g^(a-1) (Zoology's power law)
        p = self.power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(p.expand(n, space), D, replacement=False, generator=gen)
        queries = torch.zeros(n, L - 2 * D + 1, dtype=torch.long)
        queries.scatter_(1, gaps * 2, keys)
        full = torch.cat([ctx, queries], 1)                            # (n, L + 1)
        labels = torch.full((n, L + 1), IGNORE, dtype=torch.long)
        labels.scatter_(1, gaps * 2 + 2 * D + 1, values)
        inputs, labels = full[:, :-1].clone(), labels[:, 1:].contiguous()
        if self.random_non_queries:
            noise = torch.randint(0, V, inputs.shape, generator=gen)
            inputs = torch.where(inputs == 0, noise, inputs)
        return {"input_ids": inputs, "labels": labels}


@TASKS.register("induction", paper="In-context Learning and Induction Heads (Olsson et al., "
                                   "2022); the H3 paper's synthetic induction-head task",
                equation="… t x … t → x: after the trigger t, predict what followed it",
                test="tests/test_data_tasks.py::test_induction_target_follows_first_trigger",
                tiny={"vocab": 8, "seq_len": 16})
class InductionTask(SyntheticTask):
    """Random tokens with a trigger token inserted once; the sequence ends with the trigger and
    the target is the token that followed its first occurrence."""

    formats = ("lm",)
    specials = ("[TRIGGER]",)

    def __init__(self, vocab: int = 16, seq_len: int = 64):
        if int(seq_len) < 4 or int(vocab) < 2:
            raise ConfigError("task.induction", {"vocab": vocab, "seq_len": seq_len},
                              why="needs seq_len >= 4 and vocab >= 2")
        self.vocab, self._seq_len = int(vocab), int(seq_len)
        self.special_ids = {"[TRIGGER]": self.vocab}

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def lm_batch(self, n: int, gen: torch.Generator) -> dict:
        L, trig = self._seq_len, self.vocab
        x = torch.randint(0, self.vocab, (n, L), generator=gen)
        pos = torch.randint(0, L - 3, (n,), generator=gen)            # first trigger
        rows = torch.arange(n)
        x[rows, pos] = trig
        x[:, -1] = trig
        labels = torch.full((n, L), IGNORE, dtype=torch.long)
        labels[:, -1] = x[rows, pos + 1]
        return {"input_ids": x, "labels": labels}
