"""The inputs of composition, as arrays: catalog features, a user profile, ranked candidates.

Composition (DESIGN.md, pipeline step 3) sits between the ranker and the cache write. It does not
care how candidates were found or ranked: the batch and speed layers hand it, per user, title
indices (catalog order) with scores and source tags. ``CatalogFeatures`` is built once per model
version from ``reelrec.domain.catalog.Catalog`` and shared by every user.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.domain.catalog import KINDS, Catalog
from reelrec.errors import FieldError, InvalidInput

MOVIE, SERIES, DOCUMENTARY = 0, 1, 2

# Source tags a candidate may carry (stored as uint8 codes). "covisit" candidates may name the
# recent title that led to them (``Candidates.anchors``) so the reason can say "Because you watched X".
SOURCES: tuple[str, ...] = ("ann", "covisit", "trending", "new", "genre", "popular", "onboarding",
                            "regional", "explore")
SOURCE = {s: i for i, s in enumerate(SOURCES)}

EPOCH = dt.date(1970, 1, 1)
NO_DATE = np.iinfo(np.int32).min


def _days(col: pa.ChunkedArray) -> np.ndarray:
    v = pc.cast(col, pa.int32()).fill_null(NO_DATE)
    return v.to_numpy(zero_copy_only=False).astype(np.int32)


def pack_words(multi_hot: np.ndarray) -> np.ndarray:
    """Bool rows (n, G) -> uint64 words (n, ceil(G/64)), bit g of word g//64 set for genre g."""
    multi_hot = np.atleast_2d(multi_hot)
    n, g = multi_hot.shape
    w = max(1, -(-g // 64))
    b = np.packbits(multi_hot, axis=1, bitorder="little")
    out = np.zeros((n, w * 8), dtype=np.uint8)
    out[:, : b.shape[1]] = b
    return out.view("<u8")


@dataclass
class CatalogFeatures:
    """Per-title arrays in catalog order.

    ``genre_multi_hot`` is (n_titles, n_genres) bool and ``genre_words`` the same packed into
    uint64 words, so that a genre cap is one AND over a candidate pool. A title's genre cluster
    (the bandit's arm) is the cluster of its first genre; by default each genre is its own cluster.
    ``available`` is (n_regions, n_titles); a region missing from ``regions`` sees only titles
    without a region restriction. ``popularity`` comes from the batch layer (zeros until set).
    """

    ids: np.ndarray  # object array of str
    names: np.ndarray  # object array of str
    kind: np.ndarray  # int8: 0 movie, 1 series, 2 documentary
    genre_names: list[str]
    genre_multi_hot: np.ndarray  # bool (n_titles, n_genres)
    genre_words: np.ndarray  # uint64 (n_titles, W)
    title_genres: list[tuple[int, ...]]  # genre indices of each title in catalog order
    cluster_names: list[str]
    cluster: np.ndarray  # int16 per title; the last cluster ("other") for titles without genres
    regions: list[str]
    available: np.ndarray  # bool (n_regions, n_titles)
    everywhere: np.ndarray  # bool (n_titles,): no region restriction
    release_day: np.ndarray  # int32 days since 1970-01-01, NO_DATE when unknown
    added_day: np.ndarray
    origin_region: np.ndarray  # object array of str or None
    runtime_s: np.ndarray  # float64, nan when unknown (a series: one episode)
    popularity: np.ndarray = field(default=None)  # float32 per title, higher is more popular

    def __post_init__(self) -> None:
        if self.popularity is None:
            self.popularity = np.zeros(len(self.ids), dtype=np.float32)
        self._region_index = {r: i for i, r in enumerate(self.regions)}
        self._genre_index = {g: i for i, g in enumerate(self.genre_names)}
        self._top_by_kind: dict[int, np.ndarray] = {}
        self._top_by_cluster: dict[int, np.ndarray] = {}
        self._top_by_genre: dict[int, np.ndarray] = {}
        # first (primary) genre of each title, -1 without genres
        self.first_genre = np.asarray([g[0] if g else -1 for g in self.title_genres], dtype=np.int64)
        # each title's genres as one Python integer bitmask: the short scans that fill a shelf under a
        # genre cap test a title with one AND (measured 10x faster than numpy steps on 40-title lists)
        self.genre_bits: list[int] = [sum(1 << g for g in tg) for tg in self.title_genres]
        self._genre_sets: list[tuple[int, ...]] | None = None
        self._genre_columns: np.ndarray | None = None

    @property
    def genre_sets(self) -> list[tuple[int, ...]]:
        """Each title's distinct genres in ascending order: the row of ``genre_multi_hot`` as a
        tuple, for per-item loops over a page's 20 titles (built once per model version)."""
        if self._genre_sets is None:
            self._genre_sets = [tg if all(a < b for a, b in zip(tg, tg[1:])) else tuple(sorted(set(tg)))
                                for tg in self.title_genres]
        return self._genre_sets

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_catalog(cls, catalog: Catalog, popularity: np.ndarray | None = None,
                     genre_clusters: dict[str, str] | None = None) -> "CatalogFeatures":
        """Build every array with Arrow compute (no per-title Python loop except the genre tuples).

        ``genre_clusters`` maps a genre to a cluster name (e.g. "k-drama" -> "korean"); genres not
        in it are their own cluster.
        """
        t = catalog.table
        n = t.num_rows
        kinds = t.column("kind").to_numpy(zero_copy_only=False)
        kind = np.full(n, -1, dtype=np.int8)
        for i, k in enumerate(KINDS):
            kind[kinds == k] = i
        genres = t.column("genres")
        flat = pc.list_flatten(genres)
        parent = pc.list_parent_indices(genres).to_numpy(zero_copy_only=False)
        genre_names = sorted(pc.unique(flat).to_pylist()) if len(flat) else []
        gidx = pc.index_in(flat, value_set=pa.array(genre_names, pa.string())).to_numpy(
            zero_copy_only=False).astype(np.int64) if len(flat) else np.zeros(0, np.int64)
        mh = np.zeros((n, len(genre_names)), dtype=bool)
        mh[parent, gidx] = True
        bounds = np.searchsorted(parent, np.arange(n + 1))
        # a genre listed twice in one title (an imported table) counts once; slices of Python lists,
        # not a numpy slice and tolist per title (100,400 titles: 0.21 -> 0.13 s)
        gl, bl = gidx.tolist(), bounds.tolist()
        title_genres = [tuple(dict.fromkeys(gl[a:b])) for a, b in zip(bl, bl[1:])]

        genre_clusters = {k.lower(): v for k, v in (genre_clusters or {}).items()}
        cl_of_genre = [genre_clusters.get(g, g) for g in genre_names]
        cluster_names = sorted(set(cl_of_genre)) + ["other"]
        cl_index = {c: i for i, c in enumerate(cluster_names)}
        genre_to_cluster = np.array([cl_index[c] for c in cl_of_genre] + [len(cluster_names) - 1],
                                    dtype=np.int16)
        has = bounds[1:] > bounds[:-1]
        first = np.full(n, len(genre_names), dtype=np.int64)
        first[has] = gidx[bounds[:-1][has]]
        cluster = genre_to_cluster[first]

        reg = t.column("regions")
        rflat = pc.utf8_upper(pc.list_flatten(reg))
        rparent = pc.list_parent_indices(reg).to_numpy(zero_copy_only=False)
        regions = sorted(set(pc.unique(rflat).to_pylist()) if len(rflat) else set())
        everywhere = np.ones(n, dtype=bool)
        everywhere[rparent] = False
        available = np.repeat(everywhere[None, :], len(regions), axis=0)
        if len(rflat):
            ridx = pc.index_in(rflat, value_set=pa.array(regions, pa.string())).to_numpy(
                zero_copy_only=False)
            available[ridx, rparent] = True
        return cls(
            ids=np.asarray(t.column("title_id").to_pylist(), dtype=object),
            names=np.asarray(t.column("name").to_pylist(), dtype=object),
            kind=kind,
            genre_names=genre_names,
            genre_multi_hot=mh,
            genre_words=pack_words(mh) if n else np.zeros((0, 1), np.uint64),
            title_genres=title_genres,
            cluster_names=cluster_names,
            cluster=cluster,
            regions=regions,
            available=available,
            everywhere=everywhere,
            release_day=_days(t.column("release_date")),
            added_day=_days(t.column("added_date")),
            origin_region=np.asarray(
                [r.upper() if r else None for r in t.column("origin_region").to_pylist()], dtype=object),
            runtime_s=np.asarray(catalog.runtime_s, dtype=np.float64),
            popularity=None if popularity is None else np.asarray(popularity, dtype=np.float32),
        )

    # --- lookups --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_genres(self) -> int:
        return len(self.genre_names)

    def genre_index(self, name: str) -> int:
        """Index of a genre by name (case-insensitive); -1 when the catalog has none."""
        return self._genre_index.get(name.lower(), -1)

    def region_index(self, region: str | None) -> int:
        return -1 if region is None else self._region_index.get(region.upper(), -1)

    def available_in(self, region: str | None) -> np.ndarray:
        """Bool per title: may be shown in ``region`` (None: everywhere-available titles only)."""
        r = self.region_index(region)
        return self.available[r] if r >= 0 else self.everywhere

    def set_popularity(self, popularity: np.ndarray) -> None:
        if len(popularity) != len(self):
            raise InvalidInput(FieldError("popularity", f"expected {len(self)} values, got {len(popularity)}"))
        self.popularity = np.asarray(popularity, dtype=np.float32)
        self._top_by_kind.clear()
        self._top_by_cluster.clear()
        self._top_by_genre.clear()

    def _top(self, cache: dict, key: int, mask_fn, k: int) -> np.ndarray:
        got = cache.get(key)
        if got is None or len(got) < k:
            idx = np.flatnonzero(mask_fn())
            order = np.lexsort((idx, -self.popularity[idx]))
            got = idx[order[:max(k, 64)]].astype(np.int32)
            cache[key] = got
        return got[:k]

    def top_of_kind(self, kind: int, k: int) -> np.ndarray:
        """The ``k`` most popular titles of a kind (cached per model version)."""
        return self._top(self._top_by_kind, kind, lambda: self.kind == kind, k)

    def top_of_cluster(self, cluster: int, k: int) -> np.ndarray:
        return self._top(self._top_by_cluster, cluster, lambda: self.cluster == cluster, k)

    def genre_column(self, genre: int) -> np.ndarray:
        """Bool per title: has genre ``genre``. A row of the multi-hot's transpose, copied once per
        model version (2.8 MB at 100 K titles and 28 genres): a page's genre rows gather their
        candidates from one contiguous 100 KB column instead of from strided rows spread over the
        whole multi-hot, a cache line per title."""
        if self._genre_columns is None:
            self._genre_columns = np.ascontiguousarray(self.genre_multi_hot.T)
        return self._genre_columns[genre]

    def top_of_genre(self, genre: int, k: int) -> np.ndarray:
        return self._top(self._top_by_genre, genre, lambda: self.genre_multi_hot[:, genre], k)

    def genre_display(self, g: int) -> str:
        return display_genre(self.genre_names[g])


def display_genre(name: str) -> str:
    """'k-drama' -> 'K-drama', 'sci-fi' -> 'Sci-fi'."""
    return name[:1].upper() + name[1:]


def affinities(features: CatalogFeatures, positives: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Kind (U, 3) and genre (U, G) affinity of many users at once: the sums of their positive
    weights (a user x title matrix in catalog order, e.g. ``InteractionMatrix.positives``)."""
    positives = sp.csr_matrix(positives)
    if positives.shape[1] != len(features):
        raise InvalidInput(FieldError("positives", f"expected {len(features)} columns, got {positives.shape[1]}"))
    onehot = sp.csr_matrix((np.ones(len(features), np.float32), (np.arange(len(features)),
                           np.clip(features.kind, 0, 2))), shape=(len(features), 3))
    kind = np.asarray((positives @ onehot).todense(), dtype=np.float64)
    genre = np.asarray((positives @ sp.csr_matrix(features.genre_multi_hot.astype(np.float32))).todense(),
                       dtype=np.float64)
    return kind, genre


def _ints(name: str, v, n_titles: int | None = None) -> np.ndarray:
    a = np.asarray(v if v is not None else [], dtype=np.int64).ravel()
    if n_titles is not None and a.size and (a.min() < 0 or a.max() >= n_titles):
        raise InvalidInput(FieldError(name, f"title indices must lie in [0, {n_titles})"))
    return a


@dataclass
class UserProfile:
    """What composition knows about one user. Title fields are catalog indices.

    ``in_progress`` and ``recent_positives`` are newest first. ``impressions`` are titles ever
    shown (for novelty). ``finished`` titles are excluded unless ``rewatcher``. ``n_engaged`` is the
    number of titles the user engaged with; it drives the cold-start blend.
    """

    user_id: str
    region: str | None = None
    kind_affinity: np.ndarray = field(default_factory=lambda: np.zeros(3))
    genre_affinity: np.ndarray | None = None
    impressions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    thumbs_down: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    finished: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rewatcher: bool = False
    in_progress: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recent_positives: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_engaged: int = 0
    onboarding_genres: Sequence[str] = ()
    device: str | None = None
    hour: int | None = None

    def validated(self, features: CatalogFeatures) -> "UserProfile":
        """A copy with arrays coerced and checked.

        Raises:
            InvalidInput: each bad field (wrong length, index out of range, bad hour).
        """
        n = len(features)
        errs: list[FieldError] = []
        names = ("impressions", "thumbs_down", "finished", "in_progress", "recent_positives")
        out = {name: _ints(name, getattr(self, name)) for name in names}
        every = np.concatenate(list(out.values()))
        if every.size and (every.min() < 0 or every.max() >= n):  # one range check; then name the fields
            for name in names:
                try:
                    _ints(name, out[name], n)
                except InvalidInput as e:
                    errs.extend(e.errors)
        ka = np.asarray(self.kind_affinity, dtype=np.float64).ravel()
        if ka.shape != (3,) or not np.isfinite(ka).all() or (ka < 0).any():
            errs.append(FieldError("kind_affinity", "must be 3 finite non-negative numbers"))
        ga = (np.zeros(features.n_genres) if self.genre_affinity is None
              else np.asarray(self.genre_affinity, dtype=np.float64).ravel())
        if ga.shape != (features.n_genres,) or not np.isfinite(ga).all():
            errs.append(FieldError("genre_affinity", f"must be {features.n_genres} finite numbers"))
        if self.hour is not None and not 0 <= int(self.hour) <= 23:
            errs.append(FieldError("hour", "must be in 0..23"))
        if self.n_engaged < 0:
            errs.append(FieldError("n_engaged", "must be >= 0"))
        if errs:
            raise InvalidInput(errs)
        return UserProfile(self.user_id, self.region.upper() if self.region else None, ka, ga,
                           out["impressions"], out["thumbs_down"], out["finished"], self.rewatcher,
                           out["in_progress"], out["recent_positives"], int(self.n_engaged),
                           tuple(g.lower() for g in self.onboarding_genres), self.device, self.hour)

    def excluded(self) -> np.ndarray:
        """Titles never to recommend: thumbs down, and finished unless the user rewatches."""
        parts = [self.thumbs_down] + ([] if self.rewatcher else [self.finished])
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


@dataclass
class Candidates:
    """One user's ranked candidates: title indices, scores (higher is better), source codes and,
    for co-visitation candidates, the recent title that led to them (-1 otherwise)."""

    titles: np.ndarray
    scores: np.ndarray
    sources: np.ndarray | None = None
    anchors: np.ndarray | None = None

    @classmethod
    def of(cls, titles, scores, sources=None, anchors=None) -> "Candidates":
        """Build from lists; ``sources`` may be names from ``SOURCES`` or codes.

        Raises:
            InvalidInput: unknown source name, mismatched lengths.
        """
        titles = np.asarray(titles, dtype=np.int64).ravel()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if sources is None:
            src = np.zeros(len(titles), np.uint8)
        else:
            sources = list(sources) if not isinstance(sources, np.ndarray) else sources
            if len(sources) and isinstance(sources[0], str):
                bad = [i for i, s in enumerate(sources) if s not in SOURCE]
                if bad:
                    raise InvalidInput([FieldError("sources", f"unknown source {sources[i]!r}; one of "
                                                   f"{', '.join(SOURCES)}", index=i) for i in bad[:5]])
                src = np.asarray([SOURCE[s] for s in sources], np.uint8)
            else:
                src = np.asarray(sources, dtype=np.uint8)
        anc = (np.full(len(titles), -1, np.int64) if anchors is None
               else np.asarray(anchors, dtype=np.int64).ravel())
        return cls(titles, scores, src, anc)

    def validated(self, n_titles: int) -> "Candidates":
        """Checked copy. Raises InvalidInput naming the field and the reason."""
        c = Candidates.of(self.titles, self.scores, self.sources, self.anchors)
        errs = []
        n = len(c.titles)
        for name in ("scores", "sources", "anchors"):
            if len(getattr(c, name)) != n:
                errs.append(FieldError(name, f"expected {n} values (one per title), got {len(getattr(c, name))}"))
        if n and (c.titles.min() < 0 or c.titles.max() >= n_titles):
            errs.append(FieldError("titles", f"title indices must lie in [0, {n_titles})"))
        if len(c.scores) == n and not np.isfinite(c.scores).all():
            errs.append(FieldError("scores", "must be finite"))
        if len(c.sources) == n and n and c.sources.max() >= len(SOURCES):
            errs.append(FieldError("sources", f"codes must lie in [0, {len(SOURCES)})"))
        if len(c.anchors) == n and n and (c.anchors.max() >= n_titles or c.anchors.min() < -1):
            errs.append(FieldError("anchors", f"must be -1 or a title index in [0, {n_titles})"))
        if errs:
            raise InvalidInput(errs)
        return c

    def __len__(self) -> int:
        return len(self.titles)


class Marks:
    """Per-user title flags over the catalog: excluded, claimed by a shelf, ever shown.

    One byte per title (100 KB for 100 K titles, zero-filled lazily by the allocator), so that rule 1
    and novelty are array lookups instead of set intersections.
    """

    EXCLUDED, CLAIMED, SHOWN = 1, 2, 4

    def __init__(self, features: CatalogFeatures, profile: UserProfile):
        self.flags = np.zeros(len(features), np.uint8)
        self.flags[profile.thumbs_down] |= self.EXCLUDED
        if not profile.rewatcher:
            self.flags[profile.finished] |= self.EXCLUDED
        self.flags[profile.impressions] |= self.SHOWN
        self.available = features.available_in(profile.region)

    def eligible(self, titles: np.ndarray) -> np.ndarray:
        """Available in the region, not excluded and not yet on a personal shelf."""
        return self.available[titles] & ((self.flags[titles] & (self.EXCLUDED | self.CLAIMED)) == 0)

    def claim(self, titles: np.ndarray) -> None:
        self.flags[titles] |= self.CLAIMED

    _SCRATCH = 8  # set only while ``among`` runs

    def among(self, titles: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Bool per title of ``titles``: is it one of ``others`` (``np.isin``, by a flag bit set
        and cleared again: three lookups instead of a sort)."""
        self.flags[others] |= self._SCRATCH
        got = (self.flags[titles] & self._SCRATCH) != 0
        self.flags[others] &= np.uint8(0xFF ^ self._SCRATCH)
        return got

    def novel(self, titles: np.ndarray) -> np.ndarray:
        return (self.flags[titles] & self.SHOWN) == 0
