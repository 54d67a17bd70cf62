"""Tokenizers: bytes (default, no training), characters (built from the corpus) and byte-level
BPE (trained with the Hugging Face ``tokenizers`` library). Chars and BPE are saved beside the
run as ``tokenizer.json`` (BPE in the ``tokenizers`` format, loadable by Hugging Face).

Special tokens that an objective needs ([MASK], [CLS], [SEP], [BOS], [EOS]) are appended after
the base vocabulary for bytes/chars and put first for BPE; ``special_ids`` maps name → id.

    tok = build_tokenizer("chars", text=train_text)
    ids = tok.encode_array("To be, or not to be")      # np.ndarray of ids
    assert tok.decode(ids) == "To be, or not to be"
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..registry import TOKENIZERS, split_spec

FILENAME = "tokenizer.json"


class Tokenizer:
    """text ↔ ids. ``encode_array`` returns a numpy array (fast path for whole corpora)."""

    trained = False                     # True: the vocabulary is learned and saved with the run

    def __init__(self, specials=()):
        self.specials = list(specials)
        self.special_ids: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @classmethod
    def fit(cls, text: str, specials=(), **options) -> "Tokenizer":
        return cls(specials=specials, **options)

    def encode_array(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        raise NotImplementedError

    def save(self, run_dir) -> None:
        """Write what ``load_tokenizer`` needs (nothing for fixed vocabularies)."""

    def describe(self) -> dict:
        return {"name": self.registry_name, "vocab_size": self.vocab_size,
                "specials": self.special_ids}


def _ids(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


def _write_json(path: Path, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(tmp, path)


@TOKENIZERS.register("bytes", paper="Byte-level language modelling (e.g. ByT5, Xue et al., 2022)",
                     equation="id = UTF-8 byte value (0..255); specials after 255",
                     test="tests/test_data.py::test_tokenizers_round_trip")
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: vocabulary 256 (+ specials), nothing to train, any text."""

    def __init__(self, specials=()):
        super().__init__(specials)
        self.special_ids = {s: 256 + i for i, s in enumerate(self.specials)}
        self._names = {v: k for k, v in self.special_ids.items()}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        out, buf = [], bytearray()
        for i in _ids(ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(self._names.get(i, "\ufffd"))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


@TOKENIZERS.register("chars", paper="Character-level language modelling (Karpathy, char-rnn, 2015)",
                     equation="id = index of the character in the sorted corpus alphabet",
                     test="tests/test_data.py::test_tokenizers_round_trip")
class CharTokenizer(Tokenizer):
    """One token per character of the training text's alphabet (saved with the run)."""

    trained = True

    def __init__(self, chars: str = "", specials=()):
        super().__init__(specials)
        self.chars = "".join(sorted(set(chars)))
        if not self.chars:
            raise InputError("the chars tokenizer needs a non-empty training text")
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)  # sorted
        self.special_ids = {s: len(self.chars) + i for i, s in enumerate(self.specials)}
        self._names = {v: k for k, v in self.special_ids.items()}

    @classmethod
    def fit(cls, text: str, specials=(), **options) -> "CharTokenizer":
        return cls(chars=text, specials=specials, **options)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        ids_c = np.minimum(ids, len(self._codes) - 1)
        bad = self._codes[ids_c] != codes
        if bad.any():
            unknown = sorted({chr(c) for c in codes[bad][:1000]})
            raise InputError(f"characters not in the chars tokenizer's alphabet: "
                             f"{''.join(unknown)[:40]!r} (it knows {len(self.chars)} characters "
                             f"of its training text)")
        return ids

    def decode(self, ids) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else self._names.get(i, "\ufffd")
                       for i in _ids(ids))

    def save(self, run_dir) -> None:
        _write_json(Path(run_dir) / FILENAME, {"type": "chars", "chars": self.chars,
                                               "specials": self.specials})

    @classmethod
    def from_file(cls, path) -> "CharTokenizer":
        with open(path) as f:
            data = json.load(f)
        return cls(chars=data["chars"], specials=data.get("specials", []))


