"""Top picks for you: the ranked candidates turned into a page of 20 that respects the rules.

Order of precedence (docs/composition.md): when the rules cannot all hold, the later ones give way.
  1. exclusions: thumbs down, finished (unless a rewatcher), unavailable in the region, titles in
     Continue watching, duplicates. Never relaxed: a short page is better than a wrong title.
  2. page length: min(page_size, eligible titles); a slot is never left empty while an eligible
     title remains.
  3. kind mix: each kind within one slot of share * n (``reelrec.compose.mix``).
  4. genre cap: no genre on more than ``genre_cap`` items (a multi-genre title counts for each).
  5. novelty: ``novel_slots`` items never shown to the user (slot kind ``novel``).
  6. exploration: ``explore_share`` of the items (3 of 20) outside the user's dominant genres,
     from the genre clusters with the highest Thompson draws (slot kind ``explore``).
Within those rules the page maximises the ranker's score (exploit and novel slots) and the
bandit's draw (explore slots).

A greedy pass over the score-sorted pool fills explore, novel, then exploit slots under the kind
quotas and genre cap. Its shortfall on each rule is compared with a
lower bound; when the greedy page is not provably best (rare: tiny or lopsided pools) an exact
integer program (HiGHS via ``scipy.optimize.milp``) with lexicographic penalties in the order above
decides. So each rule holds whenever it can hold together with the rules above it. When a full page
still breaks the genre cap, the pool may be what is narrow (a kind's ranked titles nearly all of one
genre): the most popular eligible titles of each kind outside the overflowing genres join the pool
and the page is chosen again, kept if it is better by the same order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from reelrec.compose import reasons as R
from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.config import ComposeConfig
from reelrec.compose.features import SOURCE, CatalogFeatures, Candidates, Marks, UserProfile
from reelrec.compose.mix import kind_bounds, kind_quotas, kind_shares, least_kind_deviation
from reelrec.log import get_logger

log = get_logger(__name__)

EXPLOIT, EXPLORE, NOVEL = 0, 1, 2
SLOT_KINDS: tuple[str, ...] = ("exploit", "explore", "novel")
_COVISIT, _ONBOARDING = SOURCE["covisit"], SOURCE["onboarding"]
GENRE_BACKFILL_DEPTH = 2000  # popular titles per kind searched for ones outside an overflowing genre
_SOURCE_REASON = {SOURCE["trending"]: R.TRENDING, SOURCE["new"]: R.NEW_RELEASE, SOURCE["popular"]: R.POPULAR,
                  SOURCE["regional"]: R.PRIOR}


@dataclass
class Pool:
    """The eligible candidates of one user, sorted by score (best first), with per-item features."""

    t: np.ndarray  # title indices
    score: np.ndarray
    src: np.ndarray
    anchor: np.ndarray
    kind: np.ndarray
    gw: np.ndarray  # genre words
    novel: np.ndarray  # never shown
    explore_ok: np.ndarray  # outside the dominant genres
    theta: np.ndarray  # the bandit's draw for the title's cluster
    cluster: np.ndarray
    catalog_mh: np.ndarray = field(repr=False)  # the catalog's genre multi-hot, read by ``mh``

    def __len__(self) -> int:
        return len(self.t)

    @functools.cached_property
    def mh(self) -> np.ndarray:
        """Genre multi-hot of the pool's titles (n, G): only the exact solver and the genre
        backfill read it, so it is gathered on first use."""
        return self.catalog_mh[self.t]


@dataclass
class Selection:
    """Top picks in page order."""

    titles: np.ndarray
    slots: np.ndarray  # uint8: EXPLOIT / EXPLORE / NOVEL
    scores: np.ndarray
    reasons: np.ndarray  # uint8 reason codes
    reason_args: np.ndarray  # int64
    penalty: tuple[int, int, int, int]  # kind deviation, genre overflow, novel and explore shortfall
    target: np.ndarray  # real-valued kind target (3,)
    exact: bool = False

    def __len__(self) -> int:
        return len(self.titles)


def dominant_genres(profile: UserProfile, cfg: ComposeConfig) -> np.ndarray:
    """The user's top genres (positive affinity only)."""
    ga = profile.genre_affinity
    if ga is None or cfg.dominant_genres == 0 or not (ga > 0).any():
        return np.zeros(0, np.int64)
    top = np.argsort(-ga, kind="stable")[: cfg.dominant_genres]
    return top[ga[top] > 0]


