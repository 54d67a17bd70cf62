"""Text corpora, each split into train / val / test text by whole documents where it can, so that
no validation text is seen in training.

- ``shakespeare``: the 42 works of Shakespeare (Project Gutenberg, public domain), embedded in
  the package; whole works are held out for validation and test (``VAL_WORKS``, ``TEST_WORKS``).
- ``path``: a local text file or folder (folders split by file, a single file by position).
- ``stdlib``: the running Python's standard-library source, a code corpus on every machine.
- ``hf``: a Hugging Face ``datasets`` dataset, when the package is installed.

    splits = CORPORA.build({"name": "path", "path": "notes/"}).splits()   # {"train": str, ...}
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sysconfig
from pathlib import Path

from ..errors import ConfigError, InputError
from ..registry import CORPORA, split_spec

CORPUS_DIR = Path(__file__).parent / "corpora"
SHAKESPEARE_SHA256 = "04decea0dd965df5e6cfc4a538b0c62623aaa3bfd848ac7fad6734e59c96624d"
# Held-out works: a tragedy and a comedy each, about 4% of the text per split.
VAL_WORKS = ("macbeth_gut", "twelfth_night_gut")
TEST_WORKS = ("julius_caesar_gut", "tempest_gut")
SPLITS = ("train", "val", "test")


class Corpus:
    """A text corpus: ``splits()`` returns {"train": text, "val": text, "test": text}."""

    def splits(self) -> dict[str, str]:
        raise NotImplementedError


def _check(splits: dict[str, str], what: str) -> dict[str, str]:
    if not any(splits.values()):
        raise InputError(f"the corpus {what} is empty")
    for s in SPLITS:
        if not splits.get(s):
            raise InputError(f"the corpus {what} is too small to hold out {s} text "
                             f"({sum(map(len, splits.values()))} characters)")
    return splits


def _join(docs: list[str], sep: str = "\n\n") -> str:
    return sep.join(d for d in docs if d)


def split_documents(docs: dict[str, str], val_fraction: float, test_fraction: float
                    ) -> dict[str, str]:
    """Split named documents by whole documents: ordered by a hash of the name (stable across
    machines), the first ones are validation, the next test, the rest training."""
    names = sorted(docs, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n_val = max(1, round(val_fraction * len(names)))
    n_test = max(1, round(test_fraction * len(names)))
    val, test = set(names[:n_val]), set(names[n_val:n_val + n_test])
    order = sorted(docs)                                    # training text in name order
    return {"train": _join([docs[n] for n in order if n not in val and n not in test]),
            "val": _join([docs[n] for n in order if n in val]),
            "test": _join([docs[n] for n in order if n in test])}


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split one text by position (train | val | test), cutting at line ends."""
    n = len(text)

    def cut(frac):
        i = int(n * frac)
        j = text.find("\n", i)
        return n if j < 0 else j + 1
    a = cut(1.0 - val_fraction - test_fraction)
    b = max(a, cut(1.0 - test_fraction))
    return {"train": text[:a], "val": text[a:b], "test": text[b:]}


