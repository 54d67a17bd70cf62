"""Labelled images for classification: the ``digits`` set and any ImageFolder, split into fixed
stratified train / val / test parts, served as ``{"images": (B, C, H, W), "labels": (B,)}``.

- ``digits``: scikit-learn's ``load_digits`` (1,797 UCI handwritten digits, 8×8 grey levels
  0..16, ten classes), shipped inside the scikit-learn wheel: offline (extra ``tevo[vision]``).
- ``image_folder``: ``path/<class>/<image>`` (the torchvision ImageFolder layout), read with
  Pillow; every image must have the same size and mode (grey 'L' → 1 channel, else RGB).

Pixels are scaled to [0, 1] and then standardised as (x − 0.5) / 0.5. The split is stratified
and fixed: within each class, a permutation seeded by ``SPLIT_SEED`` puts the first
``val_fraction`` in validation, the next ``test_fraction`` in test and the rest in training, so
every run, seed and machine sees the same three sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..registry import CORPORA
from .corpora import SPLITS

SPLIT_SEED = 0
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Images (N, C, H, W) float32 in [0, 1], integer labels (N,), class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list

    def subset(self, idx) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.classes)


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Indices of each split, per class ``round(f · n_c)`` (at least one when n_c >= 3)."""
    rng = np.random.RandomState(seed)
    out = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(val_fraction * len(idx)))
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        out["val"].append(idx[:n_val])
        out["test"].append(idx[n_val:n_val + n_test])
        out["train"].append(idx[n_val + n_test:])
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def _fractions(val_fraction, test_fraction) -> tuple[float, float]:
    for k, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < float(v) < 0.5:
            raise ConfigError(f"data.extra.{k}", v, why="expected a fraction in (0, 0.5)")
    return float(val_fraction), float(test_fraction)


class ImageCorpus:
    """Base: ``load()`` → ImageSet; ``splits()`` → {split: ImageSet} (stratified, fixed)."""

    val_fraction, test_fraction = 0.15, 0.15

    def load(self) -> ImageSet:
        raise NotImplementedError

    def splits(self) -> dict[str, ImageSet]:
        data = self.load()
        idx = stratified_split(data.labels, self.val_fraction, self.test_fraction)
        out = {s: data.subset(i) for s, i in idx.items()}
        for s in SPLITS:
            if not len(out[s].labels):
                raise InputError(f"{len(data.labels)} images are too few to hold out a {s} "
                                 f"split")
        return out


@CORPORA.register("digits", paper="UCI optical recognition of handwritten digits "
                                  "(Alpaydin & Kaynak, 1998), via scikit-learn load_digits",
                  summary="1,797 8×8 handwritten digits, 10 classes", modality="image")
class Digits(ImageCorpus):
    """scikit-learn's 8×8 digits (grey levels 0..16 → [0, 1]), one channel."""

    def __init__(self, val_fraction: float = 0.15, test_fraction: float = 0.15):
        self.val_fraction, self.test_fraction = _fractions(val_fraction, test_fraction)

    def load(self) -> ImageSet:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ConfigError("data.corpus", "digits",
                              why="the digits set ships with scikit-learn: pip install "
                                  "'tevo[vision]'") from None
        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None]          # (1797, 1, 8, 8)
        return ImageSet(x, d.target.astype(np.int64), [str(c) for c in d.target_names])


@CORPORA.register("image_folder", summary="a folder of class sub-folders of images (Pillow)",
                  modality="image")
class ImageFolder(ImageCorpus):
    """``path/<class>/<file>``: class names are the sorted sub-folder names."""

    def __init__(self, path: str | None = None, val_fraction: float = 0.15,
                 test_fraction: float = 0.15):
        if not path:
            raise ConfigError("data.path", path, why="image_folder needs a folder "
                                                     "(data.path=DIR with one sub-folder per class)")
        self.path = Path(path)
        self.val_fraction, self.test_fraction = _fractions(val_fraction, test_fraction)

    def load(self) -> ImageSet:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise ConfigError("data.path", str(self.path),
                              why="reading images needs Pillow: pip install 'tevo[vision]'"
                              ) from None
        if not self.path.is_dir():
            raise InputError(f"data.path={self.path}: not a folder")
        classes = sorted(p.name for p in self.path.iterdir() if p.is_dir()
                         and not p.name.startswith("."))
        if len(classes) < 2:
            raise InputError(f"data.path={self.path}: an image folder needs at least two class "
                             f"sub-folders, found {len(classes)}")
        arrays, labels, first = [], [], None
        for ci, c in enumerate(classes):
            for f in sorted((self.path / c).iterdir()):
                if not f.is_file() or f.suffix.lower() not in IMAGE_EXTS:
                    continue
                try:
                    with Image.open(f) as im:
                        im.load()
                        mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
                        a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
                except (UnidentifiedImageError, OSError, ValueError) as e:
                    raise InputError(f"cannot read image {f}: {e}") from None
                a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)      # (C, H, W)
                if first is None:
                    first = (f, a.shape)
                elif a.shape != first[1]:
                    raise InputError(f"image {f} is {_shape(a.shape)} but {first[0]} is "
                                     f"{_shape(first[1])}: every image of a folder must have "
                                     f"one size and mode (resize them first)")
                arrays.append(a)
                labels.append(ci)
        if not arrays:
            raise InputError(f"data.path={self.path}: no images ({', '.join(IMAGE_EXTS)}) in "
                             f"its class sub-folders")
        return ImageSet(np.stack(arrays), np.asarray(labels, dtype=np.int64), classes)