def eligible_mask(features: CatalogFeatures, profile: UserProfile, titles: np.ndarray,
                  claimed: np.ndarray | None = None) -> np.ndarray:
    """Rule 1 for a batch of titles: available in the region and neither excluded nor claimed."""
    marks = Marks(features, profile)
    if claimed is not None and len(claimed):
        marks.claim(np.asarray(claimed, np.int64))
    return marks.eligible(titles)


def build_pool(features: CatalogFeatures, profile: UserProfile, cands: Candidates, cfg: ComposeConfig,
               theta_by_cluster: np.ndarray, claimed: np.ndarray | None = None,
               marks: Marks | None = None, order: np.ndarray | None = None) -> Pool:
    """Deduplicate, apply exclusions, and add popular backfill for missing kinds and explore clusters.

    Backfilled titles score below every ranked candidate, in popularity order. ``order`` is
    ``np.argsort(-cands.scores, kind="stable")`` when the caller has it already.
    """
    if marks is None:
        marks = Marks(features, profile)
        if claimed is not None and len(claimed):
            marks.claim(np.asarray(claimed, np.int64))
    n_page = cfg.page_size
    if order is None:
        order = np.argsort(-cands.scores, kind="stable")
    t, s = cands.titles[order], cands.scores[order]
    src, anc = cands.sources[order], cands.anchors[order]
    st = np.sort(t)
    if len(t) > 1 and not (st[1:] != st[:-1]).all():  # duplicates: keep each title's best
        _, first = np.unique(t, return_index=True)
        keep = np.sort(first)
        t, s, src, anc = t[keep], s[keep], src[keep], anc[keep]
    ok = marks.eligible(t)
    t, s, src, anc = t[ok], s[ok], src[ok], anc[ok]

    dom_words = _words(dominant_genres(profile, cfg), features.n_genres)
    parts = _title_parts(features, t, dom_words)  # the pool's per-title features, gathered once
    extra = []
    shares = kind_shares(profile.kind_affinity, cfg)
    have = np.bincount(parts[0], minlength=3)
    need = np.ceil(shares * n_page).astype(int) + 1
    for k in np.flatnonzero(have < need):
        extra.append(features.top_of_kind(int(k), cfg.backfill_per_kind))
    n_e = cfg.explore_slots(n_page)
    if n_e and cfg.explore_pool:
        # enough distinct explore clusters in the ranked pool: no backfill needed
        if np.count_nonzero(np.bincount(parts[2][parts[3]])) < n_e + 2:
            for c in np.argsort(-theta_by_cluster)[: n_e + 3]:
                extra.append(features.top_of_cluster(int(c), cfg.explore_pool))
    if extra:
        e = np.concatenate(extra).astype(np.int64)
        _, fi = np.unique(e, return_index=True)
        e = e[np.sort(fi)]
        e = e[marks.eligible(e)]
        e = e[~marks.among(e, t)]
        if len(e):
            t, s, src, anc = _append_popular(t, s, src, anc, e)
            parts = tuple(np.concatenate([a, b]) for a, b in zip(parts, _title_parts(features, e, dom_words)))
    return _make_pool(features, marks, t, s, src, anc, dom_words, theta_by_cluster, parts)


