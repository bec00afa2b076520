"""The models ``reelrec evaluate`` scores side by side, and the one registry that names them.

Baselines live here and implement ``reelrec.recommender.Recommender``:

* ``popularity``: titles by the number of training users with a positive interaction;
* ``ease``: EASE (Steck, WWW 2019), the closed-form item-item model
  B = I - P diag(1/diag(P)), P = (X'X + lambda I)^-1, over the titles that have training
  interactions (at most ``EASE_MAX_TITLES``); lambda is tuned on a validation split of training;
* ``covisit``: item-item co-occurrence ("watched X also watched Y") normalised by Jaccard, the
  user's score for a title being the sum of its similarities to the user's training titles;
  popularity breaks ties.

``reelrec-homepage`` (the composed top picks, ``reelrec.eval.homepage_model``) is built on the
batch layer and composition, and is imported lazily too.

``als`` and ``reelrec-ranker`` belong to the batch layer (``reelrec.batch.pipeline``). They are
looked up lazily, so the evaluator runs (and says which models are unavailable, and why) whether
or not the batch layer is installed. Until the batch layer provides ``als``, a thin implicit-ALS
recommender (the ``implicit`` library, tuned on the same kind of validation split) stands in
and the run notes it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from reelrec.errors import FieldError, InvalidInput, ReelrecError, Unavailable
from reelrec.eval.splits import holdout_rows, seen_matrix
from reelrec.log import get_logger
from reelrec.recommender import Recommender, TrainData

log = get_logger(__name__)

EASE_MAX_TITLES = 20_000
EASE_LAMBDAS = (100.0, 400.0, 1600.0)  # coarse grid, then the best one's halves and doubles
SCORE_BLOCK = 20_000_000  # scores per block when ranking many users (80 MB of float32)
TUNE_K = 10


def top_k(scores: np.ndarray, seen: sp.csr_matrix | None, k: int) -> np.ndarray:
    """Top-``k`` columns of each row of ``scores`` (users x titles), best first, skipping the
    columns set in ``seen`` (same rows) and any non-finite score; padded with -1."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if seen is not None and seen.nnz:
        r, c = seen.nonzero()
        scores[r, c] = -np.inf
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if kk == 0 or n_rows == 0:
        return out
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    part = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    part[~np.isfinite(vals)] = -1
    out[:, :kk] = part
    return out


