"""Tokenizers: bytes (default, no training), characters (built from the corpus), byte-level
BPE (trained with the Hugging Face ``tokenizers`` library) and ``hf``, a pretrained model's own
tokenizer read from a Hugging Face directory (what ``tevo convert --from-hf`` runs use). Chars
and BPE are saved beside the run as ``tokenizer.json`` (BPE in the ``tokenizers`` format,
loadable by Hugging Face).

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
    uses_run_dir = False                # True: takes ``run_dir`` (its files live in the run folder)

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


HF_SPECIALS = {"[BOS]": "bos_token", "[EOS]": "eos_token", "[MASK]": "mask_token",
               "[CLS]": "cls_token", "[SEP]": "sep_token", "[PAD]": "pad_token",
               "[UNK]": "unk_token"}                  # tevo name -> key in tokenizer_config.json
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt") + SENTENCEPIECE_FILES
HF_NEEDS = "tokenizer.json, or vocab.json + merges.txt, or vocab.txt"


@TOKENIZERS.register("hf", paper="Hugging Face tokenizers: a pretrained model's own tokenizer "
                                 "(tokenizer.json: BPE, WordPiece or Unigram)",
                     equation="ids = the pretrained tokenizer's normalizer → pre-tokenizer → model",
                     test="tests/test_interop_tokenizer.py::test_hf_tokenizer_equals_tokenizers")
class HFTokenizer(Tokenizer):
    """A pretrained model's tokenizer from a Hugging Face directory (``path``, relative to the run
    folder first, then to the working directory; default ``hf_tokenizer``, where
    ``tevo convert --from-hf`` puts it). Read from ``tokenizer.json``; without it, built with
    ``tokenizers`` from ``vocab.json`` + ``merges.txt`` (GPT-2 byte-level, or OpenAI GPT ``</w>``
    BPE) or ``vocab.txt`` (BERT WordPiece); sentencepiece models go through ``transformers``.

    Corpora are encoded without special tokens; ``encode`` (prompts) adds the tokenizer's own
    template (Llama's ``<s>``, BERT's ``[CLS] … [SEP]``) as ``tokenizer(text)`` does, unless
    ``add_special_tokens: false``. ``special_ids`` maps tevo's names ([BOS], [EOS], [MASK], [CLS],
    [SEP], [PAD], [UNK]) to the tokens ``tokenizer_config.json`` names; nothing is added to the
    vocabulary, so it stays the pretrained model's."""

    uses_run_dir = True

    def __init__(self, path: str = "hf_tokenizer", specials=(), run_dir=None,
                 add_special_tokens: bool = True):
        super().__init__(specials)
        self.path = _resolve(path, run_dir)
        self.add_special_tokens = bool(add_special_tokens)
        self.hf, names = load_hf_tokenizer(self.path)
        vocab = self.hf.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0   # ids may have holes
        for name, key in HF_SPECIALS.items():
            i = self.hf.token_to_id(names[key]) if names.get(key) else None
            if i is not None:
                self.special_ids[name] = i
        for s in self.specials:                # a token spelled as tevo names it ("[MASK]")
            if s not in self.special_ids and self.hf.token_to_id(s) is not None:
                self.special_ids[s] = self.hf.token_to_id(s)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode_array(self, text: str) -> np.ndarray:
        encs = self.hf.encode_batch(_paragraphs(text), add_special_tokens=False)
        if not encs:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encs])

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=self.add_special_tokens).ids)

    def decode(self, ids) -> str:
        return self.hf.decode(_ids(ids), skip_special_tokens=False)

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.path)}


def _resolve(path, run_dir) -> Path:
    """``path`` as given if absolute; else inside ``run_dir`` if there, else from the cwd."""
    p = Path(path).expanduser()
    if p.is_absolute() or run_dir is None:
        return p
    inside = Path(run_dir) / p
    return inside if inside.exists() or not p.exists() else p


def load_hf_tokenizer(path):
    """(``tokenizers.Tokenizer``-like, {"bos_token": "<s>", ...}) from a Hugging Face tokenizer
    directory or a ``tokenizer.json`` file; a one-line InputError names what is missing."""
    path = Path(path)
    if path.is_file():
        directory, file = path.parent, path
    elif path.is_dir():
        directory, file = path, path / FILENAME
    else:
        raise InputError(f"{path}: no such Hugging Face tokenizer directory or tokenizer.json")
    names = _special_names(directory)
    found = [f for f in HF_FILES if (directory / f).is_file()]
    tk = _hf_tokenizers("hf")
    if file.is_file():
        return tk.Tokenizer.from_file(str(file)), names
    cfg = _read_json(directory / "tokenizer_config.json")
    vocab_json, merges, vocab_txt = (directory / f for f in ("vocab.json", "merges.txt",
                                                             "vocab.txt"))
    if vocab_json.is_file() and merges.is_file():
        if any(k.endswith("</w>") for k in _read_json(vocab_json)):     # OpenAI GPT
            impl = tk.CharBPETokenizer(str(vocab_json), str(merges),
                                       unk_token=names.get("unk_token") or "<unk>",
                                       lowercase=cfg.get("do_lower_case", True))
        else:                                                           # GPT-2 byte-level
            impl = tk.ByteLevelBPETokenizer(str(vocab_json), str(merges),
                                            add_prefix_space=cfg.get("add_prefix_space", False))
    elif vocab_txt.is_file():                                           # BERT WordPiece
        impl = tk.BertWordPieceTokenizer(
            str(vocab_txt), lowercase=cfg.get("do_lower_case", True),
            strip_accents=cfg.get("strip_accents"),
            handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
            **{k: names[k] for k in ("unk_token", "sep_token", "cls_token", "pad_token",
                                     "mask_token") if names.get(k)})
    else:
        return _transformers_tokenizer(directory, found), names
    hf = tk.Tokenizer.from_str(impl.to_str())
    _add_known_tokens(hf, directory, names)
    return hf, names


