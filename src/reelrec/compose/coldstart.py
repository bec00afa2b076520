"""Cold start and the blend from cold-start to personal.

A user with no events gets candidates from priors instead of the ranker: regional popularity, the
genres picked at onboarding (3-5), and device / region / time-of-day priors (on a phone late in the
evening, shorter titles and titles from the user's own region rise). Scores over the catalog are
computed once per segment (region, device, hour band) and cached, so a cold-start page costs
O(pool), not O(catalog), per user.

As history grows the page blends: with ``n`` engaged titles, ``w = min(1, n / personal_after)``
(default 5), and the two ranked lists are interleaved by weight: a title scores
``w / (personal rank + 1) + (1 - w) / (cold rank + 1)``, so about a share w of the top picks is
personal. At n = 0 the page is the cold-start page, from n = 5 fully personal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reelrec.compose.config import ComposeConfig
from reelrec.compose.features import SOURCE, SERIES, CatalogFeatures, Candidates, UserProfile, pack_words

# hour bands: late evening is when phones lean to short and local titles
BANDS = ("night", "morning", "day", "evening", "late")


def hour_band(hour: int | None) -> str:
    if hour is None:
        return "day"
    h = int(hour) % 24
    if h < 5:
        return "night"
    if h < 10:
        return "morning"
    if h < 18:
        return "day"
    if h < 21:
        return "evening"
    return "late"


@dataclass(frozen=True)
class Prior:
    """Bonuses added to a title's (0, 1] popularity score in one segment."""

    short: float = 0.0  # runtime (one episode for a series) of 45 minutes or less
    long: float = 0.0  # a film of 100 minutes or more
    regional: float = 0.0  # the title comes from the user's region
    series: float = 0.0


DEVICE_PRIORS = {
    "mobile": Prior(short=0.25, regional=0.10),
    "tablet": Prior(short=0.10, series=0.05),
    "tv": Prior(long=0.15),
    "web": Prior(),
}
BAND_PRIORS = {
    "night": Prior(short=0.10),
    "morning": Prior(short=0.10),
    "day": Prior(),
    "evening": Prior(long=0.05, regional=0.05),
    "late": Prior(regional=0.20, short=0.10, series=0.05),
}


def prior_for(device: str | None, hour: int | None) -> Prior:
    d = DEVICE_PRIORS.get((device or "web").lower(), Prior())
    b = BAND_PRIORS[hour_band(hour)]
    return Prior(d.short + b.short, d.long + b.long, d.regional + b.regional, d.series + b.series)


def blend_weight(n_engaged: int, cfg: ComposeConfig | None = None) -> float:
    """How personal the page is: 0 for a new user, 1 from ``personal_after`` engaged titles."""
    cfg = cfg or ComposeConfig()
    return float(min(1.0, max(0, n_engaged) / cfg.personal_after))


