"""The homepage: an ordered list of shelves, each with its own rules and length.

Personal shelves are composed per user; shared shelves (Trending in <region>, Top 10, New
releases, Top 10 worldwide) are composed once per region and referenced by key, so the cache
stores them once (DESIGN.md, cache write). A title appears at most once across the personal
shelves; the shelves claim titles in this order of precedence:
  1. Continue watching (in progress, newest first: the user's own unfinished titles)
  2. Top picks for you (``reelrec.compose.toppicks``)
  3. Because you watched X (neighbours of the most recent strong positives, X named)
  4. genre rows for the user's top genres ("Thrillers for you"), or the onboarding picks
  5. the row for the user's least-watched kind ("Documentaries for you")
Shared shelves are the same for everyone in a region and are not deduplicated against the personal
ones; the page lists the user's exclusions that appear in them (``hidden``) so that they are
dropped when the page is assembled. Genre caps hold on every shelf except Continue watching (the
user's own titles), Top 10 (a chart) and a genre row's own genre; a shelf of n items allows
ceil(genre_cap * n / page_size) items per genre.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from reelrec.compose import reasons as R
from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.coldstart import ColdStartPriors, blend_candidates, blend_weight
from reelrec.compose.config import ComposeConfig
from reelrec.compose.features import EPOCH, CatalogFeatures, Candidates, Marks, UserProfile
from reelrec.compose.rows import dedupe_keep_order, fill_row
from reelrec.compose.toppicks import select_top_picks
from reelrec.errors import FieldError, InvalidInput

# shelf types (stored in the page codec)
TOP_PICKS, CONTINUE, BECAUSE, GENRE, KIND, ONBOARDING, TRENDING, TOP10, NEW, TOP10_GLOBAL = range(10)
SHARED_TYPES = (TRENDING, TOP10, NEW, TOP10_GLOBAL)
SHARED_NAMES = {TRENDING: "trending", TOP10: "top10", NEW: "new", TOP10_GLOBAL: "top10-global"}
KIND_IDS = ("movies", "series", "documentaries")
MODES = ("personal", "cold_start", "fallback")
MIN_ROW = 4  # a personal row with fewer items is not shown


@functools.lru_cache(maxsize=4096)  # a few keys per region, formatted on every page
def shared_key(shelf_type: int, region: str | None) -> str:
    """Cache key of a shared shelf (the cache adds the model version): ``trending:IN``."""
    return f"{SHARED_NAMES[shelf_type]}:{(region or 'global').upper()}"


def shared_keys(region: str | None) -> list[str]:
    """Every shared shelf a page in ``region`` may reference: one MGET with the user's page."""
    return [shared_key(t, region) for t in SHARED_TYPES]


@dataclass
class Shelf:
    """One shelf of a composed page. Per-item arrays are None where the shelf does not carry them:
    a shelf-level reason (``reason``, ``reason_arg``) then explains every item."""

    type: int
    titles: np.ndarray
    arg: int = -1  # anchor title (BECAUSE), genre (GENRE, ONBOARDING), kind (KIND)
    slots: np.ndarray | None = None
    reasons: np.ndarray | None = None
    reason_args: np.ndarray | None = None
    scores: np.ndarray | None = None
    reason: int = R.AFFINITY
    reason_arg: int = -1
    key: str | None = None  # shared shelves: the cache key of their items

    @property
    def shared(self) -> bool:
        return self.type in SHARED_TYPES


@dataclass
class ComposedPage:
    user_id: str
    mode: str
    region: str | None
    generated_at: dt.datetime
    shelves: list[Shelf]
    hidden: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exact: bool = False  # top picks needed the exact solver (not stored in the cache)

    def personal_titles(self) -> np.ndarray:
        parts = [s.titles for s in self.shelves if not s.shared]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    @property
    def top_picks(self) -> Shelf:
        return self.shelves[0]


@dataclass
class SharedShelf:
    """A shelf composed once per region (Trending, Top 10, New releases)."""

    type: int
    region: str | None
    titles: np.ndarray

    @property
    def key(self) -> str:
        return shared_key(self.type, self.region)


def _top_k(score: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    s = np.where(mask, score, -np.inf)
    k = min(k, int(np.isfinite(s).sum()))
    if k == 0:
        return np.zeros(0, np.int64)
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.lexsort((top, -s[top]))].astype(np.int64)


