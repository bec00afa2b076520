"""Embeddings: implicit-feedback ALS over the user x title confidence matrix (batch layer).

Title and user vectors (float32) feed the ANN source of recall, the ranker's ``ann`` score, and
the speed layer's fold-in of one user (``fold_in``: the exact closed form of one ALS user step,
so a user's vector moves with their new events before the next retrain). Titles with no
interactions get a content vector (``content_vectors``) so new releases are retrievable at once.

The fit is the ``implicit`` library's; confidence is ``alpha * weight`` of the signal weighting.
``tune_als`` picks regularisation, alpha and iterations on a held-out slice of each user's
positives with a small grid.

``ALSBlend`` is several fits of one matrix with different settings, their vectors side by side:
a user vector is each member's user vector over the RMS of that member's scores, so the blend's
dot product is the sum of the members' scores on a common scale, and the ANN index, the content
vectors and the fold-in treat it as one embedding of ``sum(factors)`` dimensions. The pipeline
blends the best few settings of its tuning: the setting a holdout picks is tuned for less data
than the final fit sees, and on MovieLens-100K the best setting moves with the amount of data
(docs/evaluation.md, "The ALS blend"); a blend of the good ones holds up where one choice does not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp

from reelrec.errors import InvalidInput
from reelrec.log import get_logger

log = get_logger(__name__)


@dataclass
class ALSParams:
    # defaults are the values tuning picks on MovieLens-100K ratings (weights 1-5); training
    # re-tunes them on each data set with ``tune_als``
    factors: int = 128
    regularization: float = 20.0
    alpha: float = 0.5
    iterations: int = 15
    seed: int = 42

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ALSBlend:
    """ALS fits side by side (see the module docstring): each member's settings and the scale
    its user vectors were multiplied by (1 / the RMS of its scores over every user and title)."""

    members: tuple[ALSParams, ...]
    scales: tuple[float, ...] = ()

    @property
    def factors(self) -> int:
        return sum(m.factors for m in self.members)

    @property
    def iterations(self) -> int:
        """Iterations of all the member fits together (progress bars count them)."""
        return sum(m.iterations for m in self.members)

    def as_dict(self) -> dict:
        return {"members": [m.as_dict() for m in self.members], "scales": [float(x) for x in self.scales]}

    @classmethod
    def from_dict(cls, d: dict) -> "ALSBlend":
        return cls(tuple(ALSParams(**m) for m in d["members"]), tuple(float(x) for x in d.get("scales", ())))


def als_params_from_dict(d: dict) -> "ALSParams | ALSBlend":
    """What ``as_dict`` of either wrote."""
    return ALSBlend.from_dict(d) if "members" in d else ALSParams(**d)


@dataclass
class ALSModel:
    user_factors: np.ndarray  # (users, f) float32
    item_factors: np.ndarray  # (titles, f) float32
    params: "ALSParams | ALSBlend"
    seconds_per_iteration: float = 0.0
    content: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # title got a content vector

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def fold_in(self, user_items_row: sp.spmatrix) -> np.ndarray:
        """The user vector for ``user_items_row`` (1 x titles weights, or n x titles)."""
        return fold_in(self.item_factors, user_items_row, self.params)


def _check(positives: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(positives, dtype=np.float32)
    if m.nnz and (m.data <= 0).any():
        raise InvalidInput("ALS confidence weights must be positive", field="positives")
    return m


def fit_als(positives: sp.spmatrix, params: "ALSParams | ALSBlend | None" = None,
            on_iteration: Callable[[int, float], None] | None = None) -> ALSModel:
    """Fit ALS on a users x titles matrix of positive weights. Confidence is ``alpha * weight``.
    An ``ALSBlend`` fits each member (its scales are computed anew from these fits)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    params = params or ALSParams()
    if isinstance(params, ALSBlend):
        return blend([fit_als(positives, p, on_iteration) for p in params.members])
    m = _check(positives)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=params.factors, regularization=params.regularization,
                                        alpha=params.alpha, iterations=params.iterations,
                                        random_state=params.seed)
    times: list[float] = []

    def cb(it, elapsed, _loss):
        times.append(elapsed)
        if on_iteration:
            on_iteration(it, elapsed)

    # implicit runs its own threads; a multi-threaded BLAS underneath only oversubscribes the cores
    with threadpool_limits(1, "blas"):
        model.fit(m, show_progress=False, callback=cb)
    return ALSModel(np.ascontiguousarray(model.user_factors, dtype=np.float32),
                    np.ascontiguousarray(model.item_factors, dtype=np.float32), params,
                    float(np.median(times)) if times else 0.0,
                    np.zeros(m.shape[1], dtype=bool))