# --------------------------------------------------------------------------------------------
def shakespeare_works() -> list[tuple[str, str, str]]:
    """(key, title, text) of every work, in index order; checks the text's sha256."""
    raw = gzip.decompress((CORPUS_DIR / "shakespeare_works.txt.gz").read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise InputError(f"the embedded Shakespeare corpus is corrupt (sha256 {digest[:12]}…, "
                         f"expected {SHAKESPEARE_SHA256[:12]}…)")
    text = raw.decode("ascii")
    with open(CORPUS_DIR / "shakespeare_works.index.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    works, off = [], 0
    for r in rows:                     # works joined in index order, one blank line between
        n = int(r["chars"])
        works.append((r["file"], r["title"], text[off:off + n]))
        off += n + 2
    return works


@CORPORA.register("shakespeare", paper="The works of William Shakespeare (Project Gutenberg)",
                  equation="42 works; held out: val = Macbeth, Twelfth Night; "
                           "test = Julius Caesar, The Tempest",
                  test="tests/test_data.py::test_shakespeare_split_holds_out_whole_works")
class ShakespeareCorpus(Corpus):
    """The embedded public-domain Shakespeare (5.06 M ASCII characters), split by whole works."""

    def __init__(self, val_works=VAL_WORKS, test_works=TEST_WORKS):
        self.val_works, self.test_works = tuple(val_works), tuple(test_works)

    def splits(self) -> dict[str, str]:
        works = shakespeare_works()
        keys = {k for k, _, _ in works}
        for w in self.val_works + self.test_works:
            if w not in keys:
                raise ConfigError("data.corpus.val_works", w, sorted(keys),
                                  why=f"unknown work {w!r}")
        held = set(self.val_works) | set(self.test_works)
        return _check({"train": _join([t for k, _, t in works if k not in held]),
                       "val": _join([t for k, _, t in works if k in self.val_works]),
                       "test": _join([t for k, _, t in works if k in self.test_works])},
                      "shakespeare")


def _read_text(p: Path) -> str | None:
    try:
        return p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None                    # binary or unreadable files are skipped


@CORPORA.register("path", paper="Any local text file or folder",
                  equation="folders: split by whole files (hash order); one file: by position",
                  test="tests/test_data.py::test_path_corpus_file_and_folder")
class PathCorpus(Corpus):
    """A local text file, or every text file under a folder matching ``pattern``."""

    def __init__(self, path: str | None = None, pattern: str = "**/*",
                 val_fraction: float = 0.05, test_fraction: float = 0.05):
        if not path:
            raise ConfigError("data.path", path, why="the path corpus needs data.path "
                                                     "(a text file or a folder)")
        self.path, self.pattern = Path(path).expanduser(), pattern
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)

    def whole_text(self) -> str:
        """The whole file (or every document, in name order), unsplit: what ``tevo eval RUN
        --data path=FILE`` scores."""
        p = self.path
        if p.is_file():
            text = _read_text(p)
            if text is None:
                raise InputError(f"{p} is not a UTF-8 text file")
            return text
        s = self.splits()
        return "".join(s[k] for k in SPLITS)

    def splits(self) -> dict[str, str]:
        p = self.path
        if not p.exists():
            raise ConfigError("data.path", str(p), why=f"no such file or folder: {p}")
        if p.is_file():
            text = _read_text(p)
            if text is None:
                raise InputError(f"{p} is not a UTF-8 text file")
            if not text.strip():
                raise InputError(f"the corpus file {p} is empty")
            return _check(split_text(text, self.val_fraction, self.test_fraction), str(p))
        docs = {}
        for f in sorted(p.glob(self.pattern)):
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
                t = _read_text(f)
                if t and t.strip():
                    docs[str(f.relative_to(p))] = t
        if not docs:
            raise InputError(f"the corpus folder {p} holds no non-empty text files "
                             f"matching {self.pattern!r}")
        if len(docs) < 3:
            return _check(split_text(_join([docs[k] for k in sorted(docs)]), self.val_fraction,
                                     self.test_fraction), str(p))
        return _check(split_documents(docs, self.val_fraction, self.test_fraction), str(p))


@CORPORA.register("stdlib", paper="The Python standard library's source code",
                  equation="*.py under sysconfig stdlib (no site-packages); split by whole files",
                  test="tests/test_data.py::test_stdlib_corpus")
class StdlibCorpus(Corpus):
    """The running Python's standard-library source: a code corpus present on every machine."""

    def __init__(self, max_files: int | None = None, val_fraction: float = 0.05,
                 test_fraction: float = 0.05):
        self.max_files = max_files
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)

    def splits(self) -> dict[str, str]:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = []
        for dirpath, dirnames, filenames in os.walk(root):       # sorted walk: stable order
            dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages",
                                                                  "dist-packages", "__pycache__"))
            files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
            if self.max_files and len(files) >= int(self.max_files):
                files = files[:int(self.max_files)]
                break
        docs = {}
        for f in files:
            t = _read_text(f)
            if t and t.strip():
                docs[str(f.relative_to(root))] = t
        if len(docs) < 3:
            raise InputError(f"found {len(docs)} Python files under {root}; need at least 3")
        return _check(split_documents(docs, self.val_fraction, self.test_fraction), "stdlib")


