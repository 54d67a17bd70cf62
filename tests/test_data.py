"""Data: tokenizers round-trip, corpora split by whole documents, token streams and the
deterministic, resumable sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tevo.config import DataConfig, load_config
from tevo.data import corpora
from tevo.data.corpora import (PathCorpus, ShakespeareCorpus, StdlibCorpus, TEST_WORKS,
                               VAL_WORKS, load_corpus, shakespeare_works)
from tevo.data.pipeline import CorpusData, build_data
from tevo.data.stream import TokenStream, WindowSampler, eval_starts
from tevo.data.tokenizer import build_tokenizer, load_tokenizer
from tevo.errors import ConfigError, InputError
from tevo.registry import OBJECTIVES

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune, — naïve café 東京 🙂\n") * 20


@pytest.mark.parametrize("name", ["bytes", "chars", "bpe"])
def test_tokenizers_round_trip(name, tmp_path):
    tok = build_tokenizer(name, TEXT, specials=["[MASK]", "[SEP]"], vocab_size=300)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert max(ids) < tok.vocab_size and min(ids) >= 0
    assert sorted(tok.special_ids) == ["[MASK]", "[SEP]"]
    assert len(set(tok.special_ids.values())) == 2
    assert all(i not in tok.special_ids.values() for i in ids)   # text never makes a special
    if name == "bytes":
        assert tok.vocab_size == 258 and ids == list(TEXT.encode("utf-8"))
    if name == "chars":
        assert tok.vocab_size == len(set(TEXT)) + 2 and len(ids) == len(TEXT)
    if name == "bpe":
        assert len(ids) < 0.7 * len(TEXT.encode("utf-8"))             # merges were learned
    tok.save(tmp_path)
    again = load_tokenizer(name, tmp_path, specials=["[MASK]", "[SEP]"])
    assert again.encode(TEXT) == ids and again.special_ids == tok.special_ids
    if name != "bytes":
        assert (tmp_path / "tokenizer.json").exists()


def test_bpe_file_is_a_hugging_face_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = build_tokenizer({"name": "bpe", "vocab_size": 280}, TEXT)
    tok.save(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode("To be, or not").ids == tok.encode("To be, or not")


def test_chars_tokenizer_rejects_unknown_characters():
    tok = build_tokenizer("chars", "abc")
    with pytest.raises(InputError, match="not in the chars tokenizer"):
        tok.encode("abz")


def test_shakespeare_split_holds_out_whole_works():
    works = {k: t for k, _, t in shakespeare_works()}
    assert len(works) == 42
    s = ShakespeareCorpus().splits()
    for key in VAL_WORKS + TEST_WORKS:
        mid = works[key][len(works[key]) // 2:][:300]
        assert mid not in s["train"]
        assert (mid in s["val"]) == (key in VAL_WORKS) and (mid in s["test"]) == (key in TEST_WORKS)
    n_held = sum(len(works[k]) for k in VAL_WORKS + TEST_WORKS)
    assert len(s["val"]) + len(s["test"]) == n_held + 2 * 2       # one blank line between works
    assert len(s["train"]) + n_held > 4_900_000
    assert s["val"].startswith("MACBETH\n\nby William Shakespeare")


def test_shakespeare_checks_its_sha256(monkeypatch):
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", "0" * 64)
    with pytest.raises(InputError, match="corrupt"):
        shakespeare_works()


def test_path_corpus_file_and_folder(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i}\n" for i in range(1000)))
    s = PathCorpus(str(f)).splits()
    assert "".join(s[k] for k in ("train", "val", "test")) == f.read_text()
    assert s["val"].startswith("line ") and s["test"].endswith("line 999\n")
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"d{i:02d}.txt").write_text(f"document {i}\n" * 5)
    (folder / "blob.bin").write_bytes(b"\xff\xfe\x00binary")      # skipped: not UTF-8
    s = PathCorpus(str(folder)).splits()
    for i in range(40):                                            # each file in exactly one split
        assert sum(f"document {i}\n" in s[k] for k in ("train", "val", "test")) == 1
    assert s["val"] and s["test"]
    with pytest.raises(ConfigError, match="no such file"):
        PathCorpus(str(tmp_path / "missing.txt")).splits()
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="empty"):
        PathCorpus(str(tmp_path / "empty.txt")).splits()
    # data.path with the default corpus means the path corpus
    assert load_corpus(DataConfig(path=str(f)))["train"] == PathCorpus(str(f)).splits()["train"]


def test_stdlib_corpus():
    s = StdlibCorpus(max_files=12).splits()
    assert all(s[k] for k in ("train", "val", "test"))
    assert "import" in s["train"] + s["val"] + s["test"]


def test_hf_datasets_corpus_from_local_files(tmp_path):
    pytest.importorskip("datasets")
    tr, va = tmp_path / "train.txt", tmp_path / "valid.txt"
    tr.write_text("".join(f"training line {i}\n" for i in range(200)))
    va.write_text("".join(f"validation line {i}\n" for i in range(20)))
    spec = {"name": "hf", "dataset": "text",
            "data_files": {"train": str(tr), "validation": str(va)}}
    s = load_corpus(DataConfig(corpus=spec))
    assert "validation line 3" in s["val"] and "validation" not in s["train"]
    assert s["test"] and s["test"] not in s["train"]


def test_sampler_is_deterministic_resumable_and_covers_each_epoch():
    a = WindowSampler(1000, 11, 10, seed=3)
    first = a.take(a.n)                                   # one whole epoch
    assert len(set(first.tolist())) == a.n
    assert ((first - first.min()) % 10 == 0).all() and first.max() + 11 <= 1000
    a.take(7)
    state = a.state_dict()
    nxt = a.take(150)                                     # crosses into epoch 2
    b = WindowSampler(1000, 11, 10, seed=3)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.take(150), nxt)
    c = WindowSampler(1000, 11, 10, seed=4)
    assert not np.array_equal(c.take(20), first[:20])
    with pytest.raises(InputError, match="fewer than one sequence"):
        WindowSampler(5, 11, 10)


def test_lm_windows_are_packed_and_labels_shifted(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT * 5)
    cfg = load_config(None, [f"data.path={f}", "data.seq_len=16", "data.tokenizer=chars"])
    data = build_data(cfg, OBJECTIVES.build("clm"), tmp_path / "run")
    b = data.train_batch(4)
    assert b["input_ids"].shape == (4, 16) == b["labels"].shape
    torch.testing.assert_close(b["input_ids"][:, 1:], b["labels"][:, :-1])
    tok = data.tokenizer
    assert tok.decode(b["input_ids"][0]) in TEXT * 6
    # the tokenized splits are cached and memory-mapped; a reopened run reads the same stream
    assert (tmp_path / "run" / "data" / "train.npy").exists()
    again = build_data(cfg, OBJECTIVES.build("clm"), tmp_path / "run")
    assert isinstance(again.streams["train"].tokens, np.memmap)
    again.load_state_dict(data.state_dict())
    torch.testing.assert_close(again.train_batch(4), data.train_batch(4))
    st = data.stats("val")
    assert st["chars_per_token"] == 1.0


def test_eval_windows_cover_the_split_and_shard_by_rank():
    starts = eval_starts(103, 11, 10)
    assert starts.tolist() == list(range(0, 93, 10))      # stride n: every target once
    stream = TokenStream(np.arange(103) % 50)
    data = CorpusData({"train": stream, "val": stream, "test": stream},
                      build_tokenizer("bytes"), {"splits": {}}, "lm", 10)
    full = torch.cat([b["input_ids"] for b in data.eval_batches("val", 4)])
    shards = [torch.cat([b["input_ids"] for b in data.eval_batches("val", 4, rank=r, world=2)])
              for r in range(2)]
    assert sorted(map(tuple, torch.cat(shards).tolist())) == sorted(map(tuple, full.tolist()))
    few = list(data.eval_batches("val", 2, max_batches=2))
    assert sum(len(b["input_ids"]) for b in few) == 4


def test_seq2seq_and_mlm_formats_on_a_corpus(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT * 5)
    cfg = load_config(None, [f"data.path={f}", "data.seq_len=16"])
    s2s = OBJECTIVES.build("seq2seq")
    data = build_data(cfg, s2s)
    b = data.train_batch(3)
    bos, eos = data.special_ids["[BOS]"], data.special_ids["[EOS]"]
    assert b["src_ids"].shape == (3, 8) and b["tgt_ids"].shape == (3, 10)
    assert (b["tgt_ids"][:, 0] == bos).all() and (b["tgt_ids"][:, -1] == eos).all()
    mlm = build_data(cfg, OBJECTIVES.build({"name": "mlm", "nsp": True}))
    assert mlm.train_batch(2)["input_ids"].shape == (2, 16)
    assert {"[MASK]", "[CLS]", "[SEP]"} <= set(mlm.special_ids) and mlm.vocab_size == 259