class ScoringRecommender:
    """A recommender that scores every title for a block of users; ranking is shared."""

    name = "scoring"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.params: dict = {}
        self._seen: sp.csr_matrix | None = None
        self._n_titles = 0

    def _remember(self, data: TrainData) -> None:
        self._seen = seen_matrix(data.matrix)
        self._n_titles = data.matrix.shape[1]

    def score(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def recommend(self, users: np.ndarray, k: int) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        block = max(1, SCORE_BLOCK // max(self._n_titles, 1))
        out = [top_k(self.score(users[s:s + block]), self._seen[users[s:s + block]], k)
               for s in range(0, len(users), block)]
        return np.vstack(out) if out else np.empty((0, k), dtype=np.int64)


def binary(x: sp.csr_matrix) -> sp.csr_matrix:
    b = sp.csr_matrix(x, dtype=np.float32, copy=True)
    b.data[:] = 1.0
    b.eliminate_zeros()
    return b


def _val_ndcg(recs: np.ndarray, val: sp.csr_matrix) -> float:
    from reelrec.eval.metrics import accuracy
    return accuracy(recs, val, TUNE_K)[f"ndcg@{TUNE_K}"]


def _val_rows(val: sp.csr_matrix) -> np.ndarray:
    return np.flatnonzero(np.diff(val.indptr) > 0)


# --- popularity -------------------------------------------------------------------------------
class PopularityRecommender(ScoringRecommender):
    name = "popularity"

    def fit(self, data: TrainData) -> "PopularityRecommender":
        self._remember(data)
        self.counts = np.asarray(binary(data.matrix.positives).sum(axis=0)).ravel()
        return self

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts.astype(np.float32), (len(rows), self._n_titles))


# --- EASE -------------------------------------------------------------------------------------
def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's item-item matrix B for the binary user x item matrix ``x``."""
    n = x.shape[1]
    dtype = np.float64 if n <= 5000 else np.float32
    g = (x.T @ x).toarray().astype(dtype)
    g[np.diag_indices(n)] += lam
    p = sla.cho_solve(sla.cho_factor(g, overwrite_a=True, check_finite=False),
                      np.eye(n, dtype=dtype), overwrite_b=True, check_finite=False)
    b = p / (-np.diag(p))
    b[np.diag_indices(n)] = 0.0
    return b.astype(np.float32)


class EASERecommender(ScoringRecommender):
    name = "ease"

    def __init__(self, lambdas: tuple[float, ...] = EASE_LAMBDAS, max_titles: int = EASE_MAX_TITLES,
                 seed: int = 0):
        super().__init__(seed)
        self.lambdas, self.max_titles = tuple(lambdas), max_titles

    def fit(self, data: TrainData) -> "EASERecommender":
        """Raises InvalidInput when more than ``max_titles`` titles have training interactions."""
        self._remember(data)
        x = binary(data.matrix.positives)
        self.active = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
        if len(self.active) > self.max_titles:
            raise InvalidInput(FieldError(
                "models", f"ease solves a dense {len(self.active):,} x {len(self.active):,} system; "
                          f"it is limited to catalogs of {self.max_titles:,} titles with interactions"))
        xa = x[:, self.active]
        lam = self.lambdas[0]
        if len(self.lambdas) > 1:
            # each lambda costs one dense solve, so search coarse-to-fine instead of a fine grid
            fit, val = holdout_rows(xa, seed=self.seed)
            rows = _val_rows(val)
            scores: dict[float, float] = {}

            def trial(cand: float) -> None:
                if cand not in scores:
                    recs = top_k(fit[rows] @ ease_weights(fit, cand), fit[rows], TUNE_K)
                    scores[cand] = _val_ndcg(recs, val[rows])

            for cand in self.lambdas:
                trial(cand)
            best = max(scores, key=scores.get)
            trial(best / 2)
            trial(best * 2)
            lam = max(scores, key=scores.get)
            self.params["validation_ndcg@10"] = {f"{k:g}": round(v, 4) for k, v in sorted(scores.items())}
        self.params["lambda"] = lam
        self.b = ease_weights(xa, lam)
        self.x = xa
        return self

    def score(self, rows: np.ndarray) -> np.ndarray:
        out = np.full((len(rows), self._n_titles), -np.inf, dtype=np.float32)
        out[:, self.active] = np.asarray(self.x[rows] @ self.b)
        return out


# --- co-visitation ----------------------------------------------------------------------------
class CovisitRecommender(ScoringRecommender):
    name = "covisit"

    def fit(self, data: TrainData) -> "CovisitRecommender":
        self._remember(data)
        x = binary(data.matrix.positives)
        co = sp.csr_matrix(x.T @ x)
        co.setdiag(0)
        co.eliminate_zeros()
        n = np.asarray(x.sum(axis=0)).ravel()
        c = co.tocoo()
        jac = c.data / (n[c.row] + n[c.col] - c.data)
        self.sim = sp.csr_matrix((jac.astype(np.float32), (c.row, c.col)), shape=co.shape)
        self.x = x
        # a popularity term far below any co-occurrence score only orders the ties
        self.tiebreak = (n / max(n.max(), 1.0) * 1e-6).astype(np.float32)
        self.params["pairs"] = int(co.nnz)
        return self

    def score(self, rows: np.ndarray) -> np.ndarray:
        s = (self.x[rows] @ self.sim).toarray().astype(np.float32)
        return s + self.tiebreak


# --- implicit ALS (stand-in until the batch layer provides "als") -----------------------------
class ImplicitALSRecommender(ScoringRecommender):
    name = "als"
    # low ranks matter on small data sets (16 factors is best on ml-100k); validation picks
    GRID = ({"factors": 16, "regularization": 0.05, "alpha": 1.0},
            {"factors": 32, "regularization": 0.05, "alpha": 1.0},
            {"factors": 32, "regularization": 1.0, "alpha": 0.5},
            {"factors": 64, "regularization": 0.05, "alpha": 1.0},
            {"factors": 128, "regularization": 0.1, "alpha": 1.0})

    def __init__(self, grid: tuple[dict, ...] | None = None, iterations: int = 15, seed: int = 0):
        super().__init__(seed)
        self.grid, self.iterations = tuple(grid or self.GRID), iterations

    def _fit(self, x: sp.csr_matrix, p: dict):
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
        # implicit parallelises itself; a multi-threaded BLAS underneath only contends with it
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(iterations=self.iterations, random_state=self.seed, **p)
            model.fit(x, show_progress=False)
        return np.asarray(model.user_factors), np.asarray(model.item_factors)

    def fit(self, data: TrainData) -> "ImplicitALSRecommender":
        self._remember(data)
        x = sp.csr_matrix(data.matrix.positives, dtype=np.float32)
        best = self.grid[0]
        if len(self.grid) > 1:
            fit, val = holdout_rows(x, seed=self.seed)
            rows = _val_rows(val)
            results = []
            for p in self.grid:
                u, v = self._fit(fit, p)
                recs = top_k(u[rows] @ v.T, fit[rows], TUNE_K)
                results.append(_val_ndcg(recs, val[rows]))
            best = self.grid[int(np.argmax(results))]
            self.params["validation_ndcg@10"] = [round(r, 4) for r in results]
        self.params.update(best)
        self.user_factors, self.item_factors = self._fit(x, best)
        return self

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.user_factors[rows] @ self.item_factors.T


# --- the registry -----------------------------------------------------------------------------
BASELINES: dict[str, Callable[..., Recommender]] = {
    "popularity": PopularityRecommender,
    "ease": EASERecommender,
    "covisit": CovisitRecommender,
}
BATCH_MODELS = ("als", "reelrec-ranker", "reelrec-ranker-nocontext")
BATCH_MODULE = "reelrec.batch.pipeline"
# composed pages, built on the batch layer: name -> (module, class), imported when asked for
COMPOSED_MODELS = {"reelrec-homepage": ("reelrec.eval.homepage_model", "HomepageRecommender")}
DEFAULT_MODELS = ("popularity", "als", "ease", "covisit", "reelrec-ranker", "reelrec-homepage")


@dataclass
class Resolved:
    """A model ready to fit, or the reason it cannot be."""

    name: str
    model: Recommender | None = None
    source: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _takes_seed(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _from_batch(name: str, seed: int, module: str = BATCH_MODULE) -> Recommender:
    """Ask the batch layer for ``name``, in this order: a ``make_recommender(name, seed=...)``
    function, a ``RECOMMENDERS`` mapping of name -> factory, or a class whose ``name`` attribute
    is ``name`` (``ALSRecommender.name == "als"``), built with no arguments (or ``seed=``).

    Raises:
        Unavailable: the batch layer is not installed or does not provide ``name``.
    """
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} cannot be imported ({exc})") from None
    make = getattr(mod, "make_recommender", None)
    if callable(make):
        return make(name, seed=seed) if _takes_seed(make) else make(name)
    table = getattr(mod, "RECOMMENDERS", None)
    if isinstance(table, dict) and name in table:
        factory = table[name]
        return factory(seed=seed) if _takes_seed(factory) else factory()
    for attr in vars(mod).values():
        if inspect.isclass(attr) and getattr(attr, "name", None) == name \
                and callable(getattr(attr, "fit", None)) and callable(getattr(attr, "recommend", None)):
            return attr(seed=seed) if _takes_seed(attr) else attr()
    raise Unavailable(f"{module} provides no recommender named {name!r}")


def resolve(name: str, seed: int = 0) -> Resolved:
    """Look ``name`` up: a baseline here, else the batch layer (with the ALS stand-in).

    Raises:
        InvalidInput: ``name`` is not a model this evaluator knows.
    """
    if name in BASELINES:
        return Resolved(name, BASELINES[name](seed=seed), source="reelrec.eval.models")
    if name in COMPOSED_MODELS:
        module, cls = COMPOSED_MODELS[name]
        try:
            return Resolved(name, getattr(importlib.import_module(module), cls)(seed=seed), source=module)
        except ImportError as exc:
            return Resolved(name, None, reason=f"{module} cannot be imported ({exc})")
    if name not in BATCH_MODELS:
        raise InvalidInput(FieldError("models", f"unknown model {name!r}; expected some of "
                                                f"{', '.join(dict.fromkeys(DEFAULT_MODELS + BATCH_MODELS))}"))
    try:
        model = _from_batch(name, seed)
        if not isinstance(model, Recommender):
            raise Unavailable(f"{BATCH_MODULE} returned {type(model).__name__} for {name!r}, "
                              "which lacks fit/recommend")
        return Resolved(name, model, source=BATCH_MODULE)
    except ReelrecError as exc:
        if name == "als":
            return Resolved(name, ImplicitALSRecommender(seed=seed), source="reelrec.eval.models",
                            notes=[f"batch ALS unavailable ({exc}); scored the evaluator's "
                                   "implicit-ALS stand-in"])
        return Resolved(name, None, reason=str(exc))
