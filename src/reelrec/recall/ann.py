"""The ANN source of recall: maximum inner product search over title vectors (FAISS).

Exact ``IndexFlatIP`` up to ``exact_max`` distinct vectors (a brute-force product is cheap
there); above it an HNSW graph. Graph search is much better at L2 than at inner product, so the
HNSW index holds the vectors with one extra coordinate sqrt(M^2 - |v|^2) (M the largest norm) and
queries get a 0 there: the nearest by L2 is then exactly the largest inner product (Bachrach et
al. 2014), and the score is recovered from the distance. Its recall@100 against the exact index
is measured in benchmarks/bench_train.py (docs/benchmarks.md). Titles excluded for a user are
removed after the search, so the index is shared by every user; the search asks for extra
neighbours to make room.

The index holds each distinct vector once. Titles without interactions get content vectors (the
mean of trained vectors sharing genres, kind and region), and many share one: a 100 K-title world
trained on one day has about 10 K distinct vectors. HNSW over every title found 0.90 of the exact
top 100 there at efSearch 768 (ties counted; its graph links the identical points to each other),
and an exact search over the distinct rows is cheaper than that, so the choice between flat and
HNSW is made on the distinct count. A hit is expanded to its titles, lowest title column first,
as ties are ordered everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from reelrec.errors import InvalidInput

# distinct vectors up to which the index is exact: a batched exact search of 100 K distinct rows
# costs about what HNSW at efSearch 768 costs (docs/benchmarks.md), but one query at a time (the
# speed layer) about 4x as much
EXACT_MAX = 50_000


@dataclass
class ANNConfig:
    exact_max: int = EXACT_MAX
    hnsw_m: int = 32
    ef_construction: int = 100
    # the cheapest depth with recall@100 >= 0.95 (ties counted) where HNSW is used: on the synthetic
    # 100 K distinct ALS-like vectors 0.942 at 512, 0.956 at 768, 0.964 at 1024 for about 1.5x the
    # CPU of 768. On the trained 100 K-title one-day world the 10,348 distinct vectors get the exact
    # index (1.000), and HNSW over them finds 1.000 at all three depths, so the synthetic set
    # decides (benchmarks/bench_train.py, docs/benchmarks.md "ANN at 100,000 titles")
    ef_search: int = 768


def distinct_rows(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, rows): the first title column of each distinct row of ``v``, in column order, and
    each title's distinct row (``v[first][rows] == v``; rows equal byte for byte)."""
    v = np.ascontiguousarray(v + v.dtype.type(0))  # -0.0 + 0 is 0.0: signed zeros compare equal
    key = v.view(np.dtype((np.void, v.dtype.itemsize * v.shape[1]))).ravel()
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(first), np.int64)
    rank[order] = np.arange(len(first))
    return first[order].astype(np.int64), rank[np.ravel(inv)]


