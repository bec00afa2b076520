"""Ranking and beyond-accuracy metrics for ``reelrec evaluate``, vectorised over users.

Inputs are a recommendation array ``recs`` (users x N title columns, best first, padded with -1)
and a binary CSR ``relevant`` (users x titles). Accuracy metrics follow the Microsoft Recommenders
definitions (``recommenders.evaluation.python_evaluation``) so our numbers sit beside their
MovieLens table; each is averaged over the users that have at least one relevant title:

* ``precision@K`` = hits in the top K / K;
* ``recall@K`` = hits in the top K / number of relevant titles;
* ``hr@K`` = 1 when the top K hold at least one relevant title;
* ``ndcg@K`` with binary relevance: sum over hits of 1 / log(1 + rank), divided by the ideal
  sum over the first min(relevant, K) ranks (the log base cancels);
* ``map@K``: the current Recommenders ``map_at_k`` (Spark's meanAveragePrecisionAt): the sum of
  precision@rank over the hits divided by min(relevant, K). ``map_all@K`` divides by the number of
  relevant titles instead, as Recommenders' ``map`` (and its ``map_at_k`` before release 1.2) does.

Beyond accuracy:

* ``coverage``: distinct titles recommended in anyone's top K / titles with a training interaction
  (Recommenders' ``catalog_coverage``);
* ``diversity``: intra-list genre diversity, the mean over users of the mean pairwise Jaccard
  distance between the genre sets of the top K (two titles without genres count as identical);
* ``novelty``: mean self-information -log2(p) of the recommended titles, p being the share of
  training users who interacted with the title (clipped at one user), as Recommenders' ``novelty``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

ACCURACY = ("precision", "recall", "ndcg", "map", "map_all", "hr")


def hit_matrix(recs: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (users x N): is ``recs[u, j]`` relevant for user ``u``."""
    recs = np.asarray(recs, dtype=np.int64)
    rel = sp.csr_matrix(relevant)
    n_titles = rel.shape[1]
    rel_keys = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr)) * n_titles \
        + rel.indices.astype(np.int64)
    rel_keys.sort()
    keys = np.arange(recs.shape[0], dtype=np.int64)[:, None] * n_titles + recs
    pos = np.searchsorted(rel_keys, keys)
    pos = np.minimum(pos, max(len(rel_keys) - 1, 0))
    hits = (rel_keys[pos] == keys) if len(rel_keys) else np.zeros(recs.shape, dtype=bool)
    return hits & (recs >= 0)


def _check(recs: np.ndarray, relevant: sp.csr_matrix) -> None:
    if recs.ndim != 2 or recs.shape[0] != relevant.shape[0]:
        raise ValueError(f"recs {recs.shape} and relevant {relevant.shape} disagree on users")


def per_user(recs: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, np.ndarray]:
    """Each accuracy metric at ``k`` per user (users without relevant titles are dropped)."""
    recs = np.asarray(recs)
    _check(recs, relevant)
    if k < 1:
        raise ValueError("k must be at least 1")
    n_rel = np.diff(sp.csr_matrix(relevant).indptr)
    keep = n_rel > 0
    hits = hit_matrix(recs[:, :k], relevant)[keep].astype(np.float64)
    n_rel = n_rel[keep].astype(np.float64)
    if hits.shape[1] < k:  # fewer recommendations than k: the missing ranks are misses
        hits = np.pad(hits, ((0, 0), (0, k - hits.shape[1])))
    count = hits.sum(axis=1)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    disc = 1.0 / np.log2(ranks + 1.0)
    ideal = np.cumsum(disc)[np.minimum(n_rel, k).astype(np.int64) - 1]
    prec_at_rank = np.cumsum(hits, axis=1) / ranks
    ap_sum = (prec_at_rank * hits).sum(axis=1)
    return {
        "precision": count / k,
        "recall": count / n_rel,
        "ndcg": (hits * disc).sum(axis=1) / ideal,
        "map": ap_sum / np.minimum(n_rel, k),
        "map_all": ap_sum / n_rel,
        "hr": (count > 0).astype(np.float64),
    }


