"""The ANN source of recall: maximum inner product search over title vectors (FAISS).

Exact ``IndexFlatIP`` up to ``exact_max`` titles (a brute-force product is cheap there); above it
an HNSW graph with inner-product metric, whose recall@100 against the exact index is measured in
benchmarks/bench_train.py (docs/benchmarks.md). Titles excluded for a user are removed after the
search, so the index is shared by every user; the search asks for extra neighbours to make room.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from reelrec.errors import InvalidInput

EXACT_MAX = 50_000


@dataclass
class ANNConfig:
    exact_max: int = EXACT_MAX
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 256


class ANNIndex:
    """FAISS inner-product index over float32 title vectors (row = title column)."""

    def __init__(self, index, kind: str, cfg: ANNConfig):
        self.index, self.kind, self.cfg = index, kind, cfg

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: ANNConfig | None = None, force: str | None = None) -> "ANNIndex":
        import faiss
        cfg = cfg or ANNConfig()
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] == 0:
            raise InvalidInput("title vectors must be a non-empty 2-D array", field="vectors")
        kind = force or ("flat" if v.shape[0] <= cfg.exact_max else "hnsw")
        if kind == "flat":
            index = faiss.IndexFlatIP(v.shape[1])
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(v.shape[1], cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            index.hnsw.efSearch = cfg.ef_search
        else:
            raise InvalidInput(f"unknown index kind {kind!r} (flat or hnsw)", field="kind")
        index.add(v)
        return cls(index, kind, cfg)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
               extra: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (cols, scores) per query row, best first, without ``exclude`` entries.

        Asks FAISS for ``k + extra`` neighbours (default: the largest exclusion row) and drops
        the excluded ones; rows left short are padded with -1 / -inf.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.size
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if extra is None:
                extra = int(np.diff(exclude.indptr).max(initial=0))
        kk = min(n, k + (extra or 0))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.cfg.ef_search, kk)
        scores, cols = self.index.search(q, kk)
        cols = cols.astype(np.int64)
        if exclude is not None and exclude.nnz:
            bad = is_member(exclude, np.repeat(np.arange(len(q)), kk), np.maximum(cols.ravel(), 0))
            bad = bad.reshape(cols.shape) | (cols < 0)
            scores = np.where(bad, -np.inf, scores)
            order = np.argsort(bad, axis=1, kind="stable")  # allowed first, original order kept
            cols = np.take_along_axis(cols, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        cols, scores = cols[:, :k], scores[:, :k]
        cols = np.where(np.isfinite(scores) & (cols >= 0), cols, -1)
        if cols.shape[1] < k:
            pad = k - cols.shape[1]
            cols = np.pad(cols, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return cols, scores.astype(np.float32)

    def save(self, path: Path) -> None:
        import faiss
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, cfg: ANNConfig | None = None) -> "ANNIndex":
        import faiss
        index = faiss.read_index(str(path))
        kind = "hnsw" if isinstance(index, faiss.IndexHNSW) or "HNSW" in type(index).__name__ else "flat"
        return cls(index, kind, cfg or ANNConfig())


def is_member(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether each (row, col) pair is a stored entry of ``m`` (vectorised with one searchsorted)."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    if m.nnz == 0:
        return np.zeros(len(rows), dtype=bool)
    n = np.int64(m.shape[1])
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n + m.indices
    q = np.asarray(rows, dtype=np.int64) * n + np.asarray(cols, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return keys[pos] == q


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k found by the approximate search (ignoring -1 padding)."""
    hits = 0
    total = 0
    for a, e in zip(approx, exact):  # per query set intersection; evaluation only
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e))
        total += len(e)
    return hits / max(total, 1)
