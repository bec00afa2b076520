"""The synthetic catalog: titles of three kinds with co-occurring genres, regional catalogs and
availability, decades of releases plus new releases arriving during the simulated days.

``make_catalog`` returns both the public catalog table (``TITLE_SCHEMA``, saved by
``Catalog.save``) and the hidden arrays the session model and the ground truth need (genre
weights, base popularity, release spikes, quality, latent factors). All draws come from the
generator passed in, so a seed gives the same catalog.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from reelrec.domain.catalog import TITLE_SCHEMA
from reelrec.sim import vocab as V

EPOCH = dt.date(1970, 1, 1)
LATENT_DIM = 8
NEW_WINDOW_DAYS = 45  # "new on reelrec": added within this many days


@dataclass
class CatalogArrays:
    """Catalog in arrays (row i = title i of ``table``)."""

    table: pa.Table
    kind: np.ndarray  # int8, index into KINDS
    origin: np.ndarray  # int8, index into REGIONS
    genre_idx: np.ndarray  # (T, 3) int16, -1 padded
    genre_w: np.ndarray  # (T, 3) float32: weight of each genre, sums to 1 per title
    avail: np.ndarray  # (T, R) bool: available in region
    added_s: np.ndarray  # int64 epoch seconds from which the title can be shown
    unit_min: np.ndarray  # float32 minutes of one viewing unit (film or episode)
    episodes: np.ndarray  # int32, 1 for films
    base_pop: np.ndarray  # float64 popularity weight (long tail)
    spike: np.ndarray  # float64 extra popularity multiple at release (0: none), decays
    quality: np.ndarray  # float32, part of everyone's true preference
    factors: np.ndarray  # (T, LATENT_DIM) float32 idiosyncratic taste dimensions

    @property
    def n(self) -> int:
        return len(self.kind)


def _days(d: dt.date) -> int:
    return (d - EPOCH).days


def _pick_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a non-negative weight matrix (rows summing to > 0)."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _names(rng: np.random.Generator, kind: np.ndarray, primary: np.ndarray,
           series_flag: np.ndarray) -> list[str]:
    theme = np.array([V.NAME_THEME_OF_GENRE.get(V.GENRES[g], "doc") for g in primary])
    n = len(kind)
    a = rng.integers(0, 12, n)
    b = rng.integers(0, 14, n)
    p = rng.integers(0, len(V.PLACES), n)
    tpl = rng.integers(0, 5, n)
    out = []
    for i in range(n):  # 100 K titles at most: a plain loop over templates is cheap here
        words = V.NAME_WORDS[theme[i]]
        adj, noun = words["adj"][a[i]], words["noun"][b[i]]
        t = tpl[i]
        if theme[i] in ("bollywood", "k-drama", "anime", "telenovela"):
            name = f"{adj} {noun}"
        elif theme[i] == "doc":
            name = (f"{adj} {noun}", f"{noun} of {V.PLACES[p[i]]}", f"Inside the {adj} {noun}",
                    f"{V.PLACES[p[i]]}: {adj} {noun}", f"The {adj} {noun}")[t]
        else:
            name = (f"The {adj} {noun}", f"{adj} {noun}", f"{noun} in {V.PLACES[p[i]]}",
                    f"The {noun} of {V.PLACES[p[i]]}", f"{adj} {noun}")[t]
        if series_flag[i] and t == 4:
            name = f"{name}: The Series"
        out.append(name)
    return out


def _list_array(member: np.ndarray, values: tuple[str, ...], null_rows: np.ndarray | None = None
                ) -> pa.ListArray:
    """Rows of a boolean membership matrix as a list<string> column (columns name the values)."""
    rows, cols = np.nonzero(member)
    counts = np.bincount(rows, minlength=member.shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    vals = pa.array(values).take(pa.array(cols.astype(np.int32)))
    mask = None if null_rows is None else pa.array(null_rows)
    return pa.ListArray.from_arrays(pa.array(offsets), vals, mask=mask)


def make_catalog(rng: np.random.Generator, n_titles: int, n_new: int, start: dt.date,
                 days: int) -> CatalogArrays:
    """``n_titles`` titles in the catalog before ``start`` plus ``n_new`` added during the days."""
    n = n_titles + n_new
    kind = rng.choice(3, size=n, p=V.KIND_SHARES).astype(np.int8)
    is_doc = kind == V.DOC
    origin = np.where(is_doc, rng.choice(V.R, size=n, p=V.ORIGIN_SHARE_DOC),
                      rng.choice(V.R, size=n, p=V.ORIGIN_SHARE_FICTION)).astype(np.int8)

    # --- genres: a primary one, then up to two co-genres drawn from its co-occurrence row --------
    w_fic = np.array([V.PRIMARY_WEIGHT.get(g, 0.0) if g in V.FICTION else 0.0 for g in V.GENRES])
    w_doc = np.array([V.PRIMARY_WEIGHT.get(g, 0.0) if g in V.DOCUMENTARY else 0.0
                      for g in V.GENRES])
    primary = np.where(is_doc, rng.choice(V.G, size=n, p=w_doc / w_doc.sum()),
                       rng.choice(V.G, size=n, p=w_fic / w_fic.sum()))
    u = rng.random(n)
    reg = origin
    regional = np.full(n, -1)
    regional[(reg == V.RI["IN"]) & ~is_doc & (u < 0.85)] = V.GI["bollywood"]
    regional[(reg == V.RI["KR"]) & (kind == V.SERIES) & (u < 0.85)] = V.GI["k-drama"]
    regional[(reg == V.RI["KR"]) & (kind == V.MOVIE) & (u < 0.15)] = V.GI["k-drama"]
    regional[(reg == V.RI["JP"]) & ~is_doc & (u < 0.6)] = V.GI["anime"]
    latin = np.isin(reg, [V.RI["MX"], V.RI["BR"]])
    regional[latin & (kind == V.SERIES) & (u < 0.5)] = V.GI["telenovela"]
    primary = np.where(regional >= 0, regional, primary)

    co = V.cooccurrence_matrix()
    allowed = np.where(is_doc[:, None], V.DOC_MASK[None, :],
                       (V.FICTION_MASK & ~V.REGIONAL_MASK)[None, :])
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.3, 0.45, 0.25])
    anime = primary == V.GI["anime"]
    n_genres = np.where(anime, np.maximum(n_genres, 2), n_genres)
    genre_idx = np.full((n, 3), -1, dtype=np.int16)
    genre_idx[:, 0] = primary
    chosen = np.zeros((n, V.G), dtype=bool)
    chosen[np.arange(n), primary] = True
    row_w = co[primary].copy()
    # anime is animation: make that co-genre certain
    row_w[anime] = 0.0
    row_w[anime, V.GI["animation"]] = 1.0
    for k in (1, 2):
        w = np.where(allowed & ~chosen, row_w, 0.0)
        g = _pick_rows(rng, w + 1e-12 * (allowed & ~chosen))
        take = n_genres > k
        genre_idx[take, k] = g[take]
        chosen[np.nonzero(take)[0], g[take]] = True
        # a third genre must go with both: drama + romance + comedy, not drama + romance + western
        row_w = row_w * (co[g] + 0.05)
    genre_w = np.where(genre_idx >= 0, np.array([2.0, 1.0, 1.0])[None, :], 0.0)
    genre_w = (genre_w / genre_w.sum(axis=1, keepdims=True)).astype(np.float32)

    # --- dates: back catalog released over decades; new releases added during the window ------
    start_d = _days(start)
    is_new = np.zeros(n, dtype=bool)
    is_new[n_titles:] = True
    age_years = np.minimum(rng.exponential(9.0, n), start.year - 1950)
    release = start_d - (age_years * 365.25).astype(np.int64) - rng.integers(1, 30, n)
    first_add = np.maximum(release + 30, _days(dt.date(2016, 1, 1)))
    first_add = np.minimum(first_add, start_d - 1)
    added = first_add + (rng.random(n) * (start_d - first_add)).astype(np.int64)
    # new releases: added on a day inside the window; originals premiere that day
    new_day = rng.integers(0, days, n)
    original = rng.random(n) < 0.6
    new_added = start_d + new_day
    new_release = np.where(original, new_added, new_added - rng.integers(30, 365, n))
    added = np.where(is_new, new_added, added)
    release = np.where(is_new, new_release, release)
    added_s = added * 86400 + np.where(is_new, rng.integers(0, 12, n) * 3600, 0)

    # --- availability: home titles everywhere or licensed to a few regions --------------------
    u = rng.random(n)
    western = np.isin(origin, [V.RI["US"], V.RI["GB"]])
    everywhere = np.where(western, u < 0.72, u < 0.35)
    home_only = ~western & (u >= 0.35) & (u < 0.7)
    avail = rng.random((n, V.R)) < np.where(western, 0.55, 0.25)[:, None]
    avail[home_only] = False
    avail[np.arange(n), origin] = True
    avail[everywhere] = True
    # diaspora: Bollywood travels to GB and US more often
    bolly = primary == V.GI["bollywood"]
    avail[bolly & (rng.random(n) < 0.5), V.RI["GB"]] = True
    everywhere = avail.all(axis=1)

    # --- runtimes ---------------------------------------------------------------------------
    movie_min = np.clip(rng.normal(108, 18, n), 80, 180)
    movie_min = np.where(bolly, np.clip(rng.normal(148, 18, n), 100, 180), movie_min)
    movie_min = np.where(anime, np.clip(rng.normal(100, 12, n), 80, 140), movie_min)
    doc_min = np.clip(rng.normal(75, 20, n), 40, 120)
    light = np.isin(primary, [V.GI["comedy"], V.GI["animation"], V.GI["family"]])
    ep_mean = np.select([anime, primary == V.GI["k-drama"], primary == V.GI["telenovela"], light],
                        [24, 60, 45, 26], 48)
    ep_min = np.clip(rng.normal(ep_mean, 5, n), 20, 60)
    episodes = np.where(anime, rng.choice([12, 13, 24, 26], n),
                        np.where(primary == V.GI["k-drama"], 16,
                                 np.where(primary == V.GI["telenovela"], rng.integers(40, 121, n),
                                          rng.integers(1, 5, n) * rng.choice([6, 8, 10, 13], n))))
    unit_min = np.round(np.select([kind == V.MOVIE, kind == V.DOC], [movie_min, doc_min], ep_min))
    unit_min = unit_min.astype(np.float32)
    episodes = np.where(kind == V.SERIES, episodes, 1).astype(np.int32)

    # --- maturity -----------------------------------------------------------------------------
    gset = lambda *names: np.isin(genre_idx, [V.GI[x] for x in names]).any(axis=1)  # noqa: E731
    kids = gset("family", "animation") & ~gset("horror", "war", "crime")
    grown = gset("horror", "war", "crime", "thriller", "true crime")
    level = np.where(kids, rng.choice([0, 1], n, p=[0.6, 0.4]),
                     np.where(grown, rng.choice([2, 3], n, p=[0.35, 0.65]),
                              rng.choice([1, 2, 3], n, p=[0.2, 0.6, 0.2])))
    movie_rating = np.array(V.MATURITY_MOVIE)[level]
    series_rating = np.array(V.MATURITY_SERIES)[np.minimum(level + (level > 0), 4)]
    maturity = np.where(kind == V.SERIES, series_rating, movie_rating)

    # --- hidden qualities: popularity (long tail), release spikes, quality, latent factors ----
    quality = rng.normal(0.0, 0.5, n).astype(np.float32)
    recency = np.where(start_d - release < 730, 2.0, 1.0)
    base_pop = np.exp(rng.normal(0.0, 1.3, n) + 0.8 * quality) * recency
    base_pop *= np.where(is_new, 2.0, 1.0)
    spike = np.where(is_new & (rng.random(n) < 0.3), rng.uniform(15, 40, n), 0.0)
    factors = rng.normal(0.0, 0.45, (n, LATENT_DIM)).astype(np.float32)

    # --- the public table -----------------------------------------------------------------------
    ids = pa.array([f"t{i:06d}" for i in range(n)])
    names = _names(rng, kind, primary, kind == V.SERIES)
    genre_member_idx = genre_idx.astype(np.int64)
    gvals = pa.array(V.GENRES).take(pa.array(genre_member_idx[genre_idx >= 0].ravel()))
    g_off = np.concatenate([[0], np.cumsum((genre_idx >= 0).sum(axis=1))]).astype(np.int32)
    genres = pa.ListArray.from_arrays(pa.array(g_off), gvals)
    region_lists = _list_array(avail & ~everywhere[:, None], V.REGIONS)
    series = kind == V.SERIES
    table = pa.table({
        "title_id": ids,
        "name": pa.array(names),
        "kind": pa.array(V.KINDS).take(pa.array(kind.astype(np.int32))),
        "genres": genres,
        "release_date": pa.array(release.astype("datetime64[D]")).cast(pa.date32()),
        "added_date": pa.array(added.astype("datetime64[D]")).cast(pa.date32()),
        "origin_region": pa.array(V.REGIONS).take(pa.array(origin.astype(np.int32))),
        "language": pa.array([V.REGION_ORIGIN_LANGUAGE[r] for r in V.REGIONS]).take(
            pa.array(origin.astype(np.int32))),
        "regions": region_lists,
        "runtime_min": pa.array(unit_min, mask=series),
        "episodes": pa.array(episodes, mask=~series),
        "episode_runtime_min": pa.array(unit_min, mask=~series),
        "maturity": pa.array(maturity),
    }, schema=TITLE_SCHEMA)
    return CatalogArrays(table=table, kind=kind, origin=origin, genre_idx=genre_idx,
                         genre_w=genre_w, avail=avail, added_s=added_s.astype(np.int64),
                         unit_min=unit_min, episodes=episodes, base_pop=base_pop, spike=spike,
                         quality=quality, factors=factors)