def score_rms(user_factors: np.ndarray, item_factors: np.ndarray) -> float:
    """The root mean square of every user x title score, without forming the scores:
    mean((U V')^2) = trace(U'U V'V) / (users * titles)."""
    u = user_factors.astype(np.float64)
    v = item_factors.astype(np.float64)
    n = max(u.shape[0] * v.shape[0], 1)
    return float(np.sqrt(max(np.sum((u.T @ u) * (v.T @ v)) / n, 0.0)))


def blend(models: list[ALSModel]) -> ALSModel:
    """Fitted members side by side as one ``ALSModel`` (one member: itself)."""
    if len(models) == 1:
        return models[0]
    scales = tuple(1.0 / max(score_rms(m.user_factors, m.item_factors), 1e-12) for m in models)
    u = np.hstack([m.user_factors * np.float32(c) for m, c in zip(models, scales)])
    v = np.hstack([m.item_factors for m in models])
    return ALSModel(np.ascontiguousarray(u, dtype=np.float32), np.ascontiguousarray(v, dtype=np.float32),
                    ALSBlend(tuple(m.params for m in models), scales),
                    float(sum(m.seconds_per_iteration for m in models)),
                    np.zeros(v.shape[0], dtype=bool))


def fold_in(item_factors: np.ndarray, rows: sp.spmatrix, params: "ALSParams | ALSBlend") -> np.ndarray:
    """Exact ALS user step: x_u = (Y'Y + Y'(C_u - I)Y + reg I)^-1 Y' C_u p_u, C_u = alpha * w.

    The same equation ``implicit`` solves for users during training, so a folded-in vector of a
    training user equals the trained one up to the last half-iteration. An ``ALSBlend`` folds
    each member's columns with its own settings and scales them as its fit did. Returns (n, f)
    float32.

    Raises:
        InvalidInput: the blend's members do not add up to the title vectors' width.
    """
    if isinstance(params, ALSBlend):
        widths = [m.factors for m in params.members]
        if sum(widths) != item_factors.shape[1] or len(params.scales) != len(widths):
            raise InvalidInput(f"an ALS blend of {widths} factors (scales {len(params.scales)}) does not "
                               f"fit title vectors of {item_factors.shape[1]}", field="als")
        edges = np.cumsum([0, *widths])
        return np.hstack([fold_in(item_factors[:, a:b], rows, m) * np.float32(c)  # a view: fold_in copies to float64
                          for a, b, m, c in zip(edges[:-1], edges[1:], params.members, params.scales)])
    rows = sp.csr_matrix(rows, dtype=np.float64)
    y = item_factors.astype(np.float64)
    f = y.shape[1]
    base = y.T @ y + params.regularization * np.eye(f)
    out = np.zeros((rows.shape[0], f), dtype=np.float32)
    for u in range(rows.shape[0]):  # one f x f solve per user; the speed layer folds one at a time
        lo, hi = rows.indptr[u], rows.indptr[u + 1]
        if lo == hi:
            continue
        idx = rows.indices[lo:hi]
        c = params.alpha * rows.data[lo:hi]
        yi = y[idx]
        a = base + (yi * (c - 1.0)[:, None]).T @ yi
        b = yi.T @ c
        out[u] = np.linalg.solve(a, b)
    return out


