"""Synthetic tasks: targets are what the task says, and every batch is a function of the seed."""
from __future__ import annotations

import pytest
import torch

from tevo.errors import ConfigError
from tevo.registry import TASKS

IGNORE = -100


def _target_span(b):
    """(inputs before the target, target) of an lm batch whose labels score a suffix."""
    ids, labels = b["input_ids"], b["labels"]
    m = int((labels[0] == IGNORE).sum())
    return ids[:, :m], labels[:, m:]


@pytest.mark.parametrize("name,fn", [("copy", lambda x: x), ("reverse", lambda x: x.flip(1)),
                                     ("sort", lambda x: x.sort(1).values)])
def test_copy_reverse_sort_targets(name, fn):
    task = TASKS.build({"name": name, "vocab": 10, "length": 7})
    b = task.sample(16, seed=1)
    src, target = _target_span(b)
    assert src.shape == (16, 7) and target.shape == (16, 7)
    assert torch.equal(target, fn(src))
    assert (b["input_ids"][:, 7] == task.special_ids["[SEP]"]).all()
    assert torch.equal(b["input_ids"][:, 8:], target[:, :-1])        # teacher forcing
    s = task.sample(16, seed=1, fmt="seq2seq")
    assert torch.equal(s["src_ids"], src)
    assert torch.equal(s["tgt_ids"][:, 1:-1], target)
    assert (s["tgt_ids"][:, 0] == task.special_ids["[BOS]"]).all()
    assert int(b["input_ids"].max()) < task.vocab_size


def test_mqar_queries_recall_their_values():
    task = TASKS.build({"name": "mqar", "vocab": 64, "seq_len": 64, "num_kv_pairs": 8})
    b = task.sample(32, seed=0)
    ids, labels = b["input_ids"], b["labels"]
    assert ids.shape == labels.shape == (32, 64)
    for r in range(32):
        keys, values = ids[r, 0:16:2], ids[r, 1:16:2]
        assert len(set(keys.tolist())) == 8 and (keys < 32).all() and (values >= 32).all()
        kv = dict(zip(keys.tolist(), values.tolist()))
        q = (labels[r] != IGNORE).nonzero().flatten()
        assert len(q) == 8 and (q >= 16).all()
        for t in q.tolist():                      # the query key is at t, its value is the label
            assert kv[int(ids[r, t])] == int(labels[r, t])
    with pytest.raises(ConfigError):
        TASKS.build({"name": "mqar", "seq_len": 20, "num_kv_pairs": 8})


def test_induction_target_follows_first_trigger():
    task = TASKS.build({"name": "induction", "vocab": 10, "seq_len": 32})
    b = task.sample(64, seed=5)
    ids, labels = b["input_ids"], b["labels"]
    trig = task.special_ids["[TRIGGER]"]
    assert (ids[:, -1] == trig).all() and ((ids == trig).sum(1) == 2).all()
    first = (ids == trig).float().argmax(1)
    assert torch.equal(labels[:, -1], ids[torch.arange(64), first + 1])
    assert (labels[:, :-1] == IGNORE).all()


@pytest.mark.parametrize("name", [n for n in TASKS.names()
                                  if callable(getattr(TASKS.get(n).obj, "sample", None))])
def test_tasks_are_deterministic_per_seed(name):
    """Every generated task (one with ``sample``; corpus tasks such as genre are split by
    whole works and tested by their own files) is a function of its seed."""
    e = TASKS.get(name)
    task = TASKS.build({"name": name, **e.tiny})
    a, b, c = task.sample(8, seed=7), task.sample(8, seed=7), task.sample(8, seed=8)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert int(a["input_ids"].max()) < task.vocab_size and a["input_ids"].shape[1] == task.seq_len