@TOKENIZERS.register("bpe", paper="Neural Machine Translation of Rare Words with Subword Units "
                                  "(Sennrich et al., 2016); byte-level BPE as in GPT-2",
                     equation="merge the most frequent adjacent pair until the vocabulary is full",
                     test="tests/test_data.py::test_tokenizers_round_trip")
class BPETokenizer(Tokenizer):
    """Byte-level BPE trained on the training split with Hugging Face ``tokenizers``."""

    trained = True

    def __init__(self, hf_tokenizer=None, specials=()):
        super().__init__(specials)
        self.hf = hf_tokenizer
        self.special_ids = {s: self.hf.token_to_id(s) for s in self.specials}

    @classmethod
    def fit(cls, text: str, specials=(), vocab_size: int | None = None, min_frequency: int = 2,
            **options) -> "BPETokenizer":
        tk = _hf_tokenizers()
        vocab_size = int(vocab_size or 1024)
        if vocab_size < 256 + len(specials):
            raise ConfigError("data.vocab_size", vocab_size,
                              why=f"byte-level BPE needs at least {256 + len(specials)} tokens")
        hf = tk.Tokenizer(tk.models.BPE())
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        chunk = 1 << 16
        hf.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer)
        return cls(hf, specials)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode_array(self, text: str) -> np.ndarray:
        # Encoded in pieces cut after a newline (in parallel): a token never spans a cut, and
        # decoding is exact whatever the cuts.
        parts = _paragraphs(text)
        encs = self.hf.encode_batch(parts, add_special_tokens=False)
        if not encs:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encs])

    def decode(self, ids) -> str:
        return self.hf.decode(_ids(ids), skip_special_tokens=False)

    def save(self, run_dir) -> None:
        tmp = str(Path(run_dir) / f"{FILENAME}.tmp")
        self.hf.save(tmp)
        os.replace(tmp, Path(run_dir) / FILENAME)

    @classmethod
    def from_file(cls, path, specials=()) -> "BPETokenizer":
        hf = _hf_tokenizers().Tokenizer.from_file(str(path))
        if not specials:
            specials = [t.content for t in hf.get_added_tokens_decoder().values()] \
                if hasattr(hf, "get_added_tokens_decoder") else []
        return cls(hf, specials)


def _paragraphs(text: str, size: int = 1 << 14) -> list[str]:
    """Cut text into pieces of about ``size`` characters, only right after a newline."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def _hf_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("data.tokenizer", "bpe",
                          why="the bpe tokenizer needs the `tokenizers` package "
                              "(pip install tokenizers)") from None
    import tokenizers.decoders
    import tokenizers.models
    import tokenizers.pre_tokenizers
    import tokenizers.trainers
    return tokenizers


# --------------------------------------------------------------------------------------------
def build_tokenizer(spec, text: str = "", specials=(), vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer from a spec (name or {name: ..., **options}), trained on ``text`` if needed."""
    name, kw = split_spec(spec, "data.tokenizer")
    entry = TOKENIZERS.get(name, "data.tokenizer")
    if vocab_size is not None and name == "bpe":
        kw.setdefault("vocab_size", vocab_size)
    try:
        return entry.obj.fit(text, specials=tuple(specials), **kw)
    except TypeError as e:
        raise ConfigError(f"data.tokenizer({name})", kw, why=f"bad options: {e}") from None


def load_tokenizer(spec, run_dir=None, specials=()) -> Tokenizer:
    """The tokenizer of a run: fixed vocabularies are rebuilt, trained ones read from the file."""
    name, kw = split_spec(spec, "data.tokenizer")
    entry = TOKENIZERS.get(name, "data.tokenizer")
    if not entry.obj.trained:
        return entry.obj(specials=tuple(specials), **kw)
    path = Path(run_dir or ".") / FILENAME
    if not path.exists():
        raise InputError(f"no {FILENAME} in {run_dir}: the {name} tokenizer of this run is missing")
    return entry.obj.from_file(path, specials=tuple(specials)) if name == "bpe" \
        else entry.obj.from_file(path)
