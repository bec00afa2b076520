"""More item-to-item sources of recall, from other model families than ALS, EASE and
co-visitation, for the ranker to combine (batch layer).

* *RP3beta* (Paudel et al. 2016; the tuned form of Dacrema et al. 2019): a three-step random
  walk user -> title -> user -> title on the bipartite graph of positives, each transition
  probability raised to ``alpha``, the arrival title's score divided by its popularity to the
  power ``beta`` (so the walk does not end on the most popular titles), rows pruned to the
  ``top`` strongest neighbours.
* *item-kNN*: cosine similarity of titles' user sets, shrunk (``shrink`` pseudo-users in the
  denominator) and pruned to the ``top`` nearest neighbours.
* *session co-visitation*: titles one user turned positive within ``gap_s`` seconds of each
  other (the same sitting: "watched in the same session as X"), counted over users and
  normalised like item-kNN. It reads the positives' times; the other two only their sets.

Both are sparse titles x titles matrices W; a user's scores are x @ W over their binary
positives, one sparse product for a batch (``reelrec.recall.candidates.dense_scores``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from reelrec.errors import InvalidInput
from reelrec.recall.covisit import prune_rows

ITEM_ITEM = ("rp3beta", "itemknn", "session")


def _binary(positives: sp.spmatrix) -> sp.csr_matrix:
    x = sp.csr_matrix(positives, dtype=np.float64)
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


def rp3beta(positives: sp.spmatrix, alpha: float = 1.0, beta: float = 0.5, top: int = 100) -> sp.csr_matrix:
    """The RP3beta title x title weights (float32, sparse, zero diagonal, rows pruned to ``top``)."""
    x = _binary(positives)
    ui = sp.csr_matrix(sp.diags(1.0 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)) @ x)
    xt = sp.csr_matrix(x.T)
    iu = sp.csr_matrix(sp.diags(1.0 / np.maximum(np.asarray(xt.sum(axis=1)).ravel(), 1.0)) @ xt)
    if alpha != 1.0:
        ui.data **= alpha
        iu.data **= alpha
    w = sp.csr_matrix(iu @ ui)
    pop = np.asarray(x.sum(axis=0)).ravel()
    w = sp.csr_matrix(w @ sp.diags(1.0 / np.power(np.maximum(pop, 1.0), beta)))
    w.setdiag(0.0)
    w.eliminate_zeros()
    return prune_rows(w, top).astype(np.float32)


def item_knn(positives: sp.spmatrix, top: int = 100, shrink: float = 10.0) -> sp.csr_matrix:
    """Cosine title x title similarity of user sets (float32, sparse, zero diagonal, rows pruned)."""
    x = _binary(positives)
    g = sp.csr_matrix(x.T @ x)
    norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    g = g.tocoo()
    data = g.data / (norm[g.row] * norm[g.col] + shrink)
    w = sp.csr_matrix((data, (g.row, g.col)), shape=g.shape)
    w.setdiag(0.0)
    w.eliminate_zeros()
    return prune_rows(w, top).astype(np.float32)


def session_covisitation(positives: sp.spmatrix, ts: sp.spmatrix, gap_s: float = 600.0, top: int = 200,
                         shrink: float = 10.0, window: int = 50) -> sp.csr_matrix:
    """Title x title counts of users who turned both titles positive within ``gap_s`` seconds
    of each other, over (sqrt(n_i n_j) + ``shrink``) with n the titles' positive counts (float32,
    sparse, symmetric before pruning, zero diagonal, rows pruned to ``top``). ``ts`` holds each
    positive's time in epoch seconds, aligned with ``positives``. Each positive pairs with at
    most its ``window`` next positives in time order, so a long sitting adds O(window) pairs per
    title rather than O(sitting^2).

    Raises:
        InvalidInput: ``ts`` is not aligned with ``positives``.
    """
    x = _binary(positives)
    x.sort_indices()
    t = sp.csr_matrix(ts, dtype=np.float64)
    t.sort_indices()
    if t.shape != x.shape or not (np.array_equal(t.indptr, x.indptr) and np.array_equal(t.indices, x.indices)):
        raise InvalidInput("timestamps are not aligned with the positives", field="ts")
    n = x.shape[1]
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    order = np.lexsort((t.data, rows))  # each user's positives in time order
    r, c, tt = rows[order], x.indices[order], t.data[order]
    src, dst = [], []
    for k in range(1, window + 1):
        # positives k apart in a user's time order; once none of them is within the gap, no
        # positive further apart is either
        ok = (r[k:] == r[:-k]) & (tt[k:] - tt[:-k] <= gap_s)
        if not ok.any():
            break
        src.append(c[:-k][ok])
        dst.append(c[k:][ok])
    if not src:
        return sp.csr_matrix((n, n), dtype=np.float32)
    a, b = np.concatenate(src), np.concatenate(dst)
    g = sp.coo_matrix((np.ones(2 * len(a)), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)).tocsr()
    g.sum_duplicates()
    g = g.tocoo()
    cnt = np.asarray(x.sum(axis=0)).ravel()
    w = sp.csr_matrix((g.data / (np.sqrt(cnt[g.row] * cnt[g.col]) + shrink), (g.row, g.col)), shape=(n, n))
    w.setdiag(0.0)
    w.eliminate_zeros()
    return prune_rows(w, top).astype(np.float32)


def build(name: str, positives: sp.spmatrix, params: dict, ts: sp.spmatrix | None = None) -> sp.csr_matrix:
    """The weights of source ``name`` (one of ``ITEM_ITEM``) with ``params``; ``ts`` (each
    positive's time, aligned with ``positives``) is what session co-visitation reads.

    Raises:
        KeyError: an unknown source name.
        InvalidInput: session co-visitation without aligned ``ts``.
    """
    if name == "session":
        if ts is None:
            raise InvalidInput("session co-visitation needs the positives' times", field="ts")
        return session_covisitation(positives, ts, **params)
    return {"rp3beta": rp3beta, "itemknn": item_knn}[name](positives, **params)