def build_shared_shelves(features: CatalogFeatures, region: str | None, *, today: dt.date,
                         trending: np.ndarray | None = None, popularity: np.ndarray | None = None,
                         cfg: ComposeConfig | None = None) -> dict[str, SharedShelf]:
    """Trending in <region>, Top 10 (region, then global), New releases, Top 10 worldwide.

    ``trending`` and ``popularity`` are per-title scores for the region (from the batch or speed
    layer's counters); without them the catalog's global popularity is used.
    """
    cfg = cfg or ComposeConfig()
    n = len(features)
    for name, v in (("trending", trending), ("popularity", popularity)):
        if v is not None and len(v) != n:
            raise InvalidInput(FieldError(name, f"expected {n} values, got {len(v)}"))
    L = cfg.shelf_length
    cap = cfg.genre_cap_for(L)
    avail = features.available_in(region)
    glob = features.popularity.astype(np.float64)
    pop = glob if popularity is None else np.asarray(popularity, np.float64)
    trend = pop if trending is None else np.asarray(trending, np.float64)
    out: list[SharedShelf] = []
    out.append(SharedShelf(TRENDING, region, fill_row(features, _top_k(trend, avail & (trend > 0), 8 * L), L, cap)))
    top = _top_k(pop, avail & (pop > 0), 10)
    if len(top) < 10:  # a region with too little data: the global chart fills the rest
        more = _top_k(glob, avail & ~np.isin(np.arange(n), top), 10 + len(top))
        top = np.concatenate([top, more[~np.isin(more, top)]])[:10]
    out.append(SharedShelf(TOP10, region, top))
    today_day = (today - EPOCH).days
    fresh = avail & (features.added_day <= today_day) & (features.added_day > today_day - cfg.new_release_days)
    order = np.flatnonzero(fresh)
    order = order[np.lexsort((-glob[order], -features.added_day[order]))]
    out.append(SharedShelf(NEW, region, fill_row(features, order[: 8 * L], L, cap)))
    out.append(SharedShelf(TOP10_GLOBAL, region, _top_k(glob, avail, 10)))
    return {s.key: s for s in out}


SHARED_REASONS = {TRENDING: R.TRENDING, TOP10: R.TOP10, NEW: R.NEW_RELEASE, TOP10_GLOBAL: R.TOP10_GLOBAL}


def shared_shelf_view(s: SharedShelf) -> Shelf:
    return Shelf(type=s.type, titles=s.titles, reason=SHARED_REASONS[s.type], key=s.key)


def compose_page(features: CatalogFeatures, profile: UserProfile, candidates: Candidates | None = None, *,
                 cfg: ComposeConfig | None = None, bandit: ThompsonBandit | None = None,
                 rng: np.random.Generator | None = None,
                 neighbours: Mapping[int, np.ndarray] | None = None,
                 cold: ColdStartPriors | None = None,
                 shared: Mapping[str, SharedShelf] | None = None,
                 now: dt.datetime | None = None) -> ComposedPage:
    """Compose one user's homepage.

    ``candidates`` are the ranker's (None for a user the ranker does not know); ``neighbours`` maps a
    title to its ranked neighbour titles (co-visitation or embedding neighbours); ``cold`` gives
    cold-start candidates and is needed when the user has fewer than ``personal_after`` engaged
    titles; ``shared`` holds the region's shared shelves (to list the user's exclusions in them).

    Raises:
        InvalidInput: a bad profile or candidate field (named), or a new user without ``cold``.
    """
    cfg = cfg or ComposeConfig()
    rng = rng if rng is not None else np.random.default_rng()
    profile = profile.validated(features)
    n = len(features)
    if candidates is not None:
        candidates = candidates.validated(n)
    w = blend_weight(profile.n_engaged, cfg)
    if w < 1 or candidates is None:
        if cold is None:
            raise InvalidInput(FieldError("cold", "a user with few engaged titles needs cold-start priors"))
        candidates = blend_candidates(candidates, cold.candidates(profile), w if candidates is not None else 0.0)
    mode = "personal" if profile.n_engaged > 0 else "cold_start"
    eff = _effective_profile(features, profile, w)

    # 1. continue watching: the user's own unfinished titles, newest first
    marks = Marks(features, eff)
    cw = dedupe_keep_order(profile.in_progress)
    cw = cw[marks.eligible(cw)][: cfg.continue_length] if len(cw) else cw
    marks.claim(cw)
    # 2. top picks
    order = np.argsort(-candidates.scores, kind="stable")
    sel = select_top_picks(features, eff, candidates, cfg, bandit, rng, marks=marks, order=order)
    top = Shelf(TOP_PICKS, sel.titles, slots=sel.slots, reasons=sel.reasons, reason_args=sel.reason_args,
                scores=sel.scores)
    marks.claim(sel.titles)
    L = cfg.shelf_length
    cap = cfg.genre_cap_for(L)
    ranked = candidates.titles[order]

    def row(pref: np.ndarray, exempt: int = -1) -> np.ndarray:
        pref = pref[marks.eligible(pref)] if len(pref) else pref
        got = fill_row(features, pref, L, cap, exempt)
        if len(got) < MIN_ROW:
            return got[:0]
        marks.claim(got)
        return got

    # 3. because you watched X
    because: list[Shelf] = []
    for anchor in dedupe_keep_order(profile.recent_positives):
        if len(because) >= cfg.because_rows or neighbours is None:
            break
        nb = neighbours.get(int(anchor))
        if nb is None or len(nb) == 0:
            continue
        nb = np.asarray(nb, np.int64)
        got = row(nb[(nb >= 0) & (nb < n) & (nb != anchor)])
        if len(got):
            because.append(Shelf(BECAUSE, got, arg=int(anchor), reason=R.BECAUSE, reason_arg=int(anchor)))
    # 4. genre rows: the user's top genres, or the onboarding picks of a new user
    genre_shelves: list[Shelf] = []
    picks = [g for g in (features.genre_index(x) for x in profile.onboarding_genres) if g >= 0]
    if w == 0 and picks:
        genres, stype, why = picks[: cfg.onboarding_max], ONBOARDING, R.ONBOARDING
    else:
        ga = eff.genre_affinity
        genres = [int(g) for g in np.argsort(-ga, kind="stable") if ga[g] > 0]
        stype, why = GENRE, R.AFFINITY
    for g in genres:
        if len(genre_shelves) >= (cfg.genre_rows if stype == GENRE else cfg.onboarding_max):
            break
        pref = np.concatenate([ranked[features.genre_column(g)[ranked]], features.top_of_genre(g, 4 * L)])
        got = row(pref, exempt=g)
        if len(got):
            genre_shelves.append(Shelf(stype, got, arg=g, reason=why, reason_arg=g))
    # 5. the least-watched kind
    kind_shelves: list[Shelf] = []
    if cfg.kind_row and profile.n_engaged > 0:
        k = int(np.argmin(profile.kind_affinity[::-1]))
        k = 2 - k  # ties go to documentaries
        pref = np.concatenate([ranked[features.kind[ranked] == k], features.top_of_kind(k, 4 * L)])
        got = row(pref)
        if len(got):
            kind_shelves.append(Shelf(KIND, got, arg=k, reason=R.KIND, reason_arg=k))

    region = profile.region
    if mode == "cold_start":
        shared_types = [TRENDING, TOP10_GLOBAL, NEW]
    else:
        shared_types = [TRENDING, TOP10, NEW]
    sh = {t: Shelf(type=t, titles=np.zeros(0, np.int64), key=shared_key(t, region)) for t in shared_types}
    hidden = np.zeros(0, np.int64)
    if shared is not None:
        for t, s in sh.items():
            got = shared.get(s.key)
            if got is not None:
                s.titles = got.titles
                s.reason = SHARED_REASONS[got.type]
        shown = np.concatenate([s.titles for s in sh.values()])
        # exclusions only: titles claimed by personal shelves may repeat on shared ones
        bad = ~marks.available[shown] | ((marks.flags[shown] & Marks.EXCLUDED) != 0) if len(shown) else []
        if len(shown):  # sorted and distinct, as np.unique (a set is cheaper on a few dozen titles)
            hidden = np.asarray(sorted(set(shown[bad].tolist())), dtype=shown.dtype)
    shelves = [top]
    if len(cw):
        shelves.append(Shelf(CONTINUE, cw, reason=R.CONTINUE))
    shelves += because[:1] + [sh[TRENDING]]
    shelves += [sh[TOP10] if TOP10 in sh else sh[TOP10_GLOBAL]]
    shelves += because[1:] + [sh[NEW]] + genre_shelves + kind_shelves
    return ComposedPage(user_id=profile.user_id, mode=mode, region=region,
                        generated_at=now or dt.datetime.now(dt.timezone.utc), shelves=shelves, hidden=hidden,
                        exact=sel.exact)


