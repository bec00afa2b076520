"""Random catalogs, profiles and candidate lists for composition's tests and benchmark.

Built through ``Catalog`` and ``CatalogFeatures.from_catalog`` so the real construction path runs.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from reelrec.compose.features import SOURCES, CatalogFeatures, Candidates, UserProfile
from reelrec.domain.catalog import KINDS, TITLE_SCHEMA, Catalog

GENRES = ("action", "animation", "comedy", "crime", "drama", "family", "fantasy", "horror",
          "k-drama", "mystery", "nature", "romance", "sci-fi", "thriller", "war", "western",
          "history", "music", "sport", "biography")
REGIONS = ("US", "IN", "GB", "KR", "BR")


def random_catalog(n: int, rng: np.random.Generator, n_genres: int = 12,
                   kind_p: tuple[float, float, float] = (0.6, 0.25, 0.15),
                   restricted: float = 0.2, today: dt.date = dt.date(2026, 11, 1)) -> Catalog:
    """``n`` titles; 1-3 genres each (skewed towards the first genres), a ``restricted`` share
    available only in some regions."""
    genres = list(GENRES[:n_genres])
    kind = rng.choice(len(KINDS), size=n, p=kind_p)
    n_g = rng.integers(1, 4, size=n)
    gp = 1.0 / np.arange(1, n_genres + 1)
    gp /= gp.sum()
    glists = []
    picks = rng.choice(n_genres, size=(n, 3), p=gp)
    for i in range(n):
        glists.append(list(dict.fromkeys(genres[g] for g in picks[i, : n_g[i]])))
    regions = [[] if r > restricted else list(rng.choice(REGIONS, size=2, replace=False))
               for r in rng.random(n)]
    added = np.array([today - dt.timedelta(days=int(d)) for d in rng.integers(0, 2000, n)])
    runtime = rng.uniform(20, 160, n).astype(np.float32)
    table = pa.table({
        "title_id": [f"t{i}" for i in range(n)],
        "name": [f"Title {i}" for i in range(n)],
        "kind": [KINDS[k] for k in kind],
        "genres": glists,
        "release_date": added,
        "added_date": added,
        "origin_region": list(rng.choice(REGIONS, size=n)),
        "language": ["en"] * n,
        "regions": regions,
        "runtime_min": np.where(kind == 1, np.nan, runtime),
        "episodes": np.where(kind == 1, 8, 0).astype(np.int32),
        "episode_runtime_min": np.where(kind == 1, runtime / 3, np.nan).astype(np.float32),
        "maturity": ["PG"] * n,
    }).cast(TITLE_SCHEMA)
    return Catalog(table)


def random_features(n: int, rng: np.random.Generator, n_genres: int = 12, **kw) -> CatalogFeatures:
    f = CatalogFeatures.from_catalog(random_catalog(n, rng, n_genres, **kw))
    f.set_popularity(rng.pareto(1.5, n).astype(np.float32))
    return f


def random_profile(features: CatalogFeatures, rng: np.random.Generator, user_id: str = "u1",
                   n_history: int = 40, region: str | None = "IN") -> UserProfile:
    n = len(features)
    hist = rng.choice(n, size=min(n, n_history), replace=False)
    w = rng.gamma(2.0, 1.0, len(hist))
    kind = np.bincount(features.kind[hist], weights=w, minlength=3)
    genre = (features.genre_multi_hot[hist] * w[:, None]).sum(axis=0)
    shown = rng.choice(n, size=min(n, 4 * n_history), replace=False)
    k = len(hist)
    return UserProfile(
        user_id=user_id, region=region, kind_affinity=kind, genre_affinity=genre,
        impressions=np.union1d(shown, hist), thumbs_down=hist[: k // 10], finished=hist[k // 10: k // 2],
        in_progress=hist[k // 2: k // 2 + 3], recent_positives=hist[k // 2 + 3: k // 2 + 6],
        n_engaged=k,
    )


def random_candidates(features: CatalogFeatures, rng: np.random.Generator, k: int = 300,
                      anchors: np.ndarray | None = None) -> Candidates:
    n = len(features)
    t = rng.choice(n, size=min(n, k), replace=False)
    src = rng.integers(0, 6, len(t)).astype(np.uint8)
    anc = np.full(len(t), -1, np.int64)
    if anchors is not None and len(anchors):
        cov = src == SOURCES.index("covisit")
        anc[cov] = rng.choice(anchors, size=int(cov.sum()))
    return Candidates(t.astype(np.int64), np.sort(rng.random(len(t)))[::-1].copy(), src, anc)
