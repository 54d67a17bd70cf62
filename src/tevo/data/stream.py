"""Token streams and a deterministic, resumable sampler of packed windows.

A split is one token array (in memory, or memory-mapped from the run's ``data/`` cache); a
training example is a window of ``seq_len (+1)`` consecutive tokens, packed across document
boundaries. Each epoch shifts the window grid by a random offset and visits the windows in a
random order, both drawn from (seed, epoch) alone, so the sampler's whole state is two integers
that go into the checkpoint. Every DDP rank draws the same global batch and keeps its own rows.
A model with a segment memory reads the stream in order instead (``LaneReader``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError


def token_dtype(vocab_size: int):
    """The smallest numpy dtype that holds every id."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.int32


class TokenStream:
    """A 1-D array of token ids (numpy, possibly a memmap); gathers windows as LongTensors."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_ids(cls, ids, vocab_size: int) -> "TokenStream":
        return cls(np.asarray(ids).astype(token_dtype(vocab_size)))

    def save(self, path) -> None:
        tmp = Path(f"{path}.tmp.npy")
        np.save(tmp, self.tokens)
        tmp.replace(path)

    @classmethod
    def open(cls, path) -> "TokenStream":
        """Memory-map a saved stream (nothing is read until windows are gathered)."""
        return cls(np.load(path, mmap_mode="r"))

    def windows(self, starts, length: int) -> Tensor:
        """(len(starts), length) LongTensor of tokens[s : s + length] for each start."""
        starts = np.asarray(starts, dtype=np.int64)
        idx = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))

    def at(self, idx) -> Tensor:
        """LongTensor of tokens[idx] for an integer index array of any shape."""
        return torch.from_numpy(np.asarray(self.tokens[np.asarray(idx, dtype=np.int64)],
                                           dtype=np.int64))


def window_count(n_tokens: int, length: int, stride: int) -> int:
    """Windows of ``length`` at ``o + i·stride`` that fit for every offset o in [0, stride)."""
    if n_tokens < length:
        return 0
    n = (n_tokens - length - (stride - 1)) // stride + 1
    return n if n >= 1 else 1


class WindowSampler:
    """Start positions of training windows: epoch e uses offset o_e and permutation π_e, both
    drawn from ``numpy.random.default_rng([seed, e])``; state = (epoch, index)."""

    def __init__(self, n_tokens: int, length: int, stride: int, seed: int = 0,
                 shuffle: bool = True, what: str = "train"):
        self.n_tokens, self.length, self.stride = int(n_tokens), int(length), int(stride)
        self.seed, self.shuffle = int(seed), shuffle
        self.n = window_count(self.n_tokens, self.length, self.stride)
        if self.n < 1:
            raise InputError(f"the {what} split has {n_tokens} tokens, fewer than one sequence "
                             f"of {length}; lower data.seq_len or use a larger corpus")
        self.epoch, self.index = 0, 0
        self._plan_epoch = None

    def _plan(self):
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            room = self.n_tokens - self.length - (self.n - 1) * self.stride
            offset = int(rng.integers(0, min(self.stride - 1, room) + 1)) if self.shuffle else 0
            order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self._starts = offset + order.astype(np.int64) * self.stride
            self._plan_epoch = self.epoch
        return self._starts

    def take(self, k: int) -> np.ndarray:
        """The next ``k`` window starts (crossing into the next epoch when needed)."""
        out = []
        while k > 0:
            starts = self._plan()
            chunk = starts[self.index:self.index + k]
            out.append(chunk)
            k -= len(chunk)
            self.index += len(chunk)
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("n", self.n)) != self.n:
            raise InputError(f"the checkpoint's sampler covers {state['n']} windows, this data "
                             f"has {self.n}: the corpus or data.seq_len changed")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class LaneReader:
    """The training stream read in order, as Transformer-XL is trained (Dai et al., 2019, §3.2
    and its reference code's ordered iterator): the stream is cut into ``lanes`` contiguous
    lanes of ``lane_len = n_tokens // lanes`` tokens (the remainder is dropped), and each step
    takes the next ``seg_len`` tokens of every lane: lane b at step t reads tokens
    [b·lane_len + t·seg_len, b·lane_len + (t+1)·seg_len + 1) (inputs and their next-token
    targets, so consecutive segments share one token). Segment t+1 of a lane is the text right
    after segment t, which is what lets the memory of segment t serve segment t+1.

    At the end of a lane the reading wraps around to the lane's start (positions modulo
    lane_len): every step has the same shape, every token of the lane is read once per
    lane_len / seg_len steps, and the memory carries over the seam as it carries over a document
    boundary in the packed stream. State = the offset within the lanes, one integer."""

    def __init__(self, n_tokens: int, lanes: int, seg_len: int, what: str = "train"):
        self.lanes, self.seg_len = int(lanes), int(seg_len)
        self.lane_len = int(n_tokens) // self.lanes
        if self.lane_len < self.seg_len + 1:
            raise InputError(f"the {what} split has {n_tokens} tokens: cut into {lanes} lanes "
                             f"(train.batch_size) that is {self.lane_len} per lane, fewer than "
                             f"one segment of {self.seg_len + 1}; lower train.batch_size or "
                             f"data.seq_len, or use a larger corpus")
        self.starts = np.arange(self.lanes, dtype=np.int64) * self.lane_len
        self.offset = 0

    def take(self) -> np.ndarray:
        """(lanes, seg_len + 1) token indices of the next segment of every lane."""
        cols = (self.offset + np.arange(self.seg_len + 1, dtype=np.int64)) % self.lane_len
        self.offset = (self.offset + self.seg_len) % self.lane_len
        return self.starts[:, None] + cols[None, :]

    def state_dict(self) -> dict:
        return {"offset": self.offset, "lanes": self.lanes, "lane_len": self.lane_len}

    def load_state_dict(self, state: dict) -> None:
        if (int(state["lanes"]), int(state["lane_len"])) != (self.lanes, self.lane_len):
            raise InputError(f"the checkpoint reads {state['lanes']} lanes of "
                             f"{state['lane_len']} tokens, this run {self.lanes} of "
                             f"{self.lane_len}: the corpus or train.batch_size changed")
        self.offset = int(state["offset"])


def eval_starts(n_tokens: int, length: int, stride: int, max_windows: int | None = None
                ) -> np.ndarray:
    """Starts of the evaluation windows: the whole split in order (stride apart), or
    ``max_windows`` of them evenly spaced across it."""
    n = (n_tokens - length) // stride + 1 if n_tokens >= length else 0
    starts = np.arange(max(n, 0), dtype=np.int64) * stride
    if max_windows is not None and n > max_windows:
        pick = np.unique(np.linspace(0, n - 1, max_windows).round().astype(np.int64))
        starts = starts[pick]
    return starts