def _title_parts(features: CatalogFeatures, t: np.ndarray, dom_words: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kind (int64), genre words, cluster and "outside the dominant genres" of titles ``t``: what
    the pool keeps per title. ``build_pool`` reads them to decide on backfill and hands them to
    the pool, instead of gathering them from the catalog's arrays twice (at 100 K titles a gather
    costs a cache line per title)."""
    gw = features.genre_words[t]
    return features.kind[t].astype(np.int64), gw, features.cluster[t], ~((gw & dom_words).any(axis=1))


def _append_popular(t, s, src, anc, e: np.ndarray) -> tuple[np.ndarray, ...]:
    """Titles ``e`` after the pool's, in their order, scored below every pool title and tagged
    as popular backfill (no anchor)."""
    base = (s.min() if len(s) else 0.0) - 1.0
    return (np.concatenate([t, e]), np.concatenate([s, base - np.arange(len(e)) / len(e)]),
            np.concatenate([src, np.full(len(e), SOURCE["popular"], np.uint8)]),
            np.concatenate([anc, np.full(len(e), -1, np.int64)]))


def _make_pool(features: CatalogFeatures, marks: Marks, t, s, src, anc, dom_words: np.ndarray,
               theta_by_cluster: np.ndarray, parts: tuple[np.ndarray, ...] | None = None) -> Pool:
    """The Pool of titles ``t`` with their scores, sources and anchors: per-title features
    (``parts``: ``_title_parts`` of ``t`` when the caller has them)."""
    kind, gw, cl, outside = _title_parts(features, t, dom_words) if parts is None else parts
    return Pool(t=t, score=s, src=src, anchor=anc, kind=kind, gw=gw, novel=marks.novel(t), explore_ok=outside,
                theta=theta_by_cluster[cl], cluster=cl, catalog_mh=features.genre_multi_hot)


def _words(genres: np.ndarray, n_genres: int) -> np.ndarray:
    """Genre indices as uint64 words (the layout of ``CatalogFeatures.genre_words``)."""
    bits = 0
    for g in np.asarray(genres).tolist():
        bits |= 1 << g
    return np.array([(bits >> (64 * w)) & (2**64 - 1) for w in range(max(1, -(-n_genres // 64)))], dtype="<u8")


def _genre_backfill(features: CatalogFeatures, profile: UserProfile, cfg: ComposeConfig, pool: Pool,
                    idx: np.ndarray, cap: int, marks: Marks, theta_by_cluster: np.ndarray) -> Pool | None:
    """The pool plus, for each kind, its most popular eligible titles with none of the genres
    that page ``idx`` holds more than ``cap`` times (None when there are none).

    A ranked pool can be narrow within a kind (a documentary lover's candidates all about
    nature) while the catalog is not: the genre cap then yields to the kind mix on this pool
    although a page from the catalog keeps both. Backfilled titles score below every title of
    the pool, as the kind backfill of ``build_pool`` does.
    """
    over = np.flatnonzero(pool.mh[idx].sum(axis=0) > cap)
    if len(over) == 0 or cfg.backfill_per_kind == 0:
        return None
    over_words = _words(over, features.n_genres)
    extra = []
    for k in range(3):
        top = features.top_of_kind(k, GENRE_BACKFILL_DEPTH).astype(np.int64)
        top = top[~((features.genre_words[top] & over_words).any(axis=1)) & marks.eligible(top)]
        extra.append(top[~np.isin(top, pool.t)][: cfg.backfill_per_kind])
    e = np.concatenate(extra)
    if len(e) == 0:
        return None
    t, sc, src, anc = _append_popular(pool.t, pool.score, pool.src, pool.anchor, e)
    return _make_pool(features, marks, t, sc, src, anc, _words(dominant_genres(profile, cfg), features.n_genres),
                      theta_by_cluster)


def _penalty(pool: Pool, idx: np.ndarray, slots: np.ndarray, lo, hi, cap: int, n_v: int,
             n_e: int, features: CatalogFeatures) -> tuple[int, int, int, int]:
    """Shortfall of a page (pool indices ``idx``, slot kinds ``slots``) on rules 3-6; the page has
    at most ``page_size`` items, so plain Python counts beat numpy steps here."""
    counts = [0, 0, 0]
    for k in pool.kind[idx].tolist():
        counts[k] += 1
    per_genre: dict[int, int] = {}
    gs = features.genre_sets
    for t in pool.t[idx].tolist():
        for g in gs[t]:
            per_genre[g] = per_genre.get(g, 0) + 1
    lo, hi = lo.tolist(), hi.tolist()
    kind = sum(max(0, lo[k] - counts[k]) + max(0, counts[k] - hi[k]) for k in range(3))
    sl = slots.tolist()
    return (kind, sum(max(0, c - cap) for c in per_genre.values()),
            max(0, n_v - sl.count(NOVEL)), max(0, n_e - sl.count(EXPLORE)))


def _greedy(pool: Pool, features: CatalogFeatures, n: int, q: np.ndarray, hi: np.ndarray, cap: int,
            n_v: int, n_e: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the pool (pick order) and their slot kinds.

    Explore slots go to the best of the bandit's draws (``_explore``); novel and exploit slots are
    scans down the score-sorted pool that stop once the page is full, testing each title with
    integer bitmasks (on ~300-title pools, several times faster than numpy steps per slot).
    """
    size = len(pool)
    ts, kinds = pool.t.tolist(), pool.kind.tolist()
    gbits, tg = features.genre_bits, features.title_genres
    picked = [False] * size  # a list: the scans below test it per item
    kc = [0, 0, 0]
    gc: dict[int, int] = {}
    full = 0  # bit g set once genre g reached the cap
    order: list[int] = []
    slots: list[int] = []

    def take(i: int, slot: int) -> None:
        nonlocal full
        picked[i] = True
        kc[kinds[i]] += 1
        for g in tg[ts[i]]:
            c = gc.get(g, 0) + 1
            gc[g] = c
            if c >= cap:
                full |= 1 << g
        order.append(i)
        slots.append(slot)

    def scan(quota: list[int] | None, genre: bool, only: list[bool] | None, want: int, slot: int) -> None:
        """Take up to ``want`` titles in score order that keep the quota and the cap."""
        got = 0
        for i in range(size):
            if got >= want:
                return
            if picked[i] or (only is not None and not only[i]):
                continue
            if quota is not None and kc[kinds[i]] >= quota[kinds[i]]:
                continue
            if genre and gbits[ts[i]] & full:
                continue
            take(i, slot)
            got += 1

    qv, hv = q.tolist(), hi.tolist()
    if n_e:
        _explore(pool, ts, kinds, gbits, picked, kc, qv, lambda: full, min(n_e, n), take)
    if n_v:
        scan(qv, True, pool.novel.tolist(), min(n_v, n - len(order)), NOVEL)
    # exploit, then relax in reverse precedence: the genre cap before the kind range
    for quota, genre in ((qv, True), (hv, True), (qv, False), (hv, False), (None, False)):
        if len(order) >= n:
            break
        scan(quota, genre, None, n - len(order), EXPLOIT)
    return np.asarray(order, np.int64), np.asarray(slots, np.uint8)