@CORPORA.register("hf", paper="Hugging Face datasets (Lhoest et al., 2021)",
                  equation="load_dataset(dataset, config, data_files)[split][text_field]",
                  test="tests/test_data.py::test_hf_datasets_corpus_from_local_files")
class HFCorpus(Corpus):
    """A Hugging Face ``datasets`` dataset (local files or the hub), when it is installed.
    A missing validation/test split is carved from the training split by position."""

    def __init__(self, dataset: str | None = None, config: str | None = None,
                 data_files=None, text_field: str = "text", sep: str = "\n",
                 splits: dict | None = None, val_fraction: float = 0.05,
                 test_fraction: float = 0.05, path: str | None = None):
        self.dataset = dataset or ("text" if data_files or path else None)
        if self.dataset is None:
            raise ConfigError("data.corpus.dataset", None,
                              why="the hf corpus needs a dataset name (or data_files)")
        self.config, self.text_field, self.sep = config, text_field, sep
        self.data_files = data_files if data_files is not None else path
        self.split_names = {"train": "train", "val": "validation", "test": "test",
                            **(splits or {})}
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)

    def splits(self) -> dict[str, str]:
        try:
            import datasets
        except ImportError:
            raise ConfigError("data.corpus", "hf", why="the hf corpus needs the `datasets` "
                                                       "package (pip install datasets)") from None
        ds = datasets.load_dataset(self.dataset, self.config, data_files=self.data_files)
        out = {}
        for ours, theirs in self.split_names.items():
            if theirs in ds:
                if self.text_field not in ds[theirs].column_names:
                    raise ConfigError("data.corpus.text_field", self.text_field,
                                      ds[theirs].column_names)
                out[ours] = self.sep.join(t for t in ds[theirs][self.text_field] if t)
        if "train" not in out:
            raise ConfigError("data.corpus.splits", self.split_names["train"], list(ds),
                              why="the dataset has no training split")
        if not out.get("val") or not out.get("test"):
            carved = split_text(out["train"], self.val_fraction if "val" not in out else 0.0,
                                self.test_fraction if "test" not in out else 0.0)
            out["train"] = carved["train"]
            out.setdefault("val", carved["val"])
            out.setdefault("test", carved["test"])
        return _check(out, self.dataset)


# --------------------------------------------------------------------------------------------
def corpus_spec(data) -> tuple[str, dict]:
    """(name, options) of the corpus a DataConfig asks for. ``data.path`` with the default
    corpus means the path corpus; an unregistered name that is an existing path, too."""
    name, kw = split_spec(data.corpus, "data.corpus")
    if name not in CORPORA:
        if Path(name).expanduser().exists():
            return "path", {**kw, "path": name}
        CORPORA.get(name, "data.corpus")                    # raises with the valid choices
    if data.path and name == "shakespeare":
        name = "path"
    if data.path and name in ("path", "hf") and "path" not in kw and "data_files" not in kw:
        kw["path"] = data.path
    return name, kw


def load_whole_text(data) -> str:
    """The whole text of a DataConfig's corpus, unsplit (a file as it is)."""
    name, kw = corpus_spec(data)
    corpus = CORPORA.build({"name": name, **kw}, "data.corpus")
    if hasattr(corpus, "whole_text"):
        return corpus.whole_text()
    s = corpus.splits()
    return "".join(s[k] for k in SPLITS)


def load_corpus(data) -> dict[str, str]:
    """The train/val/test texts of a DataConfig's corpus."""
    name, kw = corpus_spec(data)
    return CORPORA.build({"name": name, **kw}, "data.corpus").splits()
