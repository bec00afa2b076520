"""Non-personal and lightly personal sources of recall, and the title statistics behind them.

``TitleStats`` is computed once per training run from the lake's events (batch layer):
popularity (global, per region), trending (decayed counts over the last day and the last week,
global and per region), freshness, and per-cluster completion and click-through rates that the
ranker uses ("among similar users": users are clustered by k-means on their ALS vectors; the
cluster is the documented meaning of *similar*). The sources here are:

* ``trending``: a user's regional trending blended with global trending;
* ``new``: the newest titles by release/added date;
* ``genre_pop``: popular titles in the user's top genres (genre affinity from their positives).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.domain.catalog import KINDS
from reelrec.domain.users import DAYPARTS, DEVICES, context_cell, utc_offset_h
from reelrec.domain.matrix import index_of, seconds

DAY_S = 86400.0
TIME_BINS = 32
ENGAGED = ("play_start", "progress", "complete", "thumbs_up", "rating", "watchlist_add")


@dataclass
class TitleStats:
    regions: np.ndarray  # str codes; row r of the regional arrays
    pop: np.ndarray  # (N,) positives per title
    pop_region: np.ndarray  # (R, N)
    trend_day: np.ndarray  # (N,) decayed engagement, half-life one day, last week only
    trend_week: np.ndarray  # (N,) half-life one week, last four weeks
    trend_region: np.ndarray  # (R, N) half-life one week
    recent: np.ndarray  # (N,) positives in the last week
    age_days: np.ndarray  # (N,) days since release/added (NaN: unknown)
    mean_weight: np.ndarray  # (N,) mean positive weight
    completion: np.ndarray  # (K, N) smoothed completion rate per user cluster
    ctr: np.ndarray  # (K, N) smoothed plays per impression per user cluster
    completion_all: np.ndarray  # (N,)
    ctr_all: np.ndarray  # (N,)
    genres: sp.csr_matrix  # (N, G) title genres 0/1
    genre_names: np.ndarray
    kind: np.ndarray  # (N,) index into KINDS
    runtime_min: np.ndarray  # (N,)
    unavailable: sp.csr_matrix  # (R + 1, N): 1 where the title is not available in region r
    centroids: np.ndarray  # (K, f) user clusters in ALS space
    # when each title was engaged with (epoch seconds, NaN: never): the ranker sets them against
    # the user's own activity times (a title that first appears after a user's last visit is
    # rarely one of theirs)
    first_s: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # (N,) first engagement
    mean_s: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # (N,) mean engagement time
    # popularity by period: the window's engagements in TIME_BINS equal spans (edges in epoch
    # seconds), each row the titles' shares of that span
    time_edges: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # (T + 1,)
    pop_time: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (T, N)
    # where each title is watched: log lift of its plays and completions in each (device, local
    # daypart) cell (domain.users.context_cell) over the catalog's share of that cell, smoothed
    # toward no lift; what a user's own cell mix is set against (rank.features, "context_fit")
    context_lift: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), np.float32))  # (N, 16)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if sp.issparse(v):
                v = sp.csr_matrix(v)
                out[f"{f.name}__data"], out[f"{f.name}__indices"] = v.data, v.indices
                out[f"{f.name}__indptr"], out[f"{f.name}__shape"] = v.indptr, np.array(v.shape)
            else:
                out[f.name] = np.asarray(v) if v.dtype != object else v.astype(str)
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "TitleStats":
        kw = {}
        for f in fields(cls):
            if f.name not in a and f"{f.name}__data" not in a:
                continue  # a version written before the field existed: its default
            if f"{f.name}__data" in a:
                kw[f.name] = sp.csr_matrix((a[f"{f.name}__data"], a[f"{f.name}__indices"],
                                            a[f"{f.name}__indptr"]), shape=tuple(a[f"{f.name}__shape"]))
            else:
                kw[f.name] = a[f.name]
        return cls(**kw)

    def region_index(self, regions) -> np.ndarray:
        """Row of each region code in the regional arrays; -1 when unknown."""
        lookup = {r: i for i, r in enumerate(self.regions.tolist())}
        return np.array([lookup.get((r or "").upper(), -1) for r in regions], dtype=np.int64)


def title_attributes(catalog_table: pa.Table) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """(genres N x G 0/1, genre names, kind index, runtime minutes) from the catalog table."""
    genres = catalog_table.column("genres")
    flat = pc.list_flatten(genres)
    names = np.array(sorted(set(flat.to_pylist())), dtype=object)
    parents = pc.list_parent_indices(genres).to_numpy()
    gidx = index_of(flat, pa.array(list(names), pa.string()))
    n = catalog_table.num_rows
    g = sp.csr_matrix((np.ones(len(parents), np.float32), (parents, gidx)), shape=(n, len(names)))
    g.data[:] = 1.0
    kinds = catalog_table.column("kind").to_numpy(zero_copy_only=False)
    kind = np.select([kinds == k for k in KINDS], list(range(len(KINDS))), default=0)
    run = pc.if_else(pc.equal(catalog_table.column("kind"), "series"),
                     catalog_table.column("episode_runtime_min"), catalog_table.column("runtime_min"))
    runtime = pc.cast(run, pa.float64()).to_numpy(zero_copy_only=False)
    return g, names, kind, np.nan_to_num(runtime, nan=np.nan)


def compute_stats(events: pa.Table, catalog_table: pa.Table, user_ids: np.ndarray,
                  positives: sp.csr_matrix, user_regions: np.ndarray, ref: dt.datetime,
                  user_vectors: np.ndarray | None = None, clusters: int = 16, seed: int = 42,
                  prior_strength: float = 20.0) -> tuple[TitleStats, np.ndarray]:
    """Title statistics from events strictly before ``ref``; also returns each user's cluster."""
    n = catalog_table.num_rows
    ref_s = ref.timestamp()
    ev = events.filter(pc.less(events.column("ts"), pa.scalar(ref, events.schema.field("ts").type)))
    ev = ev.filter(pc.is_valid(ev.column("title_id")))
    cols = index_of(ev.column("title_id"), catalog_table.column("title_id"))
    urow = index_of(ev.column("user_id"), pa.array(list(user_ids), pa.string()))
    ok = cols >= 0
    ts = seconds(ev.column("ts"))
    types = ev.column("type").to_numpy(zero_copy_only=False)
    ev_reg = pc.utf8_upper(ev.column("region")) if "region" in ev.column_names \
        else pa.nulls(ev.num_rows, pa.string())
    user_reg = pc.utf8_upper(pa.array([None if r is None else str(r) for r in user_regions], pa.string()))
    regions = pc.unique(pa.concat_arrays([pc.drop_null(pa.chunked_array([ev_reg]).combine_chunks()),
                                          pc.drop_null(user_reg)]))
    regions = np.array(sorted(r for r in regions.to_pylist() if r), dtype=object)
    region_arr = pa.array(list(regions), pa.string())
    user_r = index_of(user_reg, region_arr)
    ridx = index_of(ev_reg, region_arr)
    ridx = np.where((ridx < 0) & (urow >= 0), user_r[np.maximum(urow, 0)], ridx)
    R = len(regions)

    engaged = ok & np.isin(types, ENGAGED)
    age = (ref_s - ts) / DAY_S
    trend_day = np.bincount(cols[engaged & (age <= 7)], np.exp2(-age[engaged & (age <= 7)]), n)
    wk = engaged & (age <= 28)
    w7 = np.exp2(-age / 7.0)
    trend_week = np.bincount(cols[wk], w7[wk], n)
    trend_region = np.zeros((R, n))
    rk = wk & (ridx >= 0)
    np.add.at(trend_region, (ridx[rk], cols[rk]), w7[rk])

    pos = sp.csr_matrix(positives)
    pop = np.asarray((pos > 0).sum(axis=0)).ravel().astype(np.float32)
    sums = np.asarray(pos.sum(axis=0)).ravel()
    mean_weight = np.divide(sums, pop, out=np.zeros(n), where=pop > 0).astype(np.float32)
    pop_region = np.zeros((R, n), dtype=np.float32)
    if R:
        onehot = sp.csr_matrix((np.ones((user_r >= 0).sum()), (user_r[user_r >= 0],
                                np.flatnonzero(user_r >= 0))), shape=(R, pos.shape[0]))
        pop_region = np.asarray((onehot @ (pos > 0).astype(np.float32)).todense(), dtype=np.float32)
    recent = np.bincount(cols[engaged & (age <= 7)], minlength=n).astype(np.float32)
    first_s = np.full(n, np.inf)
    np.minimum.at(first_s, cols[engaged], ts[engaged])
    first_s[~np.isfinite(first_s)] = np.nan
    cnt = np.bincount(cols[engaged], minlength=n)
    mean_s = np.divide(np.bincount(cols[engaged], ts[engaged], n), cnt, out=np.full(n, np.nan), where=cnt > 0)
    time_edges, pop_time = np.zeros(0), np.zeros((0, n), np.float32)
    if engaged.any():
        lo, hi = float(ts[engaged].min()), float(ts[engaged].max())
        time_edges = np.linspace(lo, max(hi, lo + 1.0), TIME_BINS + 1)
        tb = time_bin(time_edges, ts[engaged])
        pt = np.zeros((TIME_BINS, n), np.float64)
        np.add.at(pt, (tb, cols[engaged]), 1.0)
        pop_time = (pt / np.maximum(pt.sum(axis=1, keepdims=True), 1.0)).astype(np.float32)

    context_lift = _context_lift(ev, cols, types, ts, regions, ridx, n, prior_strength)

    # user clusters: "similar users" for completion and click-through rates
    k = int(max(1, min(clusters, len(user_ids) // 50)))
    f = user_vectors.shape[1] if user_vectors is not None else 1
    centroids = np.zeros((1, f), dtype=np.float32)
    ucl = np.zeros(len(user_ids), dtype=np.int64)
    if user_vectors is not None and k > 1:
        import faiss
        km = faiss.Kmeans(f, k, niter=20, seed=seed, spherical=False, verbose=False)
        km.train(np.ascontiguousarray(user_vectors, dtype=np.float32))
        centroids = km.centroids.astype(np.float32)
        ucl = km.index.search(np.ascontiguousarray(user_vectors, dtype=np.float32), 1)[1].ravel().astype(np.int64)
    K = centroids.shape[0]
    ecl = np.where(urow >= 0, ucl[np.maximum(urow, 0)], 0)

    def rates(num_mask, den_mask):
        num = np.zeros((K, n))
        den = np.zeros((K, n))
        np.add.at(num, (ecl[num_mask], cols[num_mask]), 1.0)
        np.add.at(den, (ecl[den_mask], cols[den_mask]), 1.0)
        gn, gd = num.sum(0), den.sum(0)
        prior = (gn.sum() + 1.0) / (gd.sum() + 2.0)  # catalog-wide rate, Laplace-smoothed
        glob = (gn + prior_strength * prior) / (gd + prior_strength)
        per = (num + prior_strength * glob[None, :]) / (den + prior_strength)
        return per.astype(np.float32), glob.astype(np.float32)

    completion, completion_all = rates(ok & (types == "complete"), ok & (types == "play_start"))
    ctr, ctr_all = rates(ok & (types == "play_start"), ok & (types == "impression"))

    g, gnames, kind, runtime = title_attributes(catalog_table)
    dates = []
    for c in ("release_date", "added_date"):
        d = pc.cast(pc.cast(catalog_table.column(c), pa.int32()), pa.float64()).to_numpy(zero_copy_only=False)
        dates.append(d)  # days since epoch; NaN when null
    newest = np.fmax(dates[0], dates[1])
    age_days = (ref_s / DAY_S - newest).astype(np.float32)

    avail = catalog_table.column("regions")
    flat = pc.utf8_upper(pc.list_flatten(avail))
    parents = pc.list_parent_indices(avail).to_numpy()
    restricted = pc.greater(pc.list_value_length(avail).fill_null(0), 0).to_numpy(zero_copy_only=False)
    fr = index_of(flat, pa.array(list(regions), pa.string()))
    allowed = np.zeros((R + 1, n), dtype=bool)  # row R: unknown region
    allowed[:, ~restricted] = True
    allowed[fr[fr >= 0], parents[fr >= 0]] = True
    allowed[R, :] = True  # a user of unknown region is not filtered
    unavailable = sp.csr_matrix(~allowed, dtype=np.float32)

    stats = TitleStats(
        regions=regions.astype(str), pop=pop, pop_region=pop_region, trend_day=trend_day.astype(np.float32),
        trend_week=trend_week.astype(np.float32), trend_region=trend_region.astype(np.float32),
        recent=recent, age_days=age_days, mean_weight=mean_weight, completion=completion, ctr=ctr,
        completion_all=completion_all, ctr_all=ctr_all, genres=g, genre_names=gnames.astype(str),
        kind=kind.astype(np.int64), runtime_min=runtime.astype(np.float32), unavailable=unavailable,
        centroids=centroids, first_s=first_s, mean_s=mean_s, time_edges=time_edges, pop_time=pop_time,
        context_lift=context_lift)
    return stats, ucl


def _context_lift(ev: pa.Table, cols: np.ndarray, types: np.ndarray, ts: np.ndarray, regions: np.ndarray,
                  ridx: np.ndarray, n: int, strength: float) -> np.ndarray:
    """(N, cells) log lift of each title's plays and completions per (device, local daypart) cell
    over all titles' share of the cell; ``strength`` pseudo-events pull a rare title to 0."""
    n_cells = len(DEVICES) * len(DAYPARTS)
    if "device" not in ev.column_names or not len(cols):
        return np.zeros((n, n_cells), np.float32)
    dev = index_of(ev.column("device"), pa.array(list(DEVICES), pa.string()))
    off = np.zeros(len(cols))
    known = ridx >= 0
    if len(regions):
        off[known] = utc_offset_h(list(regions))[ridx[known]]
    cell = context_cell(dev, ts, off)
    sel = (cols >= 0) & (cell >= 0) & np.isin(types, ("play_start", "complete"))
    cnt = np.zeros((n, n_cells))
    np.add.at(cnt, (cols[sel], cell[sel]), 1.0)
    tot = cnt.sum(axis=0)
    if tot.sum() == 0:
        return np.zeros((n, n_cells), np.float32)
    g = (tot + 1.0) / (tot.sum() + n_cells)
    share = (cnt + strength * g[None, :]) / (cnt.sum(axis=1, keepdims=True) + strength)
    return np.log(share / g[None, :]).astype(np.float32)


def time_bin(edges: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The span of ``edges`` each time falls in (times outside go to the first or last span)."""
    return np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)


def genre_affinity(positives: sp.csr_matrix, genres: sp.csr_matrix) -> np.ndarray:
    """Each user's share of positive weight per genre (rows sum to 1 where any)."""
    a = np.asarray((sp.csr_matrix(positives) @ genres).todense(), dtype=np.float32)
    s = a.sum(axis=1, keepdims=True)
    return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


def trending_scores(stats: TitleStats, region_idx: np.ndarray) -> np.ndarray:
    """(B, N) trending score: regional weekly trend blended with global day and week trends."""
    g = stats.trend_day / max(stats.trend_day.max(), 1e-9) + stats.trend_week / max(stats.trend_week.max(), 1e-9)
    out = np.repeat(g[None, :], len(region_idx), axis=0)
    if len(stats.regions):
        has = region_idx >= 0
        reg = stats.trend_region / np.maximum(stats.trend_region.max(axis=1, keepdims=True), 1e-9)
        out[has] += reg[region_idx[has]]
    return out.astype(np.float32)


def new_scores(stats: TitleStats, n_users: int) -> np.ndarray:
    s = -np.nan_to_num(stats.age_days, nan=1e9)
    return np.repeat(s[None, :].astype(np.float32), n_users, axis=0)


def genre_pop_scores(affinity: np.ndarray, stats: TitleStats, top_genres: int = 3) -> np.ndarray:
    """(B, N): sum over the user's top genres of affinity x the title's log popularity."""
    a = affinity.copy()
    if a.shape[1] > top_genres:
        cut = np.partition(a, -top_genres, axis=1)[:, -top_genres][:, None]
        a[a < cut] = 0.0
    pop = np.log1p(stats.pop + stats.recent)
    gp = stats.genres.multiply(pop[:, None]).T.tocsr()  # G x N
    return np.asarray(gp.T.dot(a.T).T, dtype=np.float32)
