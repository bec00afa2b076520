"""Stage 2 features: one row per (user, candidate), computed from arrays for a batch of users.

Every feature reads only the user's state (their positives, times, context shares, searches)
and the title statistics of the training window, never an event at or after the label time:
the ranker's training split (``reelrec.rank.ranker.label_window``) builds both from events
before its cutoff, and tests/test_rank.py checks that a label event cannot reach its features.

Groups: each source's score and rank (and the score relative to the user's best candidate);
popularity (global, regional, recent) and trending; freshness; genre and kind affinity; context
(local time-of-day and device shares against runtime and kind, the fit of the title's
audience's (device, local daypart) cells to the user's own, and the request's own device and local
hour against the title: its lift in the request's cell and its runtime on the request's device,
the user's most frequent cell standing in when no request is given); completion and click-through rates
among similar users (the user's ALS cluster, smoothed toward the title's global rate); search
intent (genres named in recent searches); user activity; time (when the title was engaged with
against when the user was active, and the title's popularity in the user's active periods).
Without ``context`` the time-of-day and device group is left out: the ablation model
"reelrec-ranker-nocontext".
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from reelrec.domain.catalog import KINDS
from reelrec.domain.users import DAYPARTS, DEVICES, daypart_cell
from reelrec.recall.candidates import Artifacts, Candidates, UserState
from reelrec.recall.popular import genre_affinity, time_bin

# the user's habits (device and local time-of-day shares, the fit of the title's cells to the
# user's), then the request's own context against the title (REQUEST_FEATURES)
REQUEST_FEATURES = ("req_lift", "req_lift_vs_fit", "req_hour", "req_runtime_x_mobile", "req_runtime_x_tv",
                    "req_runtime_x_tablet")
CONTEXT_FEATURES = ("tv_share", "mobile_share", "night_share", "evening_share", "runtime_x_mobile",
                    "runtime_x_tv", "series_x_mobile", "runtime_x_night", "context_fit", "context_fit_top",
                    *REQUEST_FEATURES)


def feature_names(sources: tuple[str, ...], context: bool = True) -> list[str]:
    """The columns of ``build_features`` for candidates from ``sources``; without ``context``,
    the time-of-day and device features (``CONTEXT_FEATURES``) are left out (the ablation)."""
    names = []
    for s in sources:
        names += [f"{s}_rank", f"{s}_rel", f"{s}_z"]
    names += ["in_sources", "best_rank",
              "pop_log", "pop_region", "recent_log", "trend_day", "trend_week", "trend_region",
              "mean_weight", "age_days", "content_vector",
              "genre_affinity", "genre_max", "kind_affinity", "kind", "runtime_min",
              *CONTEXT_FEATURES,
              "completion_cluster", "completion_all", "ctr_cluster", "ctr_all",
              "search_genre", "user_positives_log", "user_events_week", "user_title_pop_mean",
              "title_first_vs_user_last", "title_mean_vs_user_mean", "pop_user_period"]
    return names if context else [n for n in names if n not in CONTEXT_FEATURES]


def _take(block, cols: np.ndarray) -> np.ndarray:
    at = getattr(block, "at", None)  # a ScoreBlock computes only the candidates' scores
    return at(cols) if at is not None else np.take_along_axis(block, np.maximum(cols, 0), axis=1)


def build_features(art: Artifacts, state: UserState, cands: Candidates,
                   dense: dict[str, np.ndarray], context: bool = True) -> np.ndarray:
    """(B, C, F) float32 features for the candidates of a batch (padding rows are NaN), in the
    order of ``feature_names(cands.sources, context)``."""
    st = art.stats
    state = state.filled(st.genres.shape[1])
    cols = cands.cols
    c0 = np.maximum(cols, 0)
    b, c = cols.shape
    feats: list[np.ndarray] = []

    for i, s in enumerate(cands.sources):
        if s == "ann":
            v = art.item_factors[c0]  # (B, C, f)
            score = np.einsum("bcf,bf->bc", v, state.vectors)
        elif s in dense:
            score = _take(dense[s], cols)
        else:
            score = np.zeros((b, c), np.float32)
        # scale-free forms only: the ranker is trained on a smaller window than it serves, so raw
        # scores (which grow with the history) would shift between training and serving
        rank = cands.rank[:, :, i]
        valid = cols >= 0
        top = np.max(np.where(valid, score, -np.inf), axis=1, keepdims=True)
        top = np.where(np.isfinite(top) & (np.abs(top) > 1e-9), top, 1.0)
        n = np.maximum(valid.sum(axis=1, keepdims=True), 1)
        mean = np.where(valid, score, 0.0).sum(axis=1, keepdims=True) / n
        sd = np.sqrt(np.where(valid, (score - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / n) + 1e-9
        feats += [np.where(np.isfinite(rank), rank, 1000.0), score / np.abs(top), (score - mean) / sd]
    present = np.isfinite(cands.rank)
    feats += [present.sum(axis=2).astype(np.float32),
              np.where(present.any(axis=2), cands.rank.min(axis=2, initial=np.inf, where=present), 1000.0)]

    region = state.region
    reg_ok = (region >= 0)[:, None] & (len(st.regions) > 0)
    pop_region = st.pop_region[np.maximum(region, 0)[:, None], c0] if len(st.regions) \
        else np.zeros((b, c), np.float32)
    trend_region = st.trend_region[np.maximum(region, 0)[:, None], c0] if len(st.regions) \
        else np.zeros((b, c), np.float32)
    # popularity as shares of the window's totals, for the same reason
    pop_share = st.pop / max(st.pop.sum(), 1.0)
    reg_tot = np.maximum(st.pop_region.sum(axis=1), 1.0) if len(st.regions) else np.ones(1)
    treg_tot = np.maximum(st.trend_region.sum(axis=1), 1e-9) if len(st.regions) else np.ones(1)
    rr = np.maximum(region, 0)
    feats += [np.log(pop_share[c0] + 1e-7),
              np.where(reg_ok, np.log(pop_region / reg_tot[rr][:, None] + 1e-7), np.nan),
              np.log(st.recent[c0] / max(st.recent.sum(), 1.0) + 1e-7),
              st.trend_day[c0] / max(st.trend_day.sum(), 1e-9), st.trend_week[c0] / max(st.trend_week.sum(), 1e-9),
              np.where(reg_ok, trend_region / treg_tot[rr][:, None], np.nan), st.mean_weight[c0], st.age_days[c0],
              art.content[c0].astype(np.float32)]

    aff = genre_affinity(state.positives, st.genres)  # (B, G)
    tg, n_g, title_genres = _genre_parts(art)
    # affinity of the user for each candidate's genres: (aff @ genres^T) gathered at the candidates
    ga = _genre_dot_at(title_genres, aff, c0)  # (B, C): (aff @ genres^T) at the candidates
    gmax = _genre_max_at(title_genres, aff, c0)  # (B, C)
    kind_share = _kind_share(state.positives, st.kind)  # (B, K)
    kind_c = st.kind[c0]
    feats += [ga / n_g[c0], gmax,
              np.take_along_axis(kind_share, kind_c, axis=1), kind_c.astype(np.float32),
              st.runtime_min[c0]]

    runtime = np.nan_to_num(st.runtime_min[c0], nan=0.0) / 60.0
    tv, mobile = state.device[:, 0:1], state.device[:, 1:2]
    night, evening = state.hour[:, 0:1], state.hour[:, 3:4]
    is_series = (kind_c == KINDS.index("series")).astype(np.float32)
    ones = np.ones((b, c), np.float32)
    fit = _context_fit(st, state, c0)
    feats += [tv * ones, mobile * ones, night * ones, evening * ones, runtime * mobile, runtime * tv,
              is_series * mobile, runtime * night, *fit, *_request_features(st, state, c0, runtime, fit[0])]

    cl = np.clip(state.cluster, 0, st.completion.shape[0] - 1)
    feats += [st.completion[cl[:, None], c0], st.completion_all[c0],
              st.ctr[cl[:, None], c0], st.ctr_all[c0]]

    sg = state.search_genres
    search = _genre_dot_at(title_genres, sg, c0) if sg.shape[1] == tg.shape[1] else np.zeros((b, c), np.float32)
    n_pos = np.diff(sp.csr_matrix(state.positives).indptr).astype(np.float32)
    x = sp.csr_matrix(state.positives)
    pop_mean = np.asarray((x > 0).astype(np.float32) @ np.log(pop_share + 1e-7)).ravel() / np.maximum(n_pos, 1)
    feats += [search, np.log1p(n_pos)[:, None] * ones, state.events_week[:, None] * ones,
              pop_mean[:, None] * ones]

    feats += _time_features(st, state, c0)

    out = np.stack([np.asarray(f, dtype=np.float32) for f in feats], axis=2)
    out[cols < 0] = np.nan
    if not context:
        keep = [i for i, n in enumerate(feature_names(cands.sources)) if n not in CONTEXT_FEATURES]
        out = out[:, :, keep]
    return out


def _time_features(st, state: UserState, c0: np.ndarray) -> list[np.ndarray]:
    """Days between when a title was engaged with (by anyone) and when the user was active:
    first engagement against the user's last positive, mean against mean. NaN when unknown."""
    b, c = c0.shape
    if len(st.first_s) == 0 or len(st.time_edges) == 0 or state.ts is None:  # saved before these
        return [np.full((b, c), np.nan, np.float32)] * 3
    t = sp.csr_matrix(state.ts)
    n = np.diff(t.indptr)
    last = np.full(b, np.nan)
    mean = np.full(b, np.nan)
    has = n > 0
    if has.any():
        last[has] = np.maximum.reduceat(t.data, t.indptr[:-1][has])
        mean[has] = np.add.reduceat(t.data, t.indptr[:-1][has]) / n[has]
    # the title's share of engagement in the periods the user was active (their positives' spans)
    tb = time_bin(st.time_edges, t.data)
    rows = np.repeat(np.arange(b), n)
    hist = np.zeros((b, len(st.time_edges) - 1), np.float32)
    np.add.at(hist, (rows, tb), 1.0)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    period = np.log(np.einsum("bt,tbc->bc", hist, st.pop_time[:, c0]) + 1e-7)
    day = 86400.0
    return [(st.first_s[c0] - last[:, None]) / day, (st.mean_s[c0] - mean[:, None]) / day, period]


