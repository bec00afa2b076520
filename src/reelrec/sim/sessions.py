"""One day of behaviour for a block of users, vectorised: sessions, the homepage a simple
baseline policy shows them, what they play, how far they watch, and everything around it.

The flow for a block (every step is array code over all of the block's sessions at once):

1. sessions: a Poisson number per user and day (activity x weekday), a device, and a local start
   hour from that device's daily rhythm (TV evenings, mobile mornings); newcomers open one right
   after signing up;
2. impressions: shelves of tiles from the baseline policy, popularity plus a bit of taste
   ("popular", "genre:<g>" for two genres drawn half from the user's taste and half from the
   catalog's, "new" with novel slots, ~10 % explore slots drawn uniformly, and "search" results
   after a search that names a genre). Titles come from per-(region, shelf) popularity CDFs, so
   nothing unavailable in the user's region or not yet added is ever shown; release spikes decay;
3. plays: a Bernoulli per tile on true preference x popularity x position, with a device/time
   runtime preference (mobile mornings favour short titles, TV evenings long ones), at most three
   per session; plus rewatches of titles the user finished on earlier days;
4. viewing: a series play binges episodes while the user likes it; each viewing completes, drops
   off early (most likely for disliked titles) or stops part-way, and stops when the session's
   time budget runs out; progress heartbeats every ``HEARTBEAT_S`` with the final position;
5. around it: thumbs, watchlist adds (some removed later), skip intro / recap on series, searches
   and onboarding.

``day_events`` returns numpy columns; ``world.py`` turns them into Arrow and appends them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reelrec.sim import vocab as V
from reelrec.sim.catalog import NEW_WINDOW_DAYS, CatalogArrays, _pick_rows
from reelrec.sim.population import Population
from reelrec.sim.truth import Truth

DAY_S = 86400
HEARTBEAT_S = 600.0
MAX_PLAYS = 3
MAX_BINGE = 6
EXPLORE_RATE = 0.10
SPIKE_DECAY_DAYS = 3.0
PLAY_BIAS = -4.1  # calibrated for ~1.2 plays per session

# event type codes follow reelrec.domain.events.EVENT_TYPES order
TYPES = ("impression", "play_start", "progress", "complete", "thumbs_up", "thumbs_down",
         "rating", "watchlist_add", "watchlist_remove", "search", "skip_intro", "skip_recap",
         "onboarding", "profile")
T_ = {t: i for i, t in enumerate(TYPES)}
SLOT_KINDS = ("exploit", "explore", "novel")

# devices: tv, mobile, tablet, web
SHELVES_BY_DEVICE = np.array([4, 3, 3, 4])
TILES_BY_DEVICE = np.array([6, 5, 6, 6])
SEARCH_RATE = np.array([0.10, 0.14, 0.12, 0.25])
BUDGET_MIN = np.array([150.0, 40.0, 70.0, 90.0])
SEARCH_RESULTS = 6
REWATCH_RATE = 0.04

# shelf columns of the segment table: five fixed ones, then one per genre
C_ALL, C_NEW, C_RECENT, C_BACK, C_UNIFORM, C_GENRE = range(6)
NCOL = C_GENRE + V.G
SHELF_NAMES = ("popular", "new", "search") + tuple(f"genre:{g}" for g in V.GENRES)
SH_POPULAR, SH_NEW, SH_SEARCH, SH_GENRE = 0, 1, 2, 3
QUERY_FORMS = ("{g}", "best {g}", "{g} {k}")
QUERY_KIND_WORD = {"fiction": "movies", "doc": "documentaries"}
QUERIES = tuple(f.format(g=g, k=QUERY_KIND_WORD["doc" if g in V.DOCUMENTARY else "fiction"])
                for g in V.GENRES for f in QUERY_FORMS)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Shelves:
    """Popularity CDFs of titles per (region, shelf column), concatenated into one sorted array
    so that a draw for any number of tiles is one ``searchsorted``: segment s holds the values
    (s, s + 1], and ``s + u`` for u uniform in [0, 1) falls inside it."""

    def __init__(self, cat: CatalogArrays, start_s: int):
        t_all = np.arange(cat.n)
        hot = cat.base_pop * (1.0 + cat.spike)
        new = cat.added_s >= start_s - NEW_WINDOW_DAYS * DAY_S
        before = cat.added_s < start_s
        gt = np.repeat(t_all, 3)
        gg = cat.genre_idx.ravel().astype(np.int64)
        gt, gg = gt[gg >= 0], gg[gg >= 0]
        by_genre = np.lexsort((gt, gg))
        gt, gg = gt[by_genre], gg[by_genre]
        segs, titles, weights = [], [], []
        for r in range(V.R):
            a = cat.avail[:, r]
            for col, mask, w in ((C_ALL, a, hot), (C_NEW, a & new, hot),
                                 (C_RECENT, a & new & before, cat.base_pop),
                                 (C_BACK, a & before, cat.base_pop),
                                 (C_UNIFORM, a, np.ones(cat.n))):
                idx = t_all[mask]
                segs.append(np.full(len(idx), r * NCOL + col))
                titles.append(idx)
                weights.append(w[idx])
            m = a[gt]
            segs.append(r * NCOL + C_GENRE + gg[m])
            titles.append(gt[m])
            weights.append(hot[gt[m]])
        seg = np.concatenate(segs)
        tit = np.concatenate(titles)
        w = np.concatenate(weights)
        # appended region by region, columns and genres ascending: already sorted by segment
        n_seg = V.R * NCOL
        counts = np.bincount(seg, minlength=n_seg)
        ends = np.cumsum(counts)
        starts = ends - counts
        cw = np.cumsum(w)
        base = np.where(starts > 0, cw[np.maximum(starts - 1, 0)], 0.0)
        total = np.where(counts > 0, cw[np.maximum(ends - 1, 0)] - base, 1.0)
        frac = (cw - np.repeat(base, counts)) / np.repeat(total, counts)
        frac[ends[counts > 0] - 1] = 1.0
        self.cdf = seg + frac
        self.titles = tit
        self.nonempty = counts > 0
        # a segment with no title falls back along new -> recent -> back -> all (-1: nothing)
        resolve = np.arange(n_seg)
        chain = {C_NEW: (C_RECENT, C_BACK, C_ALL), C_RECENT: (C_BACK, C_ALL), C_BACK: (C_ALL,),
                 C_UNIFORM: (C_ALL,)}
        for s in range(n_seg):
            if self.nonempty[s]:
                continue
            r, col = divmod(s, NCOL)
            resolve[s] = -1
            for c in chain.get(col, (C_ALL,)):
                if self.nonempty[r * NCOL + c]:
                    resolve[s] = r * NCOL + c
                    break
        self.resolve = resolve
        self.genre_ok = self.nonempty.reshape(V.R, NCOL)[:, C_GENRE:]

    def draw(self, rng: np.random.Generator, region: np.ndarray, col: np.ndarray) -> np.ndarray:
        """One title per (region, column) pair by popularity; -1 where the region has none."""
        seg = self.resolve[region.astype(np.int64) * NCOL + col]
        ok = seg >= 0
        x = np.where(ok, seg, 0) + rng.random(len(seg))
        # sorted queries walk the CDF once instead of jumping around it (several times faster)
        order = np.argsort(x)
        pos = np.empty(len(x), np.int64)
        pos[order] = np.searchsorted(self.cdf, x[order], side="right")
        pos = np.minimum(pos, len(self.titles) - 1)
        return np.where(ok, self.titles[pos], -1)


@dataclass
class History:
    """Titles each user of a block finished on earlier days (for rewatches)."""

    user: np.ndarray
    title: np.ndarray

    @classmethod
    def empty(cls) -> "History":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64))

    def add(self, user: np.ndarray, title: np.ndarray, n_titles: int) -> "History":
        key = np.unique(np.concatenate([self.user * n_titles + self.title,
                                        user.astype(np.int64) * n_titles + title]))
        return History(key // n_titles, key % n_titles)

    def contains(self, users: np.ndarray, titles: np.ndarray, n_titles: int) -> np.ndarray:
        keys = self.user * n_titles + self.title  # sorted: built by np.unique
        q = users.astype(np.int64) * n_titles + titles
        i = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
        return (keys[i] == q) if len(keys) else np.zeros(len(q), bool)

    def pick(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """A random finished title for each user (-1 when none)."""
        if len(self.user) == 0:
            return np.full(len(users), -1, np.int64)
        lo = np.searchsorted(self.user, users, side="left")
        n = np.searchsorted(self.user, users, side="right") - lo
        idx = np.minimum(lo + (rng.random(len(users)) * n).astype(np.int64), len(self.title) - 1)
        return np.where(n > 0, self.title[idx], -1)


@dataclass
class DayContext:
    cat: CatalogArrays
    pop: Population
    truth: Truth
    shelves: Shelves
    start_s: int
    end_s: int
    genre_prior: np.ndarray  # (G,) what the policy's "catalog" half of genre shelves uses


def _group_rank(keys: np.ndarray) -> np.ndarray:
    """0-based rank of each element within its run of equal (sorted) keys."""
    if len(keys) == 0:
        return np.empty(0, np.int64)
    first = np.r_[True, keys[1:] != keys[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(keys)), 0))
    return np.arange(len(keys)) - start


def _runtime_taste(device: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """How strongly a session prefers short (negative) or long (positive) titles."""
    mobile, tv = device == 1, device == 0
    morning = (hour >= 5) & (hour < 11)
    evening = hour >= 18
    return np.select([mobile & morning, mobile, device == 2, tv & evening], [-1.6, -0.8, -0.3, 0.5],
                     0.0)


def day_events(ctx: DayContext, rng: np.random.Generator, users: np.ndarray, day: int,
               history: History) -> tuple[dict[str, np.ndarray], dict, History]:
    """Events of ``users`` (global row indices, sorted) on simulated day ``day``.

    Returns the event columns sorted by time (codes and row indices; ``world._to_table`` turns
    them into the lake's schema), counts of sessions and plays, and the history extended with
    today's completions. Events past the end of the window are dropped.
    """
    cat, pop, truth = ctx.cat, ctx.pop, ctx.truth
    day_s = ctx.start_s + day * DAY_S
    weekday = ((day_s // DAY_S) + 3) % 7  # 1970-01-01 was a Thursday

    # --- 1. sessions ----------------------------------------------------------------------
    signup = pop.signup_s[users]
    active = signup < day_s + DAY_S
    n_sess = rng.poisson(pop.activity[users] * V.WEEKDAY_FACTOR[weekday]) * active
    joins_today = pop.joiner[users] & (signup >= day_s) & (signup < day_s + DAY_S)
    n_sess = n_sess + joins_today
    s_user = np.repeat(users, n_sess)
    n = len(s_user)
    forced = np.zeros(n, bool)
    forced[(np.cumsum(n_sess) - n_sess)[joins_today]] = True  # first session of a newcomer
    region = pop.region[s_user]
    own = rng.random(n) < 0.6
    device = np.where(own, pop.signup_device[s_user],
                      _pick_rows(rng, V.DEVICE_MIX[region])).astype(np.int8)
    hour_local = _pick_rows(rng, V.HOUR_PROFILE[device])
    tz = V.REGION_UTC_OFFSET_H[region]
    local_s = hour_local * 3600.0 + rng.random(n) * 3600.0
    ts0 = day_s + np.mod(local_s - tz * 3600.0, DAY_S)
    s_signup = pop.signup_s[s_user]
    ts0 = np.where(forced, s_signup + 60.0, ts0)
    device = np.where(forced, pop.signup_device[s_user], device)
    hour_local = np.where(forced, np.floor(np.mod((ts0 - day_s) / 3600.0 + tz, 24)), hour_local)
    keep = ts0 >= s_signup + 30
    s_user, region, device, hour_local, ts0, forced = (
        a[keep] for a in (s_user, region, device, hour_local, ts0, forced))
    n = len(s_user)
    searching = rng.random(n) < SEARCH_RATE[device]
    rewatching = rng.random(n) < REWATCH_RATE
    budget = (10.0 + rng.exponential(BUDGET_MIN[device])) * 60.0
    rt_taste = _runtime_taste(device, hour_local)

    # --- 2. impressions from the baseline policy --------------------------------------------
    taste = truth.taste[s_user]
    doc_share = truth.kind_share[s_user, V.DOC][:, None]
    mix = np.where(V.FICTION_MASK, taste * (1 - doc_share), taste * doc_share)
    ok = ctx.shelves.genre_ok[region]
    shelf_w = (0.5 * mix + 0.5 * ctx.genre_prior[None, :]) * ok + 1e-12
    ga = _pick_rows(rng, shelf_w)
    shelf_w[np.arange(n), ga] = 1e-12
    gb = _pick_rows(rng, shelf_w)
    q_genre = _pick_rows(rng, mix * ok + 1e-12)

    per = SHELVES_BY_DEVICE[device] * TILES_BY_DEVICE[device]
    i_sess = np.repeat(np.arange(n), per)
    j = np.arange(len(i_sess)) - np.repeat(np.cumsum(per) - per, per)
    tiles = TILES_BY_DEVICE[device][i_sess]
    shelf_no = j // tiles
    pos = j % tiles
    g_of = np.where(shelf_no == 1, ga[i_sess], gb[i_sess])
    col = np.select([shelf_no == 0, shelf_no == 2], [C_ALL, C_NEW], C_GENRE + g_of)
    shelf = np.select([shelf_no == 0, shelf_no == 2], [SH_POPULAR, SH_NEW], SH_GENRE + g_of)
    explore = (shelf_no != 2) & (rng.random(len(i_sess)) < EXPLORE_RATE)
    col = np.where(explore, C_UNIFORM, col)
    slot = np.where(shelf_no == 2, 2, np.where(explore, 1, 0))
    i_ts = ts0[i_sess] + shelf_no * 2.0 + pos * 0.25
    # search results follow the search
    srch = np.nonzero(searching)[0]
    q_sess = np.repeat(srch, SEARCH_RESULTS)
    q_pos = np.tile(np.arange(SEARCH_RESULTS), len(srch))
    i_sess = np.concatenate([i_sess, q_sess])
    pos = np.concatenate([pos, q_pos])
    shelf_no = np.concatenate([shelf_no, np.full(len(q_sess), 4)])
    col = np.concatenate([col, C_GENRE + q_genre[q_sess]])
    shelf = np.concatenate([shelf, np.full(len(q_sess), SH_SEARCH)])
    slot = np.concatenate([slot, np.zeros(len(q_sess), np.int64)])
    i_ts = np.concatenate([i_ts, ts0[q_sess] + 25.0 + q_pos * 0.2])
    i_region = region[i_sess]
    title = ctx.shelves.draw(rng, i_region, col)
    # not yet added, or a release spike that has faded: show a back-catalog title instead
    added = cat.added_s[np.maximum(title, 0)]
    age_d = (i_ts - added) / DAY_S
    spike = cat.spike[np.maximum(title, 0)]
    fade = (1.0 + spike * np.exp(-np.maximum(age_d, 0) / SPIKE_DECAY_DAYS)) / (1.0 + spike)
    redo = (title >= 0) & ((age_d < 0) | (rng.random(len(title)) > fade))
    if redo.any():
        back = np.where(col[redo] == C_NEW, C_RECENT, C_BACK)
        title[redo] = ctx.shelves.draw(rng, i_region[redo], back)
    shown = title >= 0
    i_sess, pos, shelf_no, shelf, slot, i_ts, title = (
        a[shown] for a in (i_sess, pos, shelf_no, shelf, slot, i_ts, title))
    i_user = s_user[i_sess]

    # --- 3. plays -----------------------------------------------------------------------------
    pref = truth.preference(i_user, title)
    unit_min = cat.unit_min[title]
    logit = (PLAY_BIAS + pref + 0.3 * np.log(cat.base_pop[title])
             + rt_taste[i_sess] * (unit_min - 60.0) / 60.0
             - 0.12 * pos - 0.15 * np.minimum(shelf_no, 3) + 1.5 * (shelf == SH_SEARCH)
             - 2.5 * history.contains(i_user, title, cat.n))  # a finished title is rarely replayed
    chosen = np.nonzero(rng.random(len(title)) < sigmoid(logit))[0]
    order = chosen[np.lexsort((i_ts[chosen], i_sess[chosen]))]
    # one play per title per session, at most MAX_PLAYS
    key = i_sess[order].astype(np.int64) * cat.n + title[order]
    _, first = np.unique(key, return_index=True)
    order = order[np.sort(first)]
    order = order[_group_rank(i_sess[order]) < MAX_PLAYS]
    p_sess, p_title, p_key = i_sess[order], title[order], i_ts[order]
    p_rewatch = np.zeros(len(order), bool)
    # rewatches: a title finished on an earlier day, played straight away (no tile needed)
    rw = np.nonzero(rewatching)[0]
    if len(rw) and len(history.user):
        rt = history.pick(rng, s_user[rw])
        rw, rt = rw[rt >= 0], rt[rt >= 0]
        p_sess = np.concatenate([p_sess, rw])
        p_title = np.concatenate([p_title, rt])
        p_key = np.concatenate([p_key, ts0[rw]])
        p_rewatch = np.concatenate([p_rewatch, np.ones(len(rw), bool)])
    o = np.lexsort((p_key, p_sess))
    p_sess, p_title, p_rewatch = p_sess[o], p_title[o], p_rewatch[o]
    p_user = s_user[p_sess]
    p_pref = truth.preference(p_user, p_title)
    n_play = len(p_sess)

    # --- 4. viewing: binges, completion, drop-off, session budget --------------------------
    series = cat.kind[p_title] == V.SERIES
    p_cont = np.clip(0.1 + 0.6 * sigmoid(p_pref - 0.5), 0.0, 0.8)
    binge = np.where(series & ~p_rewatch,
                     np.minimum(rng.geometric(1.0 - p_cont), MAX_BINGE), 1)
    v_play = np.repeat(np.arange(n_play), binge)
    v_k = np.arange(len(v_play)) - np.repeat(np.cumsum(binge) - binge, binge)
    last = v_k == binge[v_play] - 1
    v_pref = p_pref[v_play]
    nv = len(v_play)
    p_complete = sigmoid(-0.6 + 1.1 * v_pref + 1.0 * p_rewatch[v_play])
    complete = ~last | (rng.random(nv) < p_complete)
    early = ~complete & (rng.random(nv) < sigmoid(0.6 - 0.8 * v_pref))
    frac = np.where(complete, rng.uniform(0.93, 1.0, nv),
                    np.where(early, rng.beta(1.3, 9.0, nv), 0.9 * rng.beta(2.0, 2.2, nv)))
    runtime_s = cat.unit_min[p_title[v_play]].astype(np.float64) * 60.0
    planned = np.maximum(frac * runtime_s, 1.0)
    v_sess = p_sess[v_play]
    step = planned + 12.0
    cs = np.cumsum(step)
    first_v = np.r_[True, v_sess[1:] != v_sess[:-1]] if nv else np.empty(0, bool)
    base = np.maximum.accumulate(np.where(first_v, cs - step, 0.0)) if nv else cs
    offset = 40.0 + cs - step - base
    room = budget[v_sess] - offset
    watched = np.minimum(planned, room)
    complete &= watched >= planned
    kept = watched > 0
    v_play, v_k, v_sess, v_pref, watched, complete, early, runtime_s, offset = (
        a[kept] for a in (v_play, v_k, v_sess, v_pref, watched, complete, early, runtime_s,
                          offset))
    # the budget only ever cuts a play's trailing episodes: its last kept view ends it
    last = np.r_[v_play[1:] != v_play[:-1], True] if len(v_play) else np.empty(0, bool)
    v_title = p_title[v_play]
    v_user = s_user[v_sess]
    v_ts = ts0[v_sess] + offset
    v_series = cat.kind[v_title] == V.SERIES
    nv = len(v_play)

    n_hb = np.ceil(watched / HEARTBEAT_S).astype(np.int64)
    h_view = np.repeat(np.arange(nv), n_hb)
    h_k = np.arange(len(h_view)) - np.repeat(np.cumsum(n_hb) - n_hb, n_hb) + 1
    h_pos = np.minimum(h_k * HEARTBEAT_S, watched[h_view])
    h_inc = h_pos - np.minimum((h_k - 1) * HEARTBEAT_S, watched[h_view])

    skip_recap = v_series & (v_k >= 1) & (watched > 10) & (rng.random(nv) < 0.5)
    skip_intro = v_series & (watched > 90) & (rng.random(nv) < np.where(v_k >= 1, 0.6, 0.2))
    up = last & complete & (rng.random(nv) < 0.35 * sigmoid(1.5 * (v_pref - 1.5)))
    down = last & early & (rng.random(nv) < 0.4 * sigmoid(-1.5 * (v_pref - 0.5)))

    # --- 5. watchlist, searches, onboarding ---------------------------------------------------
    played = np.zeros(len(title), bool)
    played[order] = True
    wl = np.nonzero(~played & (rng.random(len(title)) < 0.03 * sigmoid(2.0 * (pref - 1.5))))[0]
    wl_rm = wl[rng.random(len(wl)) < 0.25]
    wl_rm_ts = i_ts[wl_rm] + rng.uniform(600, 3 * DAY_S, len(wl_rm))

    onb_sess = np.nonzero(forced & pop.onboarded[s_user])[0]

    # --- assemble ---------------------------------------------------------------------------
    blocks = [
        dict(type=T_["impression"], sess=i_sess, title=title, ts=i_ts, shelf=shelf,
             position=pos, slot=slot),
        dict(type=T_["play_start"], sess=v_sess, title=v_title, ts=v_ts),
        dict(type=T_["skip_recap"], sess=v_sess[skip_recap], title=v_title[skip_recap],
             ts=v_ts[skip_recap] + 4.0),
        dict(type=T_["skip_intro"], sess=v_sess[skip_intro], title=v_title[skip_intro],
             ts=v_ts[skip_intro] + 45.0),
        dict(type=T_["progress"], sess=v_sess[h_view], title=v_title[h_view],
             ts=v_ts[h_view] + h_pos, position_s=h_pos, watched_s=h_inc),
        dict(type=T_["complete"], sess=v_sess[complete], title=v_title[complete],
             ts=v_ts[complete] + watched[complete] + 1.0),
        dict(type=T_["thumbs_up"], sess=v_sess[up], title=v_title[up],
             ts=v_ts[up] + watched[up] + 5.0),
        dict(type=T_["thumbs_down"], sess=v_sess[down], title=v_title[down],
             ts=v_ts[down] + watched[down] + 5.0),
        dict(type=T_["watchlist_add"], sess=i_sess[wl], title=title[wl], ts=i_ts[wl] + 3.0),
        dict(type=T_["watchlist_remove"], sess=i_sess[wl_rm], title=title[wl_rm], ts=wl_rm_ts),
        dict(type=T_["search"], sess=srch, ts=ts0[srch] + 20.0,
             query=q_genre[srch] * len(QUERY_FORMS) + rng.integers(0, len(QUERY_FORMS), len(srch))),
        dict(type=T_["onboarding"], sess=onb_sess, ts=ts0[onb_sess] - 30.0,
             onboard=s_user[onb_sess]),
    ]
    cols = _concat(blocks)
    cols["user"] = s_user[cols["sess"]]
    cols["device"] = device[cols["sess"]]
    cols["region"] = region[cols["sess"]]
    ts_ms = np.round(cols.pop("ts") * 1000.0).astype(np.int64)
    inside = ts_ms < ctx.end_s * 1000
    srt = np.argsort(np.where(inside, ts_ms, np.iinfo(np.int64).max), kind="stable")
    srt = srt[: int(inside.sum())]
    cols = {k: v[srt] for k, v in cols.items()}
    cols["ts_ms"] = ts_ms[srt]

    done = complete & (v_ts + watched < ctx.end_s)
    history = history.add(v_user[done], v_title[done], cat.n)
    return cols, {"sessions": n, "plays": n_play}, history


_DEFAULTS = dict(title=-1, shelf=-1, position=-1, slot=-1, query=-1, onboard=-1,
                 position_s=np.nan, watched_s=np.nan)


def _concat(blocks: list[dict]) -> dict[str, np.ndarray]:
    sizes = [len(b["sess"]) for b in blocks]
    out: dict[str, np.ndarray] = {
        "type": np.repeat(np.array([b["type"] for b in blocks], np.int8), sizes),
        "sess": np.concatenate([b["sess"] for b in blocks]).astype(np.int64),
        "ts": np.concatenate([np.asarray(b["ts"], np.float64) for b in blocks]),
    }
    for name, fill in _DEFAULTS.items():
        dtype = np.float32 if isinstance(fill, float) else np.int64
        out[name] = np.concatenate([np.asarray(b[name], dtype) if name in b
                                    else np.full(sz, fill, dtype) for b, sz in zip(blocks, sizes)])
    return out