def accuracy(recs: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, float]:
    """Mean of each accuracy metric at ``k``: ``{"precision@10": ..., ...}``."""
    per = per_user(recs, relevant, k)
    return {f"{name}@{k}": float(v.mean()) if len(v) else 0.0 for name, v in per.items()}


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values`` (users resampled with
    replacement): the spread a single split hides, e.g. a temporal split with few test users."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.concatenate([v[rng.integers(0, len(v), (min(chunk, n_boot - s), len(v)))].mean(axis=1)
                            for s in range(0, n_boot, chunk)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0, chunk: int = 200) -> dict:
    """How far model A is from model B on the same test users: the relative difference of the
    means, ``mean(a) / mean(b) - 1``, with a paired percentile bootstrap interval (each replicate
    resamples users, and scores both models on the same resample) and the share of replicates in
    which A is not better than B (``p_not_better``, a one-sided bootstrap p-value).

    Pairing removes the spread that both models share (hard users are hard for both), which is
    why two overlapping per-model intervals can still hide a clear difference, and the reverse.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must be per user of the same users: {a.shape} != {b.shape}")
    n = len(a)
    if n == 0:
        return {"a": 0.0, "b": 0.0, "rel": 0.0, "ci95": [0.0, 0.0], "p_not_better": 1.0, "users": 0}
    rng = np.random.default_rng(seed)
    ma, mb = [], []
    for s in range(0, n_boot, chunk):
        idx = rng.integers(0, n, (min(chunk, n_boot - s), n))
        ma.append(a[idx].mean(axis=1))
        mb.append(b[idx].mean(axis=1))
    ma, mb = np.concatenate(ma), np.concatenate(mb)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mb > 0, ma / mb - 1.0, np.where(ma > 0, np.inf, 0.0))
    lo, hi = np.quantile(rel, [(1 - level) / 2, (1 + level) / 2])
    base = a.mean() / b.mean() - 1.0 if b.mean() > 0 else (np.inf if a.mean() > 0 else 0.0)
    return {"a": float(a.mean()), "b": float(b.mean()), "rel": float(base),
            "ci95": [float(lo), float(hi)], "p_not_better": float((ma <= mb).mean()), "users": n}


def curves(recs: np.ndarray, relevant: sp.csr_matrix, ks: range | list[int]) -> dict[str, list[float]]:
    """Each accuracy metric for every K in ``ks`` (metric@K curves)."""
    out: dict[str, list[float]] = {name: [] for name in ACCURACY}
    for k in ks:
        for name, v in per_user(recs, relevant, k).items():
            out[name].append(float(v.mean()) if len(v) else 0.0)
    return out


def coverage(recs: np.ndarray, n_titles: int) -> float:
    """Distinct recommended titles / ``n_titles``."""
    if n_titles <= 0:
        return 0.0
    r = np.asarray(recs)
    return float(len(np.unique(r[r >= 0])) / n_titles)


def genre_matrix(genres: list[list[str]] | None) -> sp.csr_matrix:
    """Multi-hot (titles x distinct genres) from each title's genre list."""
    genres = genres or []
    vocab = {g: i for i, g in enumerate(sorted({g for gs in genres for g in (gs or [])}))}
    rows = np.repeat(np.arange(len(genres)), [len(set(gs or [])) for gs in genres])
    cols = np.array([vocab[g] for gs in genres for g in sorted(set(gs or []))], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                         shape=(len(genres), max(len(vocab), 1)))


def diversity(recs: np.ndarray, genres: sp.csr_matrix, chunk: int = 4096) -> float:
    """Mean over users of the mean pairwise Jaccard distance of genre sets in each list."""
    recs = np.asarray(recs)
    g = np.asarray(genres.todense(), dtype=np.float32)
    g = np.vstack([g, np.zeros((1, g.shape[1]), dtype=np.float32)])  # row for padding (-1)
    sizes = g.sum(axis=1)
    total, users = 0.0, 0
    for s in range(0, recs.shape[0], chunk):
        r = recs[s:s + chunk]
        valid = r >= 0
        n = valid.sum(axis=1)
        ok = n >= 2
        if not ok.any():
            continue
        r, valid, n = r[ok], valid[ok], n[ok]
        gr = g[np.where(valid, r, -1)]  # users x K x genres
        inter = np.einsum("ukg,ulg->ukl", gr, gr)
        sz = sizes[np.where(valid, r, -1)]
        union = sz[:, :, None] + sz[:, None, :] - inter
        sim = np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)
        pair = valid[:, :, None] & valid[:, None, :]
        k = r.shape[1]
        pair &= ~np.eye(k, dtype=bool)[None]
        dist = ((1.0 - sim) * pair).sum(axis=(1, 2)) / (n * (n - 1))
        total += float(dist.sum())
        users += len(dist)
    return total / users if users else 0.0


def novelty(recs: np.ndarray, popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information (bits) of recommended titles; ``popularity`` counts training users
    per title."""
    r = np.asarray(recs)
    r = r[r >= 0]
    if len(r) == 0 or n_users <= 0:
        return 0.0
    p = np.maximum(np.asarray(popularity, dtype=np.float64)[r], 1.0) / n_users
    return float(np.mean(-np.log2(p)))