def _context_fit(st, state: UserState, c0: np.ndarray) -> list[np.ndarray]:
    """How well each candidate fits where and when the user watches: the title's log lift in each
    (device, local daypart) cell weighted by the user's share of the cell, and the lift in the
    user's most frequent cell. 0 (no lift) when either side is unknown."""
    b, c = c0.shape
    lift, ctx = st.context_lift, state.context
    if lift.shape[0] == 0 or ctx.shape != (b, lift.shape[1]):  # a version saved before the cells
        return [np.zeros((b, c), np.float32)] * 2
    fit = np.einsum("bck,bk->bc", lift[c0], ctx)
    top = np.argmax(ctx, axis=1)
    at_top = np.where(ctx.max(axis=1, keepdims=True) > 0, lift[c0, top[:, None]], 0.0)
    return [fit, at_top]


def request_cells(state: UserState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(device index, local hour, cell) of the request each user is scored for; where the
    request is unknown, the user's most frequent (device, local daypart) cell stands in (its
    hour the daypart's middle); -1 / NaN where that is unknown too."""
    b = len(state)
    dev = state.req_device if len(state.req_device) == b else np.full(b, -1, np.int64)
    hour = state.req_hour if len(state.req_hour) == b else np.full(b, np.nan)
    ctx = state.context
    has_top = (ctx.shape == (b, len(DEVICES) * len(DAYPARTS))) and b > 0
    top = np.argmax(ctx, axis=1) if has_top else np.zeros(b, np.int64)
    habit = ctx.max(axis=1) > 0 if has_top else np.zeros(b, bool)
    known = (dev >= 0) & np.isfinite(hour)
    dev = np.where(known, dev, np.where(habit, top // len(DAYPARTS), -1))
    hour = np.where(known, hour, np.where(habit, (top % len(DAYPARTS)) * 6.0 + 3.0, np.nan))
    return dev, hour, daypart_cell(dev, hour)


def _request_features(st, state: UserState, c0: np.ndarray, runtime: np.ndarray,
                      fit: np.ndarray) -> list[np.ndarray]:
    """The request's context against each candidate: the title's log lift in the request's
    (device, local daypart) cell, that lift against the user's habitual fit, the local hour, and
    runtime (hours) on the request's device (mobile, TV, tablet). The device and hour are the
    request's when known (``UserState.req_device``/``req_hour``), else the user's most frequent
    cell (``request_cells``)."""
    b, c = c0.shape
    dev, hour, cell = request_cells(state)
    lift = st.context_lift
    if lift.shape[0] == 0 or lift.shape[1] != len(DEVICES) * len(DAYPARTS):
        at = np.zeros((b, c), np.float32)
    else:
        at = np.where((cell >= 0)[:, None], lift[c0, np.maximum(cell, 0)[:, None]], 0.0)
    d = dev[:, None]
    return [at, at - fit, np.repeat(hour[:, None], c, axis=1),
            runtime * (d == 1), runtime * (d == 0), runtime * (d == 2)]


def _title_genres(tg: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each title's genre columns and values in the matrix's stored order, (N, most genres),
    padded with -1 and 0."""
    tg = sp.csr_matrix(tg)
    n_per = np.diff(tg.indptr)
    width = int(n_per.max(initial=0))
    cols = np.full((tg.shape[0], width), -1, np.int64)
    vals = np.zeros((tg.shape[0], width), tg.dtype)
    rows = np.repeat(np.arange(tg.shape[0]), n_per)
    pos = np.arange(tg.nnz) - tg.indptr[rows]
    cols[rows, pos], vals[rows, pos] = tg.indices, tg.data
    return cols, vals


def _genre_parts(art: Artifacts) -> tuple[sp.csr_matrix, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The catalog's title x genre matrix as float32, each title's genre count (at least 1) and
    ``_title_genres`` of the matrix: the same for every batch of a model, so built once (kept
    while ``stats.genres`` is the same object)."""
    genres = art.stats.genres
    derived = art.__dict__.setdefault("_derived", {})  # as ``recall.candidates._cached``: not pickled
    got = derived.get("rank_genres")
    if got is None or got[0] is not genres:
        tg = genres.astype(np.float32)
        got = derived["rank_genres"] = (genres, tg, np.maximum(np.asarray(tg.sum(axis=1)).ravel(), 1.0),
                                        _title_genres(tg))
    return got[1], got[2], got[3]


def _genre_dot_at(title_genres: tuple[np.ndarray, np.ndarray], aff: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """(tg @ aff.T).T at the candidates only, (B, C) float32, from ``title_genres = _title_genres(tg)``:
    each title's genres summed in the order the sparse product sums them (stored order, float32),
    so the values are the same."""
    cols, vals = title_genres
    dt = np.result_type(vals.dtype, aff.dtype)
    aff = np.asarray(aff, dt)
    vals = vals.astype(dt, copy=False)
    out = np.zeros(c0.shape, dt)
    rows = np.arange(c0.shape[0])[:, None]
    for j in range(cols.shape[1]):
        g = cols[c0, j]
        out += np.where(g >= 0, vals[c0, j] * aff[rows, np.maximum(g, 0)], dt.type(0))
    return out.astype(np.float32, copy=False)


def _genre_max_at(title_genres: tuple[np.ndarray, np.ndarray], aff: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """The user's largest affinity among each candidate's genres (0 without any), (B, C), from
    ``title_genres = _title_genres(tg)``."""
    cols, _ = title_genres
    out = np.zeros(c0.shape, np.float32)
    rows = np.arange(c0.shape[0])[:, None]
    for j in range(cols.shape[1]):
        g = cols[c0, j]
        out = np.where(g >= 0, np.maximum(out, aff[rows, np.maximum(g, 0)]), out)
    return out


def _kind_share(positives: sp.csr_matrix, kind: np.ndarray) -> np.ndarray:
    k = sp.csr_matrix((np.ones(len(kind), np.float32), (np.arange(len(kind)), kind)),
                      shape=(len(kind), len(KINDS)))
    a = np.asarray((sp.csr_matrix(positives) @ k).todense(), dtype=np.float32)
    s = a.sum(axis=1, keepdims=True)
    return np.divide(a, s, out=np.full_like(a, 1.0 / len(KINDS)), where=s > 0)