def _harmonic(scores: np.ndarray) -> np.ndarray:
    """1 / (rank + 1), rank 0 being the best score."""
    r = np.empty(len(scores))
    r[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return 1.0 / (r + 1.0)


def blend_candidates(personal: Candidates | None, cold: Candidates, w: float) -> Candidates:
    """Weighted interleaving: a title scores ``w / (personal rank + 1) + (1 - w) / (cold rank + 1)``,
    so about a share ``w`` of the top of the list is personal; the pure side at w = 0 or 1."""
    if personal is None or len(personal) == 0 or w <= 0:
        return cold
    if w >= 1:
        return personal
    t = np.concatenate([personal.titles, cold.titles])
    hc = getattr(cold, "_harmonic", None)  # set on ColdStartPriors' cached lists
    s = np.concatenate([w * _harmonic(personal.scores), (1 - w) * (_harmonic(cold.scores) if hc is None else hc)])
    src = np.concatenate([personal.sources, cold.sources])
    anc = np.concatenate([personal.anchors, cold.anchors])
    uniq, inv = np.unique(t, return_inverse=True)
    total = np.bincount(inv, weights=s, minlength=len(uniq))  # the same sums in the same order as np.add.at
    # the source of a title is the side that contributed more
    order = np.lexsort((-s, inv))
    first = order[np.searchsorted(inv[order], np.arange(len(uniq)))]
    return Candidates(uniq, total, src[first], anc[first])


class ColdStartPriors:
    """Cold-start candidates per segment, from popularity (per region when known) and priors.

    ``popularity_by_region`` maps a region to a popularity per title (e.g. recent plays there);
    regions without one use ``features.popularity``.
    """

    def __init__(self, features: CatalogFeatures, popularity_by_region: dict[str, np.ndarray] | None = None,
                 cfg: ComposeConfig | None = None):
        self.features = features
        self.cfg = cfg or ComposeConfig()
        self.pop = {k.upper(): np.asarray(v, np.float64) for k, v in (popularity_by_region or {}).items()}
        self._segments: dict[tuple, Candidates] = {}
        self._picked: dict[tuple, Candidates] = {}  # (segment, onboarding picks) -> candidates
        self._global: tuple[np.ndarray, np.ndarray] | None = None
        self._seg_parts: dict[tuple, tuple] = {}  # per segment: what _with_picks reuses
        self._genre_parts: dict[tuple, tuple] = {}  # (region, genre) -> top titles, their log popularity
        rt = features.runtime_s / 60.0
        self._short = np.nan_to_num(rt, nan=90.0) <= 45.0
        self._long = (features.kind != SERIES) & (np.nan_to_num(rt, nan=0.0) >= 100.0)
        self._series = features.kind == SERIES

    def popularity(self, region: str | None) -> np.ndarray:
        p = self.pop.get((region or "").upper())
        if p is not None:
            return p
        if self._global is None or self._global[0] is not self.features.popularity:
            self._global = (self.features.popularity, self.features.popularity.astype(np.float64))
        return self._global[1]

    def segment(self, region: str | None, device: str | None, hour: int | None) -> Candidates:
        """The top ``cold_pool`` titles of a (region, device, hour band) segment; O(catalog) once."""
        key = ((region or "").upper(), (device or "web").lower(), hour_band(hour))
        got = self._segments.get(key)
        if got is not None:
            return got
        f = self.features
        pr = prior_for(device, hour)
        base = np.log1p(np.clip(self.popularity(region), 0, None))
        base = base / base.max() if base.max() > 0 else base
        regional = (f.origin_region == key[0]) if key[0] else np.zeros(len(f), bool)
        score = (base + pr.short * self._short + pr.long * self._long + pr.series * self._series
                 + pr.regional * regional)
        score = np.where(f.available_in(region), score, -np.inf)
        k = min(self.cfg.cold_pool, int(np.isfinite(score).sum()))
        top = np.argpartition(-score, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.argsort(-score[top], kind="stable")]
        lift = score[top] - base[top]
        src = np.where(regional[top] & (pr.regional > 0), SOURCE["regional"],
                       np.where(lift > 0, SOURCE["regional"], SOURCE["popular"])).astype(np.uint8)
        got = Candidates(top.astype(np.int64), score[top], src, np.full(k, -1, np.int64))
        got._harmonic = _harmonic(got.scores)  # the blend's rank weights, once per segment
        self._segments[key] = got
        return got

    def candidates(self, profile: UserProfile) -> Candidates:
        """A user's cold-start candidates: the segment's pool plus the best titles of the genres
        picked at onboarding, which rise above the rest."""
        seg = self.segment(profile.region, profile.device, profile.hour)
        picks = [g for g in (self.features.genre_index(x) for x in profile.onboarding_genres) if g >= 0]
        if not picks:
            return seg
        key = ((profile.region or "").upper(), (profile.device or "web").lower(), hour_band(profile.hour),
               tuple(picks))
        got = self._picked.get(key)
        if got is None:
            if len(self._picked) >= 4096:  # picks make many segments: keep the cache bounded
                self._picked.clear()
            # no cached rank weights (``_harmonic``): picks make nearly a key per user, and only
            # users part way to a personal page blend
            got = self._picked[key] = self._with_picks(seg, profile.region, picks)
        return got

    def _with_picks(self, seg: Candidates, region: str | None, picks: list[int]) -> Candidates:
        """The segment's pool, then the 40 most popular titles of each picked genre not already in
        it (scored by their normalised log popularity), and every title of a picked genre lifted
        by 1. What does not depend on the picks (the segment's log popularity, genres and title
        set; each genre's top titles) is kept per segment and per (region, genre)."""
        f = self.features
        pop = self.popularity(region)
        sk = ((region or "").upper(), id(seg))
        got = self._seg_parts.get(sk)
        if got is None or got[0] is not seg or got[1] is not pop:
            if len(self._seg_parts) >= 1024:
                self._seg_parts.clear()
            raw = np.log1p(np.clip(pop[seg.titles], 0, None))
            member = np.zeros(len(f), bool)
            member[seg.titles] = True
            got = self._seg_parts[sk] = (seg, pop, raw.max() if len(raw) else None, f.genre_words[seg.titles],
                                         member)
        _, _, seg_max, seg_words, member = got
        parts = [self._genre_top(region, g) for g in picks]
        extra = np.concatenate([p[0] for p in parts])
        raw = np.concatenate([p[1] for p in parts])
        # the first occurrence of each title, the segment's first (its titles are distinct)
        _, first = np.unique(extra, return_index=True)
        keep = np.sort(first[~member[extra[first]]])
        top = raw.max() if len(raw) else None
        m = top if seg_max is None else (seg_max if top is None else max(seg_max, top))
        base = raw[keep]
        base = base / m if m is not None and m > 0 else base
        extra = extra[keep]
        wanted = np.zeros(f.n_genres, bool)
        wanted[picks] = True
        # a title of a picked genre: one AND of genre words per title
        matched = (np.concatenate([seg_words, f.genre_words[extra]]) & pack_words(wanted)[0]).any(axis=1)
        t = np.concatenate([seg.titles, extra])
        s = np.concatenate([seg.scores, base]) + 1.0 * matched
        src = np.concatenate([seg.sources, np.full(len(extra), SOURCE["popular"], np.uint8)])
        src = np.where(matched, SOURCE["onboarding"], src).astype(np.uint8)
        return Candidates(t, s, src, np.full(len(t), -1, np.int64))

    def _genre_top(self, region: str | None, g: int) -> tuple[np.ndarray, np.ndarray]:
        """The 40 most popular titles of genre ``g`` and their log popularity in ``region``."""
        pop = self.popularity(region)
        key = ((region or "").upper(), g)
        got = self._genre_parts.get(key)
        if got is None or got[0] is not pop or got[1] is not self.features.popularity:
            t = self.features.top_of_genre(g, 40).astype(np.int64)  # follows the catalog's popularity
            got = self._genre_parts[key] = (pop, self.features.popularity, t, np.log1p(np.clip(pop[t], 0, None)))
        return got[2], got[3]
