"""The ANN source of recall: maximum inner product search over title vectors (FAISS).

Exact ``IndexFlatIP`` up to ``exact_max`` titles (a brute-force product is cheap there); above it
an HNSW graph. Graph search is much better at L2 than at inner product, so the HNSW index holds
the titles with one extra coordinate sqrt(M^2 - |v|^2) (M the largest norm) and queries get a 0
there: the nearest by L2 is then exactly the largest inner product (Bachrach et al. 2014), and the
score is recovered from the distance. Its recall@100 against the exact index is measured in
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
FIRST_PASS = 4  # the first search asks for 4 x k neighbours; short rows are searched again


@dataclass
class ANNConfig:
    exact_max: int = EXACT_MAX
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 1024  # recall@100 >= 0.95 at 100 K titles (benchmarks/bench_train.py)


class ANNIndex:
    """FAISS inner-product index over float32 title vectors (row = title column)."""

    def __init__(self, index, kind: str, cfg: ANNConfig, max_norm: float = 0.0):
        self.index, self.kind, self.cfg, self.max_norm = index, kind, cfg, max_norm

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: ANNConfig | None = None, force: str | None = None) -> "ANNIndex":
        import faiss
        cfg = cfg or ANNConfig()
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] == 0:
            raise InvalidInput("title vectors must be a non-empty 2-D array", field="vectors")
        kind = force or ("flat" if v.shape[0] <= cfg.exact_max else "hnsw")
        max_norm = 0.0
        if kind == "flat":
            index = faiss.IndexFlatIP(v.shape[1])
        elif kind == "hnsw":
            norms = np.einsum("ij,ij->i", v, v)
            max_norm = float(norms.max())
            v = np.hstack([v, np.sqrt(np.maximum(max_norm - norms, 0.0))[:, None]]).astype(np.float32)
            index = faiss.IndexHNSWFlat(v.shape[1], cfg.hnsw_m)
            index.hnsw.efConstruction = cfg.ef_construction
            index.hnsw.efSearch = cfg.ef_search
        else:
            raise InvalidInput(f"unknown index kind {kind!r} (flat or hnsw)", field="kind")
        index.add(v)
        return cls(index, kind, cfg, max_norm)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
               extra: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (cols, scores) per query row, best first, without ``exclude`` entries.

        Asks FAISS for ``k + extra`` neighbours (default: the largest exclusion row) and drops
        the excluded ones; rows left short are padded with -1 / -inf. With the default ``extra``
        a first search asks for only ``FIRST_PASS x k`` neighbours, and only the rows it leaves
        short are searched again with the full ``k + extra``: an exclusion row also holds every
        title unavailable in the user's region (a third of a 100 K catalog), and searching that
        deep for every user made the HNSW search explore most of the graph per query.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.size
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if extra is None:
                full = min(n, k + int(np.diff(exclude.indptr).max(initial=0)))
                first = min(full, FIRST_PASS * k)
                if first < full and len(q):
                    cols, scores = self._search(q, k, first, exclude)
                    short = np.flatnonzero((cols < 0).any(axis=1))
                    if len(short):
                        c2, s2 = self._search(q[short], k, full, exclude[short])
                        cols[short], scores[short] = c2, s2
                    return cols, scores
                extra = full - k
        return self._search(q, k, min(n, k + (extra or 0)), exclude)

    def _search(self, q: np.ndarray, k: int, kk: int,
                exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's ``kk`` nearest, the excluded dropped, the first ``k`` kept (padded)."""
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.cfg.ef_search, kk)
            qa = np.hstack([q, np.zeros((len(q), 1), np.float32)])
            dist, cols = self.index.search(qa, kk)
            # |q - v'|^2 = |q|^2 + M^2 - 2 q.v  ->  q.v
            scores = (np.einsum("ij,ij->i", q, q)[:, None] + self.max_norm - dist) / 2.0
            scores = np.where(cols >= 0, scores, -np.inf).astype(np.float32)
        else:
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
        if "HNSW" not in type(index).__name__:
            return cls(index, "flat", cfg or ANNConfig())
        # the largest norm is where every title's extra coordinate is zero: the max over titles of
        # |v'|^2, read back from the stored vectors
        stored = faiss.rev_swig_ptr(faiss.downcast_index(index.storage).get_xb(), index.ntotal * index.d)
        stored = np.asarray(stored).reshape(index.ntotal, index.d)
        max_norm = float(np.einsum("ij,ij->i", stored, stored).max())
        return cls(index, "hnsw", cfg or ANNConfig(), max_norm)


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