class ANNIndex:
    """FAISS inner-product index over the distinct float32 title vectors.

    ``rows[t]`` is title column ``t``'s row in the FAISS index; ``members[indptr[r]:indptr[r+1]]``
    the title columns of index row ``r``, ascending. ``size`` counts titles, ``distinct`` rows.
    """

    def __init__(self, index, kind: str, cfg: ANNConfig, max_norm: float = 0.0, rows: np.ndarray | None = None):
        self.index, self.kind, self.cfg, self.max_norm = index, kind, cfg, max_norm
        n = int(index.ntotal)
        # an index saved before the dedupe holds one row per title
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n):
            raise InvalidInput("title rows must point into the index", field="rows")
        self.members = np.argsort(self.rows, kind="stable")
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(self.rows, minlength=n))]).astype(np.int64)
        # one title per row, in title order: hits are titles, nothing to expand
        self.identity = len(self.rows) == n and bool((self.rows == np.arange(n)).all())

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: ANNConfig | None = None, force: str | None = None,
              dedupe: bool = True) -> "ANNIndex":
        """Index ``vectors`` (titles x f), each distinct row once (``dedupe=False``: one row per
        title, as before the dedupe; for benchmarks). Raises InvalidInput on an empty or non-2-D
        array or an unknown ``force`` kind."""
        import faiss
        cfg = cfg or ANNConfig()
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] == 0:
            raise InvalidInput("title vectors must be a non-empty 2-D array", field="vectors")
        rows = None
        if dedupe:
            first, rows = distinct_rows(v)
            v = np.ascontiguousarray(v[first])
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
        return cls(index, kind, cfg, max_norm, rows)

    def __getstate__(self) -> dict:
        # FAISS ID selectors (``_selector``) and the view of the flat vectors (``_xb``) hold
        # pointers: rebuilt where the index is searched
        return {k: v for k, v in self.__dict__.items() if k not in ("_selectors", "_xb")}

    @property
    def size(self) -> int:
        """Titles (columns) the index covers."""
        return len(self.rows)

    @property
    def distinct(self) -> int:
        """Distinct vectors (rows of the FAISS index)."""
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
               extra: int | None = None, unavailable: sp.csr_matrix | None = None,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (cols, scores) per query row, best first, without ``exclude`` entries.

        Asks FAISS for ``k + extra`` distinct vectors (default ``extra``: the largest exclusion
        row), expands them to their titles (equal vectors: lowest title column first), and drops
        the excluded ones; rows left short are padded with -1 / -inf. Each distinct vector gives
        at least one title, and an excluded title removes at most one, so ``k`` remain whenever
        the index holds them.

        ``unavailable`` (groups x titles, e.g. titles not available per region) with ``groups``
        (one row of it per query) is applied inside the search instead: FAISS skips those titles
        (one ID selector per group, built once: a distinct vector is searched when any of its
        titles is available; its titles are filtered again when expanded), so they cost no extra
        neighbours. Passing the
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
                selector, blocked, indptr, members = self._selector(unavailable, g)
                c, s = self._search(q[rows], k, ex[rows] if ex is not None else None, extra,
                                    selector, blocked, indptr, members)
                cols[rows], scores[rows] = c, s
            return cols, scores
        return self._search(q, k, exclude, extra, None, None, self.indptr, self.members)

    def _selector(self, unavailable: sp.csr_matrix, group: int):
        """(selector, blocked, indptr, members) for row ``group`` of ``unavailable``: a FAISS ID
        selector of the distinct vectors with a title not blocked there and the rows of those
        without (None, None when nothing is blocked), and each vector's available titles (cached:
        one per group and matrix)."""
        import faiss
        key = (id(unavailable), group)
        cache = self.__dict__.setdefault("_selectors", {})
        got = cache.get(key)
        if got is None:
            blocked = sp.csr_matrix(unavailable)[group].indices
            if len(blocked) == 0:
                got = (None, None, unavailable, self.indptr, self.members, None)
            else:
                allowed = np.ones(self.size, bool)
                allowed[blocked[blocked < self.size]] = False
                members = self.members[allowed[self.members]]
                counts = np.bincount(self.rows[members], minlength=self.distinct)
                indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                bitmap = np.packbits(counts > 0, bitorder="little")
                # the selector reads the bitmap by pointer: keep both (and the matrix, so its id
                # is not reused) alive together
                got = (faiss.IDSelectorBitmap(self.distinct, faiss.swig_ptr(bitmap)), bitmap, unavailable,
                       indptr, members, np.flatnonzero(counts == 0))
            cache[key] = got
        return got[0], got[5], got[3], got[4]

    def _search(self, q: np.ndarray, k: int, exclude: sp.csr_matrix | None, extra: int | None,
                selector, blocked: np.ndarray | None, indptr: np.ndarray, members: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if extra is None:
                extra = int(np.diff(exclude.indptr).max(initial=0))
        want = k + (extra or 0)  # titles to expand: k left after any user's exclusions
        kk = min(self.distinct, want)
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
            cols, scores = self._flat_search(q, kk, blocked, selector)
        if self.identity:
            cols = cols.astype(np.int64)
        else:
            cols, scores = self._expand(cols.astype(np.int64), scores, min(want, self.size), indptr, members)
        kk = cols.shape[1]
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

    def _flat_search(self, q: np.ndarray, kk: int, blocked: np.ndarray | None, selector
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``kk`` distinct rows per query, without the ``blocked`` rows (``selector``:
        the same as a FAISS ID selector). FAISS's own search when nothing is blocked or for
        fewer than 20 queries (where FAISS itself leaves BLAS); else one BLAS product over the
        stored vectors with the blocked rows masked (equal scores in row order), because FAISS's
        flat search with an ID selector scans instead of using BLAS: 3.9 ms of CPU a user at
        100 K titles in batches of 256 (docs/benchmarks.md)."""
        import faiss
        if blocked is None or len(blocked) == 0 or len(q) < 20:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores, cols = self.index.search(q, kk, params=params)
            return cols.astype(np.int64), np.where(cols >= 0, scores, -np.inf).astype(np.float32)
        xb = self.__dict__.get("_xb")
        if xb is None:  # a view of the vectors FAISS holds, no copy
            xb = faiss.rev_swig_ptr(self.index.get_xb(), self.distinct * self.index.d)
            xb = self.__dict__.setdefault("_xb", np.asarray(xb).reshape(self.distinct, self.index.d))
        n = self.distinct
        cols = np.full((len(q), kk), -1, np.int64)
        scores = np.full((len(q), kk), -np.inf, np.float32)
        step = max(1, (1 << 22) // n)  # at most 4 M scores (16 MB) at a time
        for lo in range(0, len(q), step):
            s = q[lo: lo + step] @ xb.T
            if blocked is not None and len(blocked):
                s[:, blocked] = -np.inf
            if kk < n:
                part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                part.sort(axis=1)
            else:
                part = np.broadcast_to(np.arange(n), s.shape).copy()
            ps = np.take_along_axis(s, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            c, sc = np.take_along_axis(part, order, axis=1), np.take_along_axis(ps, order, axis=1)
            cols[lo: lo + step] = np.where(np.isfinite(sc), c, -1)
            scores[lo: lo + step] = sc
        return cols, scores

    def _expand(self, hits: np.ndarray, hit_scores: np.ndarray, want: int, indptr: np.ndarray,
                members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first ``want`` titles of each query's hits (distinct rows, best first, -1 none),
        each hit's titles ``members[indptr[r]:indptr[r+1]]`` in order: (cols, scores), -1 / -inf
        where a query has fewer."""
        nq = len(hits)
        ok = hits >= 0
        h = np.where(ok, hits, 0)
        size = np.where(ok, indptr[h + 1] - indptr[h], 0)
        before = np.cumsum(size, axis=1) - size
        take = np.clip(want - before, 0, size).ravel()  # titles each hit gives
        per_query = take.reshape(nq, -1).sum(axis=1)
        total = int(take.sum())
        starts = np.repeat(indptr[h.ravel()], take)
        within = np.arange(total) - np.repeat(np.cumsum(take) - take, take)
        qrow = np.repeat(np.arange(nq), per_query)
        pos = np.arange(total) - np.repeat(np.cumsum(per_query) - per_query, per_query)
        cols = np.full((nq, want), -1, np.int64)
        scores = np.full((nq, want), -np.inf, np.float32)
        cols[qrow, pos] = members[starts + within]
        scores[qrow, pos] = np.repeat(np.asarray(hit_scores, np.float32).ravel(), take)
        return cols, scores

    def save(self, path: Path) -> None:
        """Write the FAISS index to ``path`` and each title's row beside it (``<stem>.rows.npy``)."""
        import faiss
        path = Path(path)
        faiss.write_index(self.index, str(path))
        with open(rows_path(path), "wb") as f:
            np.save(f, self.rows.astype(np.int32 if self.distinct < 2**31 else np.int64))

    @classmethod
    def load(cls, path: Path, cfg: ANNConfig | None = None, vectors: np.ndarray | None = None) -> "ANNIndex":
        """Read an index written by ``save``. An index saved before the dedupe (no rows file)
        holds one row per title and is served as it is; given the title ``vectors``, it is
        rebuilt on the distinct rows instead when those are few enough for the exact index
        (a copy, no graph to build)."""
        import faiss
        path = Path(path)
        cfg = cfg or ANNConfig()
        rows = np.load(rows_path(path), allow_pickle=False) if rows_path(path).exists() else None
        if rows is None and vectors is not None:
            first, _ = distinct_rows(np.ascontiguousarray(vectors, dtype=np.float32))
            if len(first) < len(vectors) and len(first) <= cfg.exact_max:
                return cls.build(vectors, cfg)
        index = faiss.read_index(str(path))
        if "HNSW" not in type(index).__name__:
            return cls(index, "flat", cfg, rows=rows)
        # the largest norm is where every title's extra coordinate is zero: the max over titles of
        # |v'|^2, read back from the stored vectors
        stored = faiss.rev_swig_ptr(faiss.downcast_index(index.storage).get_xb(), index.ntotal * index.d)
        stored = np.asarray(stored).reshape(index.ntotal, index.d)
        max_norm = float(np.einsum("ij,ij->i", stored, stored).max())
        return cls(index, "hnsw", cfg, max_norm, rows)


def rows_path(path: Path) -> Path:
    """Where ``ANNIndex.save`` keeps each title's row of the index written to ``path``."""
    return Path(path).with_name(Path(path).stem + ".rows.npy")


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


def recall_with_ties(approx: np.ndarray, queries: np.ndarray, vectors: np.ndarray,
                     exact_scores: np.ndarray, rtol: float = 1e-5) -> float:
    """Recall@k of ``approx`` (title columns, -1 padding) against an exact top-k whose scores are
    ``exact_scores`` (best first, -inf padding), counting ties: a returned title whose true
    inner product with the query reaches the exact k-th score is a hit, whichever of the equal
    titles the exact search happened to list. Evaluation only."""
    q = np.asarray(queries, np.float32)
    v = np.asarray(vectors, np.float32)
    es = np.asarray(exact_scores, np.float32)
    hits = total = 0
    for i, a in enumerate(approx):  # per query; evaluation only
        e = es[i][np.isfinite(es[i])]
        if len(e) == 0:
            continue
        a = np.unique(a[a >= 0])
        kth = float(e.min())
        true = v[a] @ q[i]
        hits += min(int((true >= kth - rtol * max(1.0, abs(kth))).sum()), len(e))
        total += len(e)
    return hits / max(total, 1)