def _shape(s) -> str:
    return f"{s[1]}×{s[2]} with {s[0]} channel{'s' if s[0] > 1 else ''}"


def image_corpus(data) -> ImageCorpus:
    """The image corpus of a DataConfig: ``data.path`` → an ImageFolder, else ``data.corpus``
    (a registered image corpus, default ``digits``); ``data.extra`` passes its options."""
    if data.path:
        return ImageFolder(data.path, **data.extra)
    name = data.corpus if isinstance(data.corpus, str) else None
    if name not in CORPORA or CORPORA.get(name).extra.get("modality") != "image":
        raise ConfigError("data.corpus", data.corpus,
                          [n for n in CORPORA.names() if CORPORA.get(n).extra.get("modality")
                           == "image"],
                          why="an image model trains on an image corpus (or data.path=DIR)")
    return CORPORA.build({"name": name, **data.extra}, "data.corpus")


class ImageData:
    """The DataModule of labelled images (see ``tevo.data.pipeline.DataModule``): training
    batches are drawn without replacement from a per-epoch permutation seeded by (seed, epoch),
    resumable from (epoch, position); evaluation batches read a split in order."""

    fmt = "image"
    tokenizer = None
    special_ids: dict = {}

    def __init__(self, splits: dict[str, ImageSet], seed: int = 0):
        self.splits = splits
        tr = splits["train"]
        self.classes = list(tr.classes)
        self.vocab_size = len(self.classes)                 # the classifier's outputs
        self.image_shape = tuple(int(s) for s in tr.images.shape[1:])
        self.seq_len = 0
        self.tensors = {s: (torch.from_numpy((v.images - 0.5) / 0.5).float(),
                            torch.from_numpy(v.labels).long()) for s, v in splits.items()}
        self.seed, self.epoch, self.pos = int(seed), 0, 0
        self._perm = None

    @property
    def model_fields(self) -> dict:
        """Model fields fixed by the data: classes, image size and channels."""
        C, H, W = self.image_shape
        return {"vocab_size": self.vocab_size, "image_size": [H, W], "channels": C}

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            self._perm = torch.randperm(len(self.tensors["train"][1]), generator=g)
        return self._perm

    def train_batch(self, n: int) -> dict:
        x, y = self.tensors["train"]
        parts, got = [], 0
        while got < n:                                   # across an epoch boundary if needed
            perm = self._permutation()
            k = min(n - got, len(perm) - self.pos)
            parts.append(perm[self.pos:self.pos + k])
            got += k
            self.pos += k
            if self.pos >= len(perm):
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = torch.cat(parts)
        return {"images": x[idx], "labels": y[idx]}

    def read_in_order(self, lanes: int) -> None:
        raise ConfigError("model.memory", why="a segment memory needs a text stream; images "
                                              "are independent examples")

    def eval_batches(self, split, batch_size, max_batches=None, rank=0, world=1, seq_len=None):
        if split not in self.tensors:
            raise ConfigError("split", split, list(self.tensors))
        if seq_len is not None:
            raise ConfigError("lengths", seq_len, why="images have no sequence length to vary")
        x, y = self.tensors[split]
        step = batch_size * world
        for k, i in enumerate(range(0, len(y), step)):
            if max_batches is not None and k >= max_batches:
                break
            lo, hi = i + rank * batch_size, min(i + (rank + 1) * batch_size, len(y))
            if lo < hi:
                yield {"images": x[lo:hi], "labels": y[lo:hi]}

    def stats(self, split: str):
        return None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self._perm = int(state.get("epoch", 0)), int(state.get("pos", 0)), None

    @classmethod
    def build(cls, data, seed: int = 0) -> "ImageData":
        return cls(image_corpus(data).splits(), seed)
