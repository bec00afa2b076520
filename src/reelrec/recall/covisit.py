"""Item-to-item sources of recall: co-visitation with time decay, and EASE (batch layer).

*Co-visitation* ("users who watched X also watched Y"): each positive counts with a weight that
decays with its age (half-life ``half_life_days`` before the reference time), C = X_d' X_d with
the diagonal removed, normalised by the titles' decayed popularity (cosine) and pruned to the
``top`` strongest neighbours per title, so it stays a sparse titles x titles matrix. A user's
seeds are their most recent strong positives (``recent_seeds``), weighted by recency rank; the
source's scores are seeds @ C, one sparse product for a whole batch of users.

*EASE* (Steck 2019) is the closed-form item-item regression B = I - P / diag(P), P = (X'X +
lambda I)^-1; used as a collaborative source and ranker feature for catalogs up to
``EASE_MAX_TITLES`` titles (the inverse is dense titles x titles).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from reelrec.errors import InvalidInput

DAY_S = 86400.0
EASE_MAX_TITLES = 20_000


def decay_weights(ts_s: np.ndarray, ref_s: float, half_life_days: float) -> np.ndarray:
    """exp2(-age / half_life) for event times in seconds; ages below zero count as zero."""
    age = np.maximum(ref_s - ts_s, 0.0) / (half_life_days * DAY_S)
    return np.exp2(-age)


def prune_rows(m: sp.csr_matrix, top: int) -> sp.csr_matrix:
    """Keep the ``top`` largest entries of each row (vectorised: one lexsort over all entries)."""
    m = sp.csr_matrix(m)
    n_per = np.diff(m.indptr)
    if n_per.max(initial=0) <= top:
        return m
    rows = np.repeat(np.arange(m.shape[0]), n_per)
    order = np.lexsort((-m.data, rows))
    rank = np.empty(m.nnz, dtype=np.int64)
    rank[order] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], n_per)
    keep = rank < top
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape, dtype=m.dtype)


def covisitation(positives: sp.csr_matrix, ts_s: sp.csr_matrix | None = None, ref_s: float | None = None,
                 half_life_days: float = 30.0, top: int = 200, shrink: float = 10.0) -> sp.csr_matrix:
    """Titles x titles co-visitation scores (float32, sparse, diagonal zero, rows pruned).

    ``ts_s`` holds each positive's time in seconds (aligned with ``positives``); without it
    there is no time decay. Score(i, j) = sum_u d_ui d_uj / (sqrt(n_i n_j) + shrink), with d the
    decayed indicator and n the decayed title counts.
    """
    x = sp.csr_matrix(positives, dtype=np.float64)
    x.sort_indices()
    x.data[:] = 1.0
    if ts_s is not None and ref_s is not None:
        t = sp.csr_matrix(ts_s, dtype=np.float64)
        t.sort_indices()
        if t.nnz != x.nnz:
            raise InvalidInput("timestamps are not aligned with the positives", field="ts")
        x.data = decay_weights(t.data, ref_s, half_life_days)
    c = (x.T @ x).tocsr()
    c.setdiag(0.0)
    c.eliminate_zeros()
    n = np.asarray(x.sum(axis=0)).ravel()
    c = c.tocoo()
    c.data = c.data / (np.sqrt(n[c.row] * n[c.col]) + shrink)
    return prune_rows(c.tocsr(), top).astype(np.float32)


def recent_seeds(positives: sp.csr_matrix, ts_s: sp.csr_matrix | None, n_seeds: int = 20,
                 strong: float = 0.0) -> sp.csr_matrix:
    """Each user's ``n_seeds`` most recent positives with weight >= ``strong``; weight 1/(1 + rank/5)
    by recency rank, so the last titles watched steer co-visitation most."""
    x = sp.csr_matrix(positives, dtype=np.float64)
    x.sort_indices()
    keep = x.data >= strong
    when = np.zeros(x.nnz)
    if ts_s is not None:
        t = sp.csr_matrix(ts_s, dtype=np.float64)
        t.sort_indices()
        when = t.data
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    rows, cols, when = rows[keep], x.indices[keep], when[keep]
    order = np.lexsort((-when, rows))
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(x.shape[0]))
    rank = np.arange(len(rows)) - first[rows]
    sel = rank < n_seeds
    w = 1.0 / (1.0 + rank[sel] / 5.0)
    return sp.csr_matrix((w.astype(np.float32), (rows[sel], cols[sel])), shape=x.shape)


def ease(positives: sp.spmatrix, lam: float = 250.0, binary: bool = True) -> np.ndarray:
    """The EASE item-item weights (titles x titles, float32, zero diagonal).

    Raises:
        InvalidInput: the catalog is larger than ``EASE_MAX_TITLES``.
    """
    x = sp.csr_matrix(positives, dtype=np.float64)
    n = x.shape[1]
    if n > EASE_MAX_TITLES:
        raise InvalidInput(f"EASE needs a dense {n} x {n} inverse; limit is {EASE_MAX_TITLES} titles",
                           field="titles")
    if binary:
        x.data[:] = 1.0
    g = np.asarray((x.T @ x).todense())
    g[np.diag_indices(n)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    b[np.diag_indices(n)] = 0.0
    return b.astype(np.float32)