def content_vectors(item_factors: np.ndarray, trained: np.ndarray, attributes: sp.csr_matrix) -> np.ndarray:
    """Vectors for untrained titles: the mean trained vector of titles sharing each attribute.

    ``attributes`` is titles x attributes (0/1: genres, kind, region). An untrained title gets the
    average, over its attributes, of the mean vector of trained titles having that attribute;
    with no shared attribute it gets the mean of all trained vectors. Trained rows are kept.
    """
    out = item_factors.copy()
    if trained.all() or not trained.any():
        return out
    a = sp.csr_matrix(attributes, dtype=np.float64)
    at = a[trained]
    sums = at.T @ item_factors[trained].astype(np.float64)  # attributes x f
    counts = np.asarray(at.sum(axis=0)).ravel()
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    has = (counts > 0).astype(np.float64)
    cold = np.flatnonzero(~trained)
    ac = a[cold].multiply(has[None, :]).tocsr()
    n_attr = np.asarray(ac.sum(axis=1)).ravel()
    vec = np.asarray(ac @ means) / np.maximum(n_attr, 1)[:, None]
    fallback = item_factors[trained].mean(axis=0)
    vec[n_attr == 0] = fallback
    out[cold] = vec.astype(np.float32)
    return out


# --- validation split and tuning -----------------------------------------------------------------
def holdout_random(m: sp.spmatrix, frac: float, seed: int, min_keep: int = 1) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each user's entries at random: (kept, held). Users keep at least ``min_keep``."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    rng = np.random.default_rng(seed)
    n_per = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), n_per)
    order = np.lexsort((rng.random(m.nnz), rows))
    rank = np.empty(m.nnz, dtype=np.int64)
    rank[order] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], n_per)
    n_hold = np.minimum(np.round(n_per * frac).astype(np.int64), np.maximum(n_per - min_keep, 0))
    held = rank < n_hold[rows]
    return _mask(m, ~held), _mask(m, held)