def _transformers_tokenizer(directory: Path, found: list[str]):
    """A sentencepiece model through ``transformers.AutoTokenizer`` (when installed)."""
    sp = [f for f in SENTENCEPIECE_FILES if (directory / f).is_file()]
    if not sp:
        raise InputError(f"{directory}: no usable Hugging Face tokenizer (found: "
                         f"{', '.join(found) or 'nothing'}; needs {HF_NEEDS})")
    try:
        import transformers
    except ImportError:
        raise InputError(f"{directory}: {sp[0]} is a sentencepiece model, which needs "
                         f"`transformers` (pip install transformers) or a tokenizer.json "
                         f"(found: {', '.join(found)}; needs {HF_NEEDS})") from None
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    backend = getattr(tok, "backend_tokenizer", None)
    return backend if backend is not None else _TransformersTokenizer(tok)


class _TransformersTokenizer:
    """The few ``tokenizers.Tokenizer`` methods HFTokenizer uses, over a transformers
    tokenizer without a ``tokenizers`` backend (sentencepiece)."""

    class _Encoding:
        def __init__(self, ids):
            self.ids = ids

    def __init__(self, tok):
        self.tok = tok

    def get_vocab(self, with_added_tokens: bool = True) -> dict:
        return self.tok.get_vocab()

    def token_to_id(self, token: str):
        return self.tok.get_vocab().get(token)

    def encode(self, text: str, add_special_tokens: bool = True):
        return self._Encoding(self.tok.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts, add_special_tokens: bool = True):
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _special_names(directory: Path) -> dict[str, str]:
    """{"bos_token": "<s>", ...} from special_tokens_map.json and tokenizer_config.json."""
    names = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        for key, v in _read_json(directory / f).items():
            if key in HF_SPECIALS.values():
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str) and v:
                    names[key] = v
    return names


def _add_known_tokens(hf, directory: Path, names: dict) -> None:
    """Mark the named special tokens as special (never split) and add ``added_tokens.json``,
    checking that each keeps its id."""
    hf.add_special_tokens([t for t in names.values() if hf.token_to_id(t) is not None])
    added = _read_json(directory / "added_tokens.json")
    specials = set(names.values())
    for token, i in sorted(added.items(), key=lambda kv: kv[1]):
        if hf.token_to_id(token) is None:
            (hf.add_special_tokens if token in specials else hf.add_tokens)([token])
        if hf.token_to_id(token) != i:
            raise InputError(f"{directory}: added_tokens.json gives {token!r} id {i}, but the "
                             f"vocabulary puts it at {hf.token_to_id(token)}")


def _paragraphs(text: str, size: int = 1 << 14) -> list[str]:
    """Cut text into pieces of about ``size`` characters, only right after a newline."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def _hf_tokenizers(name: str = "bpe"):
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("data.tokenizer", name,
                          why=f"the {name} tokenizer needs the `tokenizers` package "
                              "(pip install tokenizers)") from None
    import tokenizers.decoders
    import tokenizers.models
    import tokenizers.pre_tokenizers
    import tokenizers.trainers
    return tokenizers


# --------------------------------------------------------------------------------------------
def build_tokenizer(spec, text: str = "", specials=(), vocab_size: int | None = None,
                    run_dir=None) -> Tokenizer:
    """A tokenizer from a spec (name or {name: ..., **options}), trained on ``text`` if needed;
    ``run_dir``: the run folder that relative tokenizer paths start from (``hf``)."""
    name, kw = split_spec(spec, "data.tokenizer")
    entry = TOKENIZERS.get(name, "data.tokenizer")
    if vocab_size is not None and name == "bpe":
        kw.setdefault("vocab_size", vocab_size)
    if entry.obj.uses_run_dir:
        kw["run_dir"] = run_dir
    try:
        return entry.obj.fit(text, specials=tuple(specials), **kw)
    except TypeError as e:
        raise ConfigError(f"data.tokenizer({name})", kw, why=f"bad options: {e}") from None


def load_tokenizer(spec, run_dir=None, specials=()) -> Tokenizer:
    """The tokenizer of a run: fixed vocabularies are rebuilt, trained ones read from the file."""
    name, kw = split_spec(spec, "data.tokenizer")
    entry = TOKENIZERS.get(name, "data.tokenizer")
    if entry.obj.uses_run_dir:
        kw["run_dir"] = run_dir
    if not entry.obj.trained:
        return entry.obj(specials=tuple(specials), **kw)
    path = Path(run_dir or ".") / FILENAME
    if not path.exists():
        raise InputError(f"no {FILENAME} in {run_dir}: the {name} tokenizer of this run is missing")
    return entry.obj.from_file(path, specials=tuple(specials)) if name == "bpe" \
        else entry.obj.from_file(path)