def _effective_profile(features: CatalogFeatures, profile: UserProfile, w: float) -> UserProfile:
    """The profile composition works with: onboarding picks stand in for taste while history is thin."""
    picks = [g for g in (features.genre_index(x) for x in profile.onboarding_genres) if g >= 0]
    if w >= 1 or not picks:
        return profile
    ga = profile.genre_affinity
    onb = np.zeros(features.n_genres)
    onb[picks] = 1.0
    ga_n = ga / ga.max() if ga.max() > 0 else ga
    return UserProfile(**{**profile.__dict__, "genre_affinity": w * ga_n + (1 - w) * onb})


def compose_fallback(features: CatalogFeatures, user_id: str, region: str | None,
                     shared: Mapping[str, SharedShelf], now: dt.datetime | None = None,
                     cfg: ComposeConfig | None = None) -> ComposedPage:
    """A page from the region's shared shelves alone (mode ``fallback``), for when a user's own page
    cannot be had: top picks are the region's top 10 then its trending titles."""
    cfg = cfg or ComposeConfig()
    parts = [shared[k].titles for k in (shared_key(TOP10, region), shared_key(TRENDING, region),
                                        shared_key(TOP10_GLOBAL, region)) if k in shared]
    top = dedupe_keep_order(np.concatenate(parts))[: cfg.page_size] if parts else np.zeros(0, np.int64)
    n = len(top)
    shelves = [Shelf(TOP_PICKS, top, slots=np.zeros(n, np.uint8), reasons=np.full(n, R.POPULAR, np.uint8),
                     reason_args=np.full(n, -1, np.int64), scores=np.linspace(1.0, 0.0, n) if n else np.zeros(0))]
    shelves += [Shelf(type=t, titles=shared[shared_key(t, region)].titles if shared_key(t, region) in shared
                      else np.zeros(0, np.int64), key=shared_key(t, region)) for t in (TRENDING, TOP10, NEW)]
    return ComposedPage(user_id=user_id, mode="fallback", region=region,
                        generated_at=now or dt.datetime.now(dt.timezone.utc), shelves=shelves)
