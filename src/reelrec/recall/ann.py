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


@dataclass
class ANNConfig:
    exact_max: int = EXACT_MAX
    hnsw_m: int = 32
    ef_construction: int = 100
    # the cheapest depth with recall@100 >= 0.95 at 100 K titles: 0.956 at 768, 0.950 at 640 (just
    # under), 0.964 at 1024 for about 1.3x the search CPU (benchmarks/bench_train.py, docs/benchmarks.md)
    ef_search: int = 768


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

    def __getstate__(self) -> dict:
        # FAISS ID selectors (``_selector``) hold pointers: rebuilt where the index is searched
        return {k: v for k, v in self.__dict__.items() if k != "_selectors"}

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
               extra: int | None = None, unavailable: sp.csr_matrix | None = None,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (cols, scores) per query row, best first, without ``exclude`` entries.

        Asks FAISS for ``k + extra`` neighbours (default: the largest exclusion row) and drops
        the excluded ones; rows left short are padded with -1 / -inf.

        ``unavailable`` (groups x titles, e.g. titles not available per region) with ``groups``
        (one row of it per query) is applied inside the search instead: FAISS skips those titles
        (one ID selector per group, built once), so they cost no extra neighbours. Passing the
        region's unavailable titles through ``exclude`` instead makes ``extra`` the size of the
        region's blocked list (tens of thousands at 100 K titles), and HNSW's efSearch with it.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if unavailable is not None:
            groups = np.asarray(groups, np.int64)
            cols = np.full((len(q), k), -1, np.int64)
            scores = np.full((len(q), k), -np.inf, np.float32)
            ex = sp.csr_matrix(exclude) if exclude is not None else None
            for g in np.unique(groups).tolist():
                rows = np.flatnonzero(groups == g)
                c, s = self._search(q[rows], k, ex[rows] if ex is not None else None, extra,
                                    self._selector(unavailable, g))
                cols[rows], scores[rows] = c, s
            return cols, scores
        return self._search(q, k, exclude, extra, None)

    def _selector(self, unavailable: sp.csr_matrix, group: int):
        """A FAISS ID selector of the titles not blocked in row ``group`` of ``unavailable``
        (cached: one per group and matrix; None when nothing is blocked)."""
        import faiss
        key = (id(unavailable), group)
        cache = self.__dict__.setdefault("_selectors", {})
        got = cache.get(key)
        if got is None:
            blocked = sp.csr_matrix(unavailable)[group].indices
            if len(blocked) == 0:
                got = (None, None, unavailable)
            else:
                allowed = np.ones(self.size, bool)
                allowed[blocked[blocked < self.size]] = False
                bitmap = np.packbits(allowed, bitorder="little")
                # the selector reads the bitmap by pointer: keep both (and the matrix, so its id
                # is not reused) alive together
                got = (faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap)), bitmap, unavailable)
            cache[key] = got
        return got[0]

    def _search(self, q: np.ndarray, k: int, exclude: sp.csr_matrix | None, extra: int | None,
                selector) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        n = self.size
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if extra is None:
                extra = int(np.diff(exclude.indptr).max(initial=0))
        kk = min(n, k + (extra or 0))
        if self.kind == "hnsw":
            ef = max(self.cfg.ef_search, kk)
            qa = np.hstack([q, np.zeros((len(q), 1), np.float32)])
            if selector is not None:
                dist, cols = self.index.search(qa, kk, params=faiss.SearchParametersHNSW(sel=selector, efSearch=ef))
            else:
                self.index.hnsw.efSearch = ef
                dist, cols = self.index.search(qa, kk)
            # |q - v'|^2 = |q|^2 + M^2 - 2 q.v  ->  q.v
            scores = (np.einsum("ij,ij->i", q, q)[:, None] + self.max_norm - dist) / 2.0
            scores = np.where(cols >= 0, scores, -np.inf).astype(np.float32)
        else:
            if selector is not None:
                scores, cols = self.index.search(q, kk, params=faiss.SearchParameters(sel=selector))
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