def _explore(pool: Pool, ts: list[int], kinds: list[int], gbits: list[int], picked: list[bool], kc: list[int],
             quota: list[int], full, want: int, take) -> None:
    """Fill up to ``want`` explore slots (``_greedy``'s first step, its state passed in; ``full()``
    reads its capped-genre bits): each slot takes the open explore title, within its kind's quota
    and the genre cap, of the highest draw among the clusters not used yet, else the highest
    draw overall. Ties go to the better score (the lower pool index).

    This is ``argmax(where(ok, theta - 2 * used[cluster], -inf))`` per slot (``theta`` is in
    [0, 1], so a used cluster ranks below every unused one) as one walk down the explore titles
    in draw order instead of five numpy steps over the pool per slot (``_greedy`` 99 -> 82 us a
    page). Among used clusters the walk compares ``theta - 2.0`` as the array did, rounding
    included.
    """
    eo = np.flatnonzero(pool.explore_ok)
    walk = eo[np.argsort(-pool.theta[eo], kind="stable")].tolist()  # draw order, then pool order
    theta, cluster = pool.theta.tolist(), pool.cluster.tolist()
    used: set[int] = set()
    for _ in range(want):
        cap_bits = full()
        best, low = -1, 0.0
        for i in walk:
            if picked[i] or kc[kinds[i]] >= quota[kinds[i]] or gbits[ts[i]] & cap_bits:
                continue
            if cluster[i] not in used:
                best = i
                break
            v = theta[i] - 2.0  # the walk's v never rises: only an equal one can tie
            if best < 0:
                best, low = i, v
            elif v == low and i < best:
                best = i
        if best < 0:
            return
        used.add(cluster[best])
        take(best, EXPLORE)


