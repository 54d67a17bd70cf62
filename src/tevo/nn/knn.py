"""Nearest-neighbour search over a store of key vectors: faiss when installed, exact torch else.

Used by the kNN-LM datastore (Khandelwal et al., 2020) and kNN-augmented attention. Kinds:
``flat`` (exact: faiss IndexFlatL2 / IndexFlatIP, or a brute-force torch matmul + top-k,
O(N d) per query), ``ivf`` (faiss IndexIVFFlat: k-means into ``nlist`` cells, ``nprobe`` cells
searched, O(N d · nprobe / nlist) per query, approximate) and ``hnsw`` (faiss IndexHNSWFlat,
graph search with ``hnsw_m`` links, approximate, O(log N)-ish per query). ``metric`` is ``l2``
(squared Euclidean distance, smaller is nearer) or ``ip`` (inner product, larger is nearer);
``search`` returns scores in the index's own sense (distances for l2, products for ip) and the
ids of the k nearest keys, nearest first. ``backend``: ``auto`` (faiss if importable), ``faiss``,
``torch`` (exact flat only). faiss is the optional extra ``tevo[knn]`` (faiss-cpu).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

KINDS = ("flat", "ivf", "hnsw")
METRICS = ("l2", "ip")
BACKENDS = ("auto", "faiss", "torch")


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class KNNIndex:
    """An index over (N, d) float keys: ``add`` then ``search`` (queries (M, d), k) ->
    (scores (M, k), ids (M, k)), nearest first; ids are insertion order."""

    def __init__(self, dim: int, kind: str = "flat", metric: str = "l2", backend: str = "auto",
                 nlist: int = 64, nprobe: int = 8, hnsw_m: int = 32, field: str = "knn"):
        if kind not in KINDS:
            raise ConfigError(f"{field}.index", kind, list(KINDS))
        if metric not in METRICS:
            raise ConfigError(f"{field}.metric", metric, list(METRICS))
        if backend not in BACKENDS:
            raise ConfigError(f"{field}.backend", backend, list(BACKENDS))
        for name, v in (("nlist", nlist), ("nprobe", nprobe), ("hnsw_m", hnsw_m), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{field}.{name}", v, why="an integer >= 1")
        if backend == "auto":
            backend = "faiss" if have_faiss() else "torch"
        if backend == "faiss" and not have_faiss():
            raise ConfigError(f"{field}.backend", "faiss", ["torch"],
                              why="faiss is not installed (pip install 'tevo[knn]')")
        if backend == "torch" and kind != "flat":
            raise ConfigError(f"{field}.index", kind, ["flat"],
                              why="the torch backend is exact search only; ivf and hnsw need "
                                  "faiss (pip install 'tevo[knn]')")
        self.dim, self.kind, self.metric, self.backend = dim, kind, metric, backend
        self.nlist, self.nprobe, self.hnsw_m = nlist, nprobe, hnsw_m
        self._keys: list[np.ndarray] = []          # torch backend (and ivf training buffer)
        self._index = None
        self.ntotal = 0

    def _faiss_index(self, sample: np.ndarray):
        import faiss
        ip = self.metric == "ip"
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim) if ip else faiss.IndexFlatL2(self.dim)
        if self.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(self.dim, self.hnsw_m,
                                      faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2)
            return idx
        quant = faiss.IndexFlatIP(self.dim) if ip else faiss.IndexFlatL2(self.dim)
        idx = faiss.IndexIVFFlat(quant, self.dim, min(self.nlist, len(sample)),
                                 faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2)
        idx.train(sample)
        idx.nprobe = self.nprobe
        return idx

    def add(self, keys) -> None:
        """keys: (N, d) tensor or array (float32 used)."""
        k = np.ascontiguousarray(_np(keys), dtype=np.float32)
        if k.ndim != 2 or k.shape[1] != self.dim:
            raise ConfigError("knn.keys", tuple(k.shape), why=f"expected (N, {self.dim}) keys")
        if self.backend == "faiss":
            if self._index is None:
                self._index = self._faiss_index(k)
            self._index.add(k)
        else:
            self._keys.append(k)
        self.ntotal += len(k)

    def search(self, queries, k: int) -> tuple[Tensor, Tensor]:
        """queries (M, d) -> (scores (M, k'), ids (M, k')) with k' = min(k, ntotal)."""
        q = np.ascontiguousarray(_np(queries), dtype=np.float32)
        k = min(int(k), self.ntotal)
        if k == 0:
            return torch.zeros(len(q), 0), torch.zeros(len(q), 0, dtype=torch.long)
        if self.backend == "faiss":
            s, i = self._index.search(q, k)
            return torch.from_numpy(s), torch.from_numpy(i).long()
        keys = torch.from_numpy(np.concatenate(self._keys)) if len(self._keys) > 1 \
            else torch.from_numpy(self._keys[0])
        self._keys = [keys.numpy()]
        qt = torch.from_numpy(q)
        if self.metric == "ip":
            s, i = (qt @ keys.T).topk(k, -1)
            return s, i
        d = (qt * qt).sum(-1, keepdim=True) - 2 * qt @ keys.T + (keys * keys).sum(-1)[None]
        s, i = (-d).topk(k, -1)
        return -s, i


def _np(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)