def holdout_by_time(m: sp.spmatrix, ts: sp.spmatrix, cutoff: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split entries by their time (``ts`` aligned with ``m``): before ``cutoff`` and at/after it."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    t = sp.csr_matrix(ts)
    t.sort_indices()
    if t.nnz != m.nnz or not np.array_equal(t.indices, m.indices):
        raise InvalidInput("timestamps are not aligned with the matrix", field="ts")
    late = t.data >= cutoff
    return _mask(m, ~late), _mask(m, late)


def _mask(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape, dtype=m.dtype)


def topk_excluding(scores: np.ndarray, exclude: sp.csr_matrix | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row of a dense score block, skipping ``exclude`` entries.

    Returns (cols, scores), best first, equal scores in column order (a tie at the k-th place
    keeps the lowest columns), so the result does not depend on how the block was searched;
    rows with fewer than k allowed columns are padded with -1 and -inf.
    """
    s = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None and exclude.nnz:
        ex = sp.csr_matrix(exclude)
        r = np.repeat(np.arange(ex.shape[0]), np.diff(ex.indptr))
        s[r, ex.indices] = -np.inf
    b = s.shape[0]
    k = min(k, s.shape[1])
    if k <= 0 or b == 0:
        return np.full((b, max(k, 0)), -1, np.int64), np.full((b, max(k, 0)), -np.inf, np.float32)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(s, part, axis=1).min(axis=1)
    # every entry above the k-th value is in ``part``; the entries equal to it are ties that
    # argpartition picked arbitrarily: take them all here, and keep the lowest columns below
    rows, cols = np.nonzero((s >= kth[:, None]) & (s > -np.inf))
    return topk_entries(rows, cols, s[rows, cols], b, k)


def entry_order(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """``np.lexsort((cols, -vals, rows))`` of int64 rows and columns and float32 values: by row,
    value descending, then column.

    When the three fit one 64-bit key (row, the value's 32 bits made order-preserving and
    inverted, column), one sort of that key, whose entries are distinct, gives the same order at
    about half the cost of lexsort's three stable passes (the genre-popular and co-visitation
    sources sort ~10^5 entries a batch); an entry listed twice may come in either order. NaN
    values or negative indices take lexsort itself."""
    n = len(rows)
    if n == 0 or rows.min() < 0 or cols.min() < 0 or np.isnan(vals).any():
        return np.lexsort((cols, -vals, rows))
    row_bits, col_bits = int(rows.max()).bit_length(), int(cols.max()).bit_length()
    if row_bits + col_bits > 32:
        return np.lexsort((cols, -vals, rows))
    # IEEE bits ordered as the floats: flip every bit of a negative, the sign bit of the rest
    # (+ 0.0 first, so that -0.0 and 0.0, equal to lexsort, share one key)
    bits = (vals + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    ascending = np.where(bits >> np.uint64(31), bits ^ np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
    descending = np.uint64(0xFFFFFFFF) - ascending
    key = ((rows.astype(np.uint64) << np.uint64(32 + col_bits)) | (descending << np.uint64(col_bits))
           | cols.astype(np.uint64))
    return np.argsort(key)


def topk_entries(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (cols, vals) per row from scattered entries (row, col, value), best first, equal
    values in column order; rows short of k are padded with -1 and -inf (float32)."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    vals = np.asarray(vals, np.float32)
    order = entry_order(rows, cols, vals)
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.searchsorted(rows, np.arange(n_rows))
    pos = np.arange(len(rows)) - first[rows] if len(rows) else np.zeros(0, np.int64)
    keep = pos < k
    out_c = np.full((n_rows, k), -1, np.int64)
    out_v = np.full((n_rows, k), -np.inf, np.float32)
    out_c[rows[keep], pos[keep]] = cols[keep]
    out_v[rows[keep], pos[keep]] = vals[keep]
    return out_c, out_v


def ndcg_at_k(recs: np.ndarray, held: sp.csr_matrix, k: int = 10) -> float:
    """Mean binary NDCG@k over users with at least one held-out entry (validation only)."""
    held = sp.csr_matrix(held)
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    if len(users) == 0:
        return 0.0
    r = recs[users, :k]
    hits = np.asarray(held[users[:, None], np.maximum(r, 0)].todense()) > 0
    hits &= r >= 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * disc[: r.shape[1]]).sum(axis=1)
    n_rel = np.minimum(np.diff(held.indptr)[users], k)
    idcg = np.cumsum(disc)[n_rel - 1]
    return float(np.mean(dcg / idcg))


def recommend_als(model: ALSModel, users: np.ndarray, exclude: sp.csr_matrix, k: int,
                  batch: int = 1024) -> np.ndarray:
    out = np.full((len(users), k), -1, dtype=np.int64)
    for lo in range(0, len(users), batch):
        u = users[lo: lo + batch]
        cols, _ = topk_excluding(model.scores(u), exclude[u], k)
        out[lo: lo + len(u), : cols.shape[1]] = cols
    return out


DEFAULT_GRID = {"regularization": (5.0, 20.0, 50.0), "alpha": (0.25, 0.5, 1.0), "iterations": (15,)}
# the pipeline's grid: wider along the ridge where regularisation and alpha rise together, since
# it blends its best few settings (``ALSBlend``) rather than betting on one
BLEND_GRID = {"regularization": (15.0, 20.0, 30.0, 40.0, 80.0), "alpha": (0.35, 0.5, 1.0, 2.0, 4.0),
              "iterations": (15,)}


def tune_als(positives: sp.spmatrix, base: ALSParams | None = None, grid: dict | None = None,
             frac: float = 0.2, seed: int = 42, k: int = 10,
             progress: Callable[[], None] | None = None) -> tuple[ALSParams, list[dict]]:
    """Pick regularisation, alpha and iterations by validation NDCG@k on a random holdout.

    Returns the best parameters and every trial (params and NDCG), which training records in
    the manifest.
    """
    base = base or ALSParams()
    grid = grid or DEFAULT_GRID
    train, held = holdout_random(positives, frac, seed)
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    trials: list[dict] = []
    best, best_score = base, -1.0
    for p in _grid(base, grid):
        t0 = time.perf_counter()
        model = fit_als(train, p)
        score = ndcg_at_k(_full(recommend_als(model, users, train, k), users, train.shape[0]), held, k)
        trials.append({**p.as_dict(), "ndcg@%d" % k: round(score, 5),
                       "seconds": round(time.perf_counter() - t0, 2)})
        log.info("als trial", **trials[-1])
        if score > best_score:
            best, best_score = p, score
        if progress:
            progress()
    return best, trials


def grid_size(grid: dict | None = None) -> int:
    g = grid or DEFAULT_GRID
    return int(np.prod([len(v) for v in g.values()]))


def _grid(base: ALSParams, grid: dict) -> Iterable[ALSParams]:
    import itertools
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        d = base.as_dict()
        d.update(dict(zip(keys, values)))
        yield ALSParams(**d)


def _full(recs: np.ndarray, users: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, recs.shape[1]), -1, dtype=np.int64)
    out[users] = recs
    return out