def _exact(pool: Pool, n: int, lo, hi, cap: int, n_v: int, n_e: int, time_limit: float
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """The lexicographically best page by integer programming; None if the solver gives up."""
    m = len(pool)
    G = pool.mh.shape[1]
    # variables: x (exploit), v (novel), e (explore) per item; kind under/over (3+3); genre over (G);
    # novel and explore shortfall (1+1)
    nv = 3 * m + 6 + G + 2
    rank_value = 1.0 - np.arange(m) / max(m, 1)
    obj_bound = 2.0 * n
    p_e = obj_bound + 1
    p_v = obj_bound + p_e * n_e + 1
    p_g = obj_bound + p_e * n_e + p_v * n_v + 1
    max_genres = int(pool.mh.sum(axis=1).max()) if m else 0
    p_k = p_g * n * max(max_genres, 1) + p_g
    c = np.concatenate([-rank_value, -rank_value, -(pool.theta + 0.01 * rank_value),
                        np.full(6, p_k), np.full(G, p_g), [p_v, p_e]])
    ub = np.concatenate([np.ones(m), pool.novel.astype(float), pool.explore_ok.astype(float),
                         np.full(6 + G + 2, float(n))])
    eye = sp.identity(m, format="csr")
    sel = sp.hstack([eye, eye, eye])  # x + v + e per item
    kind_oh = sp.csr_matrix((np.ones(m), (pool.kind, np.arange(m))), shape=(3, m))
    genre_t = sp.csr_matrix(pool.mh.T.astype(float))
    z = lambda r, k: sp.csr_matrix((r, k))  # noqa: E731
    rows, lbs, ubs = [], [], []

    def add(block, lb, ubv):
        rows.append(block)
        lbs.append(np.broadcast_to(lb, block.shape[0]))
        ubs.append(np.broadcast_to(ubv, block.shape[0]))

    add(sp.hstack([sel, z(m, 6 + G + 2)]), -np.inf, 1.0)
    add(sp.hstack([sp.csr_matrix(np.ones((1, m))) @ sel, z(1, 6 + G + 2)]), n, n)
    add(sp.hstack([kind_oh @ sel, sp.identity(3), z(3, 3 + G + 2)]), lo, np.inf)
    add(sp.hstack([kind_oh @ sel, z(3, 3), -sp.identity(3), z(3, G + 2)]), -np.inf, hi)
    if G:
        add(sp.hstack([genre_t @ sel, z(G, 6), -sp.identity(G), z(G, 2)]), -np.inf, cap)
    row_v = sp.hstack([z(1, m), sp.csr_matrix(np.ones((1, m))), z(1, m), z(1, 6 + G), sp.csr_matrix([[1.0, 0.0]])])
    add(row_v, n_v, n_v)
    row_e = sp.hstack([z(1, 2 * m), sp.csr_matrix(np.ones((1, m))), z(1, 6 + G), sp.csr_matrix([[0.0, 1.0]])])
    add(row_e, n_e, n_e)
    A = sp.vstack(rows).tocsr()
    res = milp(c, constraints=LinearConstraint(A, np.concatenate(lbs), np.concatenate(ubs)),
               integrality=np.ones(nv), bounds=Bounds(np.zeros(nv), ub),
               options={"time_limit": time_limit, "mip_rel_gap": 0.0, "presolve": True})
    if res.x is None:
        log.warning("exact top-picks solver gave no solution", status=res.status, message=res.message)
        return None
    x = np.round(res.x[:3 * m]).reshape(3, m)
    idx = np.flatnonzero(x.sum(axis=0) > 0.5)
    slots = np.where(x[2, idx] > 0.5, EXPLORE, np.where(x[1, idx] > 0.5, NOVEL, EXPLOIT)).astype(np.uint8)
    return idx, slots


def _page_order(pool: Pool, idx: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exploit and novel items by score; explore items at evenly spread positions.

    Novel items are picked by the ranker's score like exploit items (only among never-shown
    titles), so the score places them: spreading them as well would push the best title of a page
    with no impressions (every title novel) down to the middle. Explore items are picked by the
    bandit's draw, not by the score, so they go to evenly spread positions (6, 11 and 16 of 20
    with three), seen but not leading. docs/evaluation.md measures what each choice costs.
    """
    n = len(idx)
    il, sl = idx.tolist(), slots.tolist()
    explore = [i for i, k in zip(il, sl) if k == EXPLORE]
    th = pool.theta[explore].tolist()
    explore = [explore[j] for j in sorted(range(len(explore)), key=lambda j: -th[j])]  # stable
    rest = sorted((i, k) for i, k in zip(il, sl) if k != EXPLORE)  # the pool is sorted by score
    out = [-1] * n
    out_slots = [0] * n
    taken = [False] * n
    for j, i in enumerate(explore):  # a handful of explore slots per page
        p = int(round((j + 1) * n / (len(explore) + 1))) % n
        while taken[p]:
            p = (p + 1) % n
        out[p], out_slots[p], taken[p] = i, EXPLORE, True
    free = (p for p in range(n) if not taken[p])
    for (i, k), p in zip(rest, free):
        out[p], out_slots[p] = i, k
    return np.asarray(out, np.int64), np.asarray(out_slots, np.uint8)


def item_reasons(features: CatalogFeatures, profile: UserProfile, pool: Pool, idx: np.ndarray,
                 slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A reason code and argument per picked item, from its slot kind and source.

    The slot kind explains more than the source: explore and novel items name their first genre,
    co-visitation items their anchor, onboarding items the picked genre they have (else their
    first), the other sources their shelf-like reason; the rest the title's genre the user likes
    most (the lowest such genre on ties; no argument unless that affinity is positive).
    """
    ts = pool.t[idx].tolist()
    first = features.first_genre[pool.t[idx]].tolist()
    srcs, ancs, sl = pool.src[idx].tolist(), pool.anchor[idx].tolist(), slots.tolist()
    gs = features.genre_sets
    ga = profile.genre_affinity.tolist() if features.n_genres and profile.genre_affinity is not None else None
    picks = {g for g in (features.genre_index(x) for x in profile.onboarding_genres) if g >= 0}
    code = [R.AFFINITY] * len(ts)
    arg = [-1] * len(ts)
    for j, t in enumerate(ts):
        slot, src = sl[j], srcs[j]
        if slot == EXPLORE or slot == NOVEL:
            code[j], arg[j] = (R.EXPLORE if slot == EXPLORE else R.NOVEL), first[j]
        elif src == _COVISIT and ancs[j] >= 0:
            code[j], arg[j] = R.BECAUSE, ancs[j]
        elif src == _ONBOARDING:
            code[j], arg[j] = R.ONBOARDING, next((g for g in gs[t] if g in picks), first[j])
        elif src in _SOURCE_REASON:
            code[j] = _SOURCE_REASON[src]
        elif ga is not None and gs[t]:
            best = max(gs[t], key=ga.__getitem__)  # the first of equal maxima, as argmax
            if ga[best] > 0:
                arg[j] = best
    return np.asarray(code, np.uint8), np.asarray(arg, np.int64)


def select_top_picks(features: CatalogFeatures, profile: UserProfile, cands: Candidates,
                     cfg: ComposeConfig | None = None, bandit: ThompsonBandit | None = None,
                     rng: np.random.Generator | None = None, claimed: np.ndarray | None = None,
                     marks: Marks | None = None, order: np.ndarray | None = None) -> Selection:
    """Compose the top ``page_size`` for one user. Never raises on a small or empty pool.

    ``profile`` and ``cands`` must be validated (``UserProfile.validated``, ``Candidates.validated``);
    ``claimed`` titles (Continue watching) are left out; ``marks`` may carry them instead;
    ``order`` is the candidates' stable score order (``build_pool``) when the caller has it.
    """
    cfg = cfg or ComposeConfig()
    rng = rng if rng is not None else np.random.default_rng()
    n_cl = len(features.cluster_names)
    theta = (bandit.sample(profile.region, rng) if bandit is not None else rng.beta(1.0, 1.0, n_cl))
    if marks is None:
        marks = Marks(features, profile)
        if claimed is not None and len(claimed):
            marks.claim(np.asarray(claimed, np.int64))
    pool = build_pool(features, profile, cands, cfg, theta, marks=marks, order=order)
    n = min(cfg.page_size, len(pool))
    shares = kind_shares(profile.kind_affinity, cfg)
    target = shares * n
    lo, hi = kind_bounds(target)
    cap = cfg.genre_cap_for(n) if n < cfg.page_size else cfg.genre_cap
    n_e, n_v = cfg.explore_slots(n), cfg.novel_slots_for(n)

    def choose(pool: Pool) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int], bool]:
        avail = np.bincount(pool.kind, minlength=3)
        q = kind_quotas(target, avail, n)
        idx, slots = _greedy(pool, features, n, q, hi, cap, n_v, n_e)
        pen = _penalty(pool, idx, slots, lo, hi, cap, n_v, n_e, features)
        bound = (least_kind_deviation(lo, hi, avail, n), 0, max(0, n_v - int(np.count_nonzero(pool.novel))),
                 max(0, n_e - int(np.count_nonzero(pool.explore_ok))))
        exact = False
        if pen != bound and n:
            got = _exact(pool, n, lo, hi, cap, n_v, n_e, cfg.exact_time_limit_s)
            if got is not None:
                pen2 = _penalty(pool, got[0], got[1], lo, hi, cap, n_v, n_e, features)
                if pen2 <= pen:
                    idx, slots, pen, exact = got[0], got[1], pen2, True
        return idx, slots, pen, exact

    idx, slots, pen, exact = choose(pool)
    if pen[1] and n == cfg.page_size:  # the cap broke on a full page: is the pool too narrow?
        wider = _genre_backfill(features, profile, cfg, pool, idx, cap, marks, theta)
        if wider is not None:
            got = choose(wider)
            if got[2] < pen:
                pool, (idx, slots, pen, exact) = wider, got
    idx, slots = _page_order(pool, idx, slots)
    code, arg = item_reasons(features, profile, pool, idx, slots)
    return Selection(titles=pool.t[idx], slots=slots, scores=pool.score[idx], reasons=code,
                     reason_args=arg, penalty=pen, target=target, exact=exact)
