"""The one pipeline object: candidates (stage 1) -> rank (stage 2) [-> compose, later].

The batch layer (precompute every page), the speed layer (one user after a fold-in) and the
evaluator all call ``Pipeline.score``, so the three can never drift apart. It works on a batch
of users given their state (``UserState``); ``state_for_rows`` builds that state for training
users, and ``state_from_history`` for any user from their interactions (the speed layer passes
the row it keeps online, after ``fold_in``).

``fit_pipeline`` learns everything from a ``TrainData``: it splits the training data into a
feature window and later labels (``reelrec.rank.ranker.label_window``), fits stage 1 on the
feature window (tuning ALS and EASE against the labels; ALS is a blend of its best few settings,
``recall.als.ALSBlend``), trains the LambdaRank ranker on the candidates' features, then refits
stage 1 on all the training data for serving.

Two ``Recommender``s for the evaluation harness live here: ``RankerRecommender``
("reelrec-ranker", the two stages) and ``ALSRecommender`` ("als", tuned ALS alone), so the ALS
baseline and reelrec's ALS are the same code.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.batch.progress import NullProgress
from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import index_of, seconds
from reelrec.domain.users import DAYPARTS, DEVICES, RequestContext, context_cell, table_regions, utc_offset_h
from reelrec.errors import Conflict, InvalidInput
from reelrec.log import get_logger
from reelrec.rank.features import build_features, feature_names
from reelrec.rank.ranker import (RankData, RankerParams, Window, aligned_ts, label_window, select_ranker,
                                 train_ranker)
from reelrec.recall.als import (BLEND_GRID, DEFAULT_GRID, ALSModel, ALSParams, als_params_from_dict, blend,
                                content_vectors, fit_als, fold_in, grid_size, ndcg_at_k, recommend_als,
                                topk_excluding, tune_als, _grid)
from reelrec.recall.ann import ANNConfig, ANNIndex
from reelrec.recall.candidates import (DEFAULT_QUOTAS, Artifacts, Candidates, UserState, dense_scores,
                                       merge, run_sources)
from reelrec.recall.covisit import EASE_MAX_TITLES, covisitation, ease
from reelrec.recall.itemitem import build as build_item_item
from reelrec.recall.popular import compute_stats
from reelrec.recommender import TrainData

log = get_logger(__name__)
UTC = dt.timezone.utc


@dataclass
class PipelineConfig:
    als: ALSParams = field(default_factory=ALSParams)
    tune: bool = True
    als_grid: dict = field(default_factory=lambda: dict(BLEND_GRID))
    # stage 1's ALS is a blend of the best ``als_members`` settings of the tuning (recall.als.ALSBlend);
    # 1: the single best setting. Each member widens the title vectors by its factors
    als_members: int = 4
    ease_lambdas: tuple[float, ...] = (500.0, 250.0, 1000.0)  # the first is used untuned
    ease_max_titles: int = 5_000  # dense inverse; EASE_MAX_TITLES is the hard limit
    quotas: dict = field(default_factory=lambda: dict(DEFAULT_QUOTAS))
    max_candidates: int = 300
    covisit_half_life_days: float = 30.0
    covisit_top: int = 200
    clusters: int = 16
    batch_users: int = 256
    exclude_seen: bool = True  # the evaluation contract: never return a training title
    ranker: RankerParams = field(default_factory=RankerParams)
    # the ranker's time-of-day and device features (rank.features.CONTEXT_FEATURES); off for the
    # ablation that measures what they add ("reelrec-ranker-nocontext")
    context_features: bool = True
    ann: ANNConfig = field(default_factory=ANNConfig)
    # further item-item sources (recall.itemitem), name -> parameters; each needs a quota (0: its
    # scores are ranker features only and it places no candidate)
    item_item: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def als_choice(members: int) -> dict:
    """``PipelineConfig`` fields for an ALS of ``members`` settings: a blend tunes on the wide
    grid; one setting on the narrow grid of before, since the single best of the wide grid
    over-regularises for the full data (docs/evaluation.md, "The ALS blend")."""
    return {"als_members": members, "als_grid": dict(DEFAULT_GRID if members == 1 else BLEND_GRID)}


# --- user state ----------------------------------------------------------------------------------
def user_context(events: pa.Table, user_ids: np.ndarray, genre_names: np.ndarray,
                 ref: dt.datetime, regions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user context from events before ``ref``: device shares, local time-of-day shares (the
    hour read in the time zone of the event's region, else the user's ``regions``), the joint
    (device, local daypart) shares, genres named in searches of the last 30 days, and events in
    the last week."""
    u = len(user_ids)
    ev = events.filter(pc.less(events.column("ts"), pa.scalar(ref, events.schema.field("ts").type)))
    row = index_of(ev.column("user_id"), pa.array(list(user_ids), pa.string()))
    ok = row >= 0
    t = seconds(ev.column("ts"))
    age_days = (ref.timestamp() - t) / 86400.0

    dev = index_of(ev.column("device"), pa.array(list(DEVICES), pa.string()))
    device = np.zeros((u, len(DEVICES)), np.float32)
    m = ok & (dev >= 0)
    np.add.at(device, (row[m], dev[m]), 1.0)
    user_off = utc_offset_h(regions) if regions is not None else np.zeros(u)
    off = np.where(ok, user_off[np.maximum(row, 0)], 0.0)
    if "region" in ev.column_names:
        has = pc.is_valid(ev.column("region")).to_numpy(zero_copy_only=False)
        if has.any():
            off = np.where(has, utc_offset_h(ev.column("region")), off)
    hour = np.floor(np.mod(t / 3600.0 + off, 24.0)).astype(np.int64) // 6
    hours = np.zeros((u, 4), np.float32)
    np.add.at(hours, (row[ok], hour[ok]), 1.0)
    cell = context_cell(dev, t, off)
    cells = np.zeros((u, len(DEVICES) * len(DAYPARTS)), np.float32)
    m = ok & (cell >= 0)
    np.add.at(cells, (row[m], cell[m]), 1.0)
    for a in (device, hours, cells):
        s = a.sum(axis=1, keepdims=True)
        np.divide(a, s, out=a, where=s > 0)

    search = np.zeros((u, len(genre_names)), np.float32)
    is_search = pc.equal(ev.column("type"), "search").to_numpy(zero_copy_only=False)
    sel = ok & is_search & (age_days <= 30)
    if sel.any() and len(genre_names):
        q = pc.utf8_lower(ev.column("query").fill_null("")).filter(pa.array(sel))
        rows = row[sel]
        for g, name in enumerate(genre_names):  # genres are few; each match is vectorised over events
            hit = pc.match_substring(q, str(name).lower()).to_numpy(zero_copy_only=False)
            np.add.at(search, (rows[hit], g), 1.0)
    week = np.bincount(row[ok & (age_days <= 7)], minlength=u).astype(np.float32)
    return {"device": device, "hour": hours, "search_genres": search, "events_week": np.log1p(week),
            "context": cells}


def pd_isnull(a: np.ndarray) -> np.ndarray:
    return pc.is_null(pa.array(list(a), pa.string())).to_numpy(zero_copy_only=False)


def user_regions(user_ids: np.ndarray, users: pa.Table | None, events: pa.Table) -> np.ndarray:
    """Each user's region: the users table, else the latest region on their events."""
    out = table_regions(users, user_ids)
    missing = pd_isnull(out)
    if missing.any() and "region" in events.column_names and events.num_rows:
        ev = events.filter(pc.is_valid(events.column("region")))
        if ev.num_rows:
            last = ev.group_by("user_id", use_threads=False).aggregate([("region", "last")])
            idx = index_of(last.column("user_id"), pa.array(list(user_ids), pa.string()))
            reg = last.column("region_last").to_numpy(zero_copy_only=False)
            sel = idx >= 0
            fill = np.full(len(user_ids), None, dtype=object)
            fill[idx[sel]] = reg[sel]
            out = np.where(missing, fill, out)
    return out


# --- stage 1 fit ---------------------------------------------------------------------------------
@dataclass
class Stage1:
    art: Artifacts
    users: UserState  # every training user, row-aligned with user_ids
    user_ids: np.ndarray


def catalog_attributes(catalog: Catalog) -> sp.csr_matrix:
    """Titles x (genres, kinds, origin regions) 0/1: what content vectors are built from."""
    t = catalog.table
    parts = []
    for col, is_list in (("genres", True), ("kind", False), ("origin_region", False)):
        c = t.column(col)
        if is_list:
            flat, parents = pc.list_flatten(c), pc.list_parent_indices(c).to_numpy()
        else:
            flat, parents = c, np.arange(t.num_rows)
        flat = pa.chunked_array([flat]).combine_chunks() if not isinstance(flat, pa.Array) else flat
        names = pc.unique(pc.drop_null(flat))
        idx = index_of(flat, names)
        ok = idx >= 0
        parts.append(sp.csr_matrix((np.ones(ok.sum(), np.float32), (parents[ok], idx[ok])),
                                   shape=(t.num_rows, len(names))))
    m = sp.hstack(parts).tocsr()
    m.data[:] = 1.0
    return m


def fit_stage1(positives: sp.csr_matrix, ts: sp.csr_matrix, negatives: sp.csr_matrix,
               finished: sp.csr_matrix, events: pa.Table, catalog: Catalog, user_ids: np.ndarray,
               users_table: pa.Table | None, ref: dt.datetime, cfg: PipelineConfig,
               als_params: ALSParams, ease_lambda: float | None, progress=None,
               als_model=None) -> Stage1:
    """Fit every stage-1 model on one window of data and build the users' state."""
    progress = progress or NullProgress()
    n = positives.shape[1]
    if als_model is None:
        with progress.step("als fit", als_params.iterations) as adv:
            als_model = fit_als(positives, als_params, on_iteration=lambda i, s: adv(1))
    trained = np.asarray((positives > 0).sum(axis=0)).ravel() > 0
    with progress.step("content vectors"):
        vectors = content_vectors(als_model.item_factors, trained, catalog_attributes(catalog))
    with progress.step("ann index"):
        index = ANNIndex.build(vectors, cfg.ann)
    with progress.step("co-visitation"):
        cov = covisitation(positives, ts, ref.timestamp(), cfg.covisit_half_life_days, cfg.covisit_top)
    b = None
    if ease_lambda is not None and n <= min(cfg.ease_max_titles, EASE_MAX_TITLES):
        with progress.step("ease"):
            b = ease(positives, ease_lambda)
    regions = user_regions(user_ids, users_table, events)
    with progress.step("title statistics"):
        stats, clusters = compute_stats(events, catalog.table, user_ids, positives, regions, ref,
                                        als_model.user_factors, cfg.clusters)
    item_item = {}
    for name, params in cfg.item_item.items():
        with progress.step(name):
            item_item[name] = build_item_item(name, positives, params, ts)
    art = Artifacts(np.asarray(catalog.ids, dtype=object), vectors, ~trained, als_model.params, index, cov,
                    stats, b, ref.timestamp(), item_item)
    with progress.step("user context"):
        ctx = user_context(events, user_ids, stats.genre_names, ref, regions)
    exclude = (negatives > 0).astype(np.float32)
    exclude = exclude.maximum((finished > 0).astype(np.float32))
    if cfg.exclude_seen:
        exclude = exclude.maximum((positives > 0).astype(np.float32))
    state = UserState(sp.csr_matrix(positives, dtype=np.float32), sp.csr_matrix(ts), sp.csr_matrix(exclude),
                      als_model.user_factors, stats.region_index(regions), clusters, ctx["device"],
                      ctx["hour"], ctx["search_genres"], ctx["events_week"], ctx["context"])
    return Stage1(art, state, np.asarray(user_ids, dtype=object))


# --- the pipeline --------------------------------------------------------------------------------
class Pipeline:
    """candidates -> rank for batches of users; one object for batch, speed layer and evaluator."""

    def __init__(self, art: Artifacts, ranker, cfg: PipelineConfig, users: UserState | None = None,
                 user_ids: np.ndarray | None = None):
        self.art, self.ranker, self.cfg = art, ranker, cfg
        self.users, self.user_ids = users, user_ids
        self._trained: tuple[object, list[str]] | None = None  # (ranker, its feature names)

    # stage 1
    def candidates(self, state: UserState) -> tuple[Candidates, dict[str, np.ndarray]]:
        dense = dense_scores(self.art, state, tuple(self.cfg.quotas))
        results = run_sources(self.art, state, self.cfg.quotas, dense)
        return merge(results, self.cfg.max_candidates), dense

    def features(self, state: UserState, cands: Candidates, dense) -> np.ndarray:
        x = build_features(self.art, state, cands, dense, self.cfg.context_features)
        return self._as_trained(x, cands.sources)

    def _as_trained(self, x: np.ndarray, sources: tuple[str, ...]) -> np.ndarray:
        """The feature columns the fitted ranker was trained on, by name. A version saved by an
        earlier reelrec (fewer features) keeps scoring after an upgrade, until the next retrain.

        Raises:
            Conflict: the ranker needs a feature this code no longer builds.
        """
        if self.ranker is None:
            return x
        have = feature_names(sources, self.cfg.context_features)
        if self._trained is None or self._trained[0] is not self.ranker:  # the ranker can be refit
            self._trained = (self.ranker, self.ranker.feature_name())
        want = self._trained[1]
        if want == have:
            return x
        missing = [n for n in want if n not in have]
        if missing:
            raise Conflict(f"the model's ranker needs features this code does not build: {missing[:5]}")
        return x[:, :, [have.index(n) for n in want]]

    # stage 2
    def score(self, state: UserState, k: int, with_sources: bool = False):
        """Top-``k`` (title columns, ranker scores) per user of the batch, best first, -1 padded.
        With ``with_sources``, also each title's best-placed recall source (names, "" padded)."""
        cands, dense = self.candidates(state)
        b, c = cands.cols.shape
        if c == 0:
            out = (np.full((b, k), -1, np.int64), np.full((b, k), -np.inf, np.float32))
            return out + (np.full((b, k), "", dtype=object),) if with_sources else out
        x = self.features(state, cands, dense)
        if self.ranker is not None:  # padding rows are not predicted (about a fifth at 100 K titles)
            s = np.full((b, c), -np.inf)
            s[cands.valid] = self.ranker.predict(x[cands.valid], num_threads=self.cfg.ranker.threads)
        else:  # no ranker yet: order by best source placement
            s = -np.nan_to_num(x[:, :, feature_names(cands.sources, self.cfg.context_features).index("best_rank")], nan=1e9)
        s = np.where(cands.valid, s, -np.inf).astype(np.float32)
        kk = min(k, c)
        part = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        cols = np.take_along_axis(cands.cols, part, axis=1)
        sc = np.take_along_axis(s, part, axis=1)
        cols = np.where(np.isfinite(sc), cols, -1)
        if kk < k:
            cols = np.pad(cols, ((0, 0), (0, k - kk)), constant_values=-1)
            sc = np.pad(sc, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        if not with_sources:
            return cols, sc
        best = np.argmin(cands.rank, axis=2)  # (B, C): the source that placed the title best
        names = np.asarray(cands.sources, dtype=object)[np.take_along_axis(best, part, axis=1)]
        names = np.where(cols[:, :kk] >= 0, names, "")
        if kk < k:
            names = np.pad(names, ((0, 0), (0, k - kk)), constant_values="")
        return cols, sc, names

    def recommend_rows(self, rows: np.ndarray, k: int, progress=None,
                       request: RequestContext | None = None) -> np.ndarray:
        """Top-``k`` title columns for training users ``rows`` (batched), each scored for its
        row of ``request`` (None: no request; each user's habitual cell stands in)."""
        if self.users is None:
            raise InvalidInput("this pipeline holds no user state; pass a UserState to score()", field="users")
        rows = np.asarray(rows, dtype=np.int64)
        if request is not None and len(request) != len(rows):
            raise InvalidInput(f"request context for {len(request)} users, {len(rows)} rows", field="context")
        out = np.full((len(rows), k), -1, dtype=np.int64)
        bs = self.cfg.batch_users
        for lo in range(0, len(rows), bs):
            sl = np.arange(lo, min(lo + bs, len(rows)))
            state = self.users.take(rows[sl]).with_request(request.take(sl) if request is not None else None)
            out[lo: lo + bs] = self.score(state, k)[0]
            if progress:
                progress(len(rows[lo: lo + bs]))
        return out

    def fold_in(self, user_items_row: sp.spmatrix) -> np.ndarray:
        """A user vector from one row (1 x titles) of positive weights: the speed layer's fold-in."""
        return fold_in(self.art.item_factors, user_items_row, self.art.als)[0]

    def state_from_history(self, positives: sp.spmatrix, ts: sp.spmatrix | None = None,
                           exclude: sp.spmatrix | None = None, region: str | None = None,
                           vector: np.ndarray | None = None, request: RequestContext | None = None) -> UserState:
        """The state of users known only by their interactions (e.g. the speed layer's online row),
        scored for ``request`` when given."""
        p = sp.csr_matrix(positives, dtype=np.float32)
        b = p.shape[0]
        if vector is not None:
            vec = np.asarray(vector, np.float32).reshape(b, -1)
        else:  # one call for the batch: the title side (Y'Y, float64 copy) is built once
            vec = fold_in(self.art.item_factors, p, self.art.als)
        ex = (p > 0).astype(np.float32) if exclude is None else sp.csr_matrix(exclude, dtype=np.float32)
        reg = self.art.stats.region_index([region] * b)
        st = self.art.stats
        if len(st.centroids) > 1:
            cl = np.argmin(((vec[:, None, :] - st.centroids[None]) ** 2).sum(-1), axis=1)
        else:
            cl = np.zeros(b, np.int64)
        state = UserState(p, sp.csr_matrix(ts) if ts is not None else None, sp.csr_matrix(ex), vec, reg, cl)
        return state.with_request(request) if request is not None else state


# --- fitting from TrainData ----------------------------------------------------------------------
def _full(recs: np.ndarray, users: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, recs.shape[1]), -1, dtype=np.int64)
    out[users] = recs
    return out


def _ndcg_dense(score_fn, exclude: sp.csr_matrix, labels: sp.csr_matrix, k: int = 10, batch: int = 1024) -> float:
    users = np.flatnonzero(np.diff(labels.indptr) > 0)
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for lo in range(0, len(users), batch):
        u = users[lo: lo + batch]
        recs[lo: lo + len(u)] = topk_excluding(score_fn(u), exclude[u], k)[0]
    return ndcg_at_k(_full(recs, users, labels.shape[0]), labels, k)


def _window_matrix_exclude(w: Window) -> sp.csr_matrix:
    m = w.matrix
    return sp.csr_matrix(((m.positives + m.negatives + m.finished) > 0).astype(np.float32))


def ranker_dataset(pipe: Pipeline, labels: sp.csr_matrix, advance=None, max_users: int | None = None,
                   seed: int = 42) -> tuple[RankData, int, int]:
    """Candidates and features of users with labels (at most ``max_users``, sampled), labelled:
    (the rows, labels found among the candidates, labels in all)."""
    from reelrec.recall.ann import is_member
    rows = np.flatnonzero(np.diff(labels.indptr) > 0)
    if max_users and len(rows) > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    xs, ys, groups, counts = [], [], [], []
    names: list[str] = []
    n_labels = np.diff(labels.indptr)
    hit, total = 0, int(labels[rows].nnz)
    for lo in range(0, len(rows), pipe.cfg.batch_users):
        r = rows[lo: lo + pipe.cfg.batch_users]
        state = pipe.users.take(r)
        cands, dense = pipe.candidates(state)
        if cands.cols.shape[1]:
            names = feature_names(cands.sources, pipe.cfg.context_features)
            x = pipe.features(state, cands, dense)
            b, c = cands.cols.shape
            y = is_member(labels[r], np.repeat(np.arange(b), c), np.maximum(cands.cols.ravel(), 0)).reshape(b, c)
            y &= cands.valid
            hit += int(y.sum())
            keep = y.any(axis=1)  # a group without a positive teaches LambdaRank nothing
            v = cands.valid[keep]
            xs.append(x[keep][v])
            ys.append(y[keep][v].astype(np.float32))
            groups.append(v.sum(axis=1))
            counts.append(n_labels[r][keep])
        if advance:
            advance(len(r))
    if not xs:
        return RankData(np.zeros((0, len(names))), np.zeros(0), np.zeros(0, np.int64), names,
                        np.zeros(0, np.int64), len(rows)), 0, total
    return RankData(np.concatenate(xs), np.concatenate(ys), np.concatenate(groups), names,
                    np.concatenate(counts), len(rows)), hit, total


def _window_rows(data: TrainData, w: Window, cfg: PipelineConfig, als_params: ALSParams,
                 ease_lambda: float | None, progress, seed: int, als_model=None) -> tuple[RankData, int, int]:
    """Stage 1 fitted on window ``w``'s features, and the ranker rows of its labelled users."""
    m = data.matrix
    s1 = fit_stage1(w.matrix.positives, w.ts, w.matrix.negatives, w.matrix.finished, w.events, data.catalog,
                    m.user_ids, data.users, w.ref, cfg, als_params, ease_lambda, progress, als_model)
    users = s1.users.with_request(w.request) if w.request is not None else s1.users
    pipe_w = Pipeline(s1.art, None, cfg, users, s1.user_ids)
    n_users = min(int((np.diff(w.labels.indptr) > 0).sum()), cfg.ranker.max_users)
    with progress.step("ranker features", n_users) as adv:
        return ranker_dataset(pipe_w, w.labels, adv, cfg.ranker.max_users, seed)


def fit_pipeline(data: TrainData, cfg: PipelineConfig | None = None, progress=None) -> tuple[Pipeline, dict]:
    """Learn the whole pipeline from ``data`` (see the module docstring). Returns it and a report
    (chosen parameters, validation NDCG of each tuned model and of the ranker, sizes)."""
    cfg = cfg or PipelineConfig()
    progress = progress or NullProgress()
    m = data.matrix
    if m.positives.nnz == 0:
        raise InvalidInput("no positive interactions to train on", field="events")
    report: dict = {"users": int(m.shape[0]), "titles": int(m.shape[1]), "positives": int(m.positives.nnz)}

    regions = user_regions(m.user_ids, data.users, data.events)
    with progress.step("label window"):
        w = label_window(data.events, m, data.catalog, data.cutoff, cfg.ranker, regions=regions)
    wx = _window_matrix_exclude(w)
    labels = w.tune_labels  # stage 1 is tuned against every positive of the window
    report["label_window"] = {"ref": w.ref.isoformat(), "labels": int(w.labels.nnz),
                              "kind": "temporal" if data.cutoff is not None else "random"}
    if w.all_labels is not None:
        report["label_window"].update(session=True, window_labels=int(w.all_labels.nnz))

    # tune ALS and EASE against the window's labels
    trials = []
    grid = cfg.als_grid if cfg.tune else {}
    combos = list(_grid(cfg.als, grid)) if grid else [cfg.als]
    keep = max(1, cfg.als_members)
    top: list[tuple[float, int, ALSModel]] = []  # the best ``keep`` fits so far, best first
    with progress.step("als tuning", len(combos)) as adv:
        for i, p in enumerate(combos):
            model = fit_als(w.matrix.positives, p)
            score = _ndcg_dense(model.scores, wx, labels) if labels.nnz else 0.0
            trials.append({**p.as_dict(), "ndcg@10": round(score, 5)})
            top = sorted([*top, (score, i, model)], key=lambda t: (-t[0], t[1]))[:keep]
            adv(1)
    best = top[0][0]
    best_model = blend([m for _, _, m in top])
    als_params = best_model.params
    window = best
    if len(top) > 1 and labels.nnz:  # what stage 1 will use: the blend, scored the same way
        window = _ndcg_dense(best_model.scores, wx, labels)
    report["als"] = {"chosen": als_params.as_dict(), "trials": trials, "best_ndcg@10": round(best, 5),
                     "window_ndcg@10": round(window, 5)}

    ease_lambda = None
    if m.shape[1] <= min(cfg.ease_max_titles, EASE_MAX_TITLES) and cfg.ease_lambdas:
        lams = cfg.ease_lambdas if cfg.tune else cfg.ease_lambdas[:1]
        xb = sp.csr_matrix((w.matrix.positives > 0).astype(np.float32))
        res = []
        with progress.step("ease tuning", len(lams)) as adv:
            for lam in lams:
                bm = ease(w.matrix.positives, lam)
                res.append((_ndcg_dense(lambda u: np.asarray(xb[u] @ bm), wx, labels), lam))
                adv(1)
        best_e, ease_lambda = max(res)
        report["ease"] = {"lambda": ease_lambda, "window_ndcg@10": round(best_e, 5),
                          "trials": [{"lambda": l, "ndcg@10": round(s, 5)} for s, l in res]}

    # the ranker: stage 1 on each feature window, features for users with labels. A random split
    # draws several windows (different held-out slices) so LambdaRank sees more groups; a temporal
    # split has one.
    windows = 1 if data.cutoff is not None else max(1, cfg.ranker.windows)
    parts: list[RankData] = []
    hit = total = 0
    w0 = w
    for wi in range(windows):
        if wi > 0:
            with progress.step("label window"):
                w = label_window(data.events, m, data.catalog, None,
                                 replace(cfg.ranker, seed=cfg.ranker.seed + wi), regions=regions)
            best_model = None
        d, h, t_ = _window_rows(data, w, cfg, als_params, ease_lambda, progress, cfg.ranker.seed + wi, best_model)
        parts.append(d)
        hit, total = hit + h, total + t_
    train = RankData.concat(parts)
    report["candidates_recall"] = round(hit / max(total, 1), 5)
    ranker = None
    params = cfg.ranker
    if cfg.ranker.select and len(parts[0].groups):
        # the serving gap, reproduced one level down: the first window's rows (stage 1 fitted on
        # everything but their labels) stand for serving; rows from windows drawn inside it
        # (stage 1 fitted on the window minus their own labels) stand for training
        inner: list[RankData] = []
        n_inner = 1 if data.cutoff is not None else max(1, cfg.ranker.inner_windows)
        for wi in range(n_inner):
            with progress.step("label window"):
                wv = label_window(w0.events, w0.matrix, data.catalog, w0.ref if data.cutoff is not None else None,
                                  replace(cfg.ranker, seed=cfg.ranker.seed + 100 + wi), regions=regions)
            if wv.labels.nnz:
                inner.append(_window_rows(data, wv, cfg, als_params, ease_lambda, progress,
                                          cfg.ranker.seed + 100 + wi)[0])
        inner = [d for d in inner if len(d.groups)]
        if inner:
            with progress.step("ranker selection"):
                params, trials = select_ranker(RankData.concat(inner), parts[0], cfg.ranker)
            params = replace(params, valid_share=0.0)
            report["ranker_selection"] = {"chosen": {"num_leaves": params.num_leaves,
                                                     "min_data_in_leaf": params.min_data_in_leaf,
                                                     "rounds": params.rounds},
                                          "trials": trials, "inner_groups": int(sum(len(d.groups) for d in inner))}
    if len(train.groups):
        with progress.step("ranker fit"):
            ranker = train_ranker(train.x, train.y, train.groups, train.names, params)
        sel = report.get("ranker_selection")
        valid = (max(t["ndcg@10"] for t in sel["trials"]) if sel else
                 round(float(ranker.best_score.get("valid_0", {}).get("ndcg@10", 0.0)), 5) if ranker.best_score
                 else None)
        report["ranker"] = {"rounds": int(ranker.best_iteration or ranker.current_iteration()),
                            "groups": len(train.groups), "rows": int(sum(train.groups)), "features": train.names,
                            "num_leaves": params.num_leaves, "min_data_in_leaf": params.min_data_in_leaf,
                            "valid_ndcg@10": valid}

    # serving: stage 1 again on all the training data
    ts = aligned_ts(data.events, data.catalog, m)
    t = seconds(data.events.column("ts"))
    ref = data.cutoff or dt.datetime.fromtimestamp(float(t.max()) + 1.0, tz=UTC)
    s_full = fit_stage1(m.positives, ts, m.negatives, m.finished, data.events, data.catalog, m.user_ids,
                        data.users, ref, cfg, als_params, ease_lambda, progress)
    report["als"]["chosen"] = s_full.art.als.as_dict()  # a blend's scales are those of this fit
    report["data"] = {"start": dt.datetime.fromtimestamp(float(t.min()), tz=UTC).isoformat(),
                      "end": dt.datetime.fromtimestamp(float(t.max()), tz=UTC).isoformat(),
                      "events": int(data.events.num_rows)}
    return Pipeline(s_full.art, ranker, cfg, s_full.users, s_full.user_ids), report


# --- Recommenders for the evaluation harness ---------------------------------------------------------
class RankerRecommender:
    """reelrec's two stages (candidates -> LambdaRank) behind the ``Recommender`` protocol;
    "reelrec-ranker-nocontext" is the same without the context features (the ablation)."""

    name = "reelrec-ranker"

    def __init__(self, config: PipelineConfig | None = None):
        self.config = config or PipelineConfig()
        self.pipeline: Pipeline | None = None
        self.report: dict = {}

    def fit(self, data: TrainData) -> "RankerRecommender":
        self.pipeline, self.report = fit_pipeline(data, self.config)
        return self

    @property
    def params(self) -> dict:
        """What the fit chose, for the evaluator's JSON: the ranker's settings and the trials of
        the serving-gap replica (empty before ``fit``)."""
        r = self.report.get("ranker")
        if not r:
            return {}
        out = {k: r[k] for k in ("rounds", "num_leaves", "min_data_in_leaf", "groups", "valid_ndcg@10") if k in r}
        if "label_window" in self.report:
            out["label_window"] = self.report["label_window"]
        if "ranker_selection" in self.report:
            out["selection_trials"] = self.report["ranker_selection"]["trials"]
        return out

    def recommend(self, users: np.ndarray, k: int) -> np.ndarray:
        if self.pipeline is None:
            raise InvalidInput("fit() before recommend()", field="model")
        return self.pipeline.recommend_rows(np.asarray(users), k)

    def recommend_in_context(self, users: np.ndarray, k: int, request: RequestContext) -> np.ndarray:
        """``recommend``, each user scored for their row of ``request`` (the evaluator passes the
        device and local hour of each test user's first test event)."""
        if self.pipeline is None:
            raise InvalidInput("fit() before recommend()", field="model")
        return self.pipeline.recommend_rows(np.asarray(users), k, request=request)

    def candidates(self, users: np.ndarray, n: int) -> np.ndarray:
        """The candidate stage alone: up to ``n`` title columns per user, best placed in any
        source first, -1 padded (the evaluator's candidate recall@100)."""
        if self.pipeline is None:
            raise InvalidInput("fit() before candidates()", field="model")
        rows = np.asarray(users, dtype=np.int64)
        out = np.full((len(rows), n), -1, dtype=np.int64)
        bs = self.config.batch_users
        for lo in range(0, len(rows), bs):
            cands, _ = self.pipeline.candidates(self.pipeline.users.take(rows[lo: lo + bs]))
            best = np.where(cands.valid, np.min(cands.rank, axis=2), np.inf)
            order = np.argsort(best, axis=1, kind="stable")[:, :n]
            cols = np.take_along_axis(cands.cols, order, axis=1)
            out[lo: lo + len(cols), : cols.shape[1]] = cols
        return out


class ALSRecommender:
    """ALS alone, tuned on a random holdout of the training positives, then refit on all of them."""

    name = "als"

    def __init__(self, params: ALSParams | None = None, grid: dict | None = None, tune: bool = True):
        self.params = params or ALSParams()
        self.grid = grid if grid is not None else dict(DEFAULT_GRID)
        self.tune = tune
        self.trials: list[dict] = []
        self.model = None
        self.exclude = None

    def fit(self, data: TrainData) -> "ALSRecommender":
        m = data.matrix
        if self.tune and self.grid:
            self.params, self.trials = tune_als(m.positives, self.params, self.grid)
        self.model = fit_als(m.positives, self.params)
        self.exclude = sp.csr_matrix(((m.positives + m.negatives + m.finished) > 0).astype(np.float32))
        return self

    def recommend(self, users: np.ndarray, k: int) -> np.ndarray:
        if self.model is None:
            raise InvalidInput("fit() before recommend()", field="model")
        return recommend_als(self.model, np.asarray(users, dtype=np.int64), self.exclude, k)


def make_recommender(name: str, seed: int = 42):
    """The batch layer's recommenders by name, for the evaluator's registry.

    Raises:
        InvalidInput: an unknown name.
    """
    if name == "als":
        return ALSRecommender(ALSParams(seed=seed))
    if name in ("reelrec-ranker", "reelrec-ranker-nocontext"):
        return RankerRecommender(PipelineConfig(als=ALSParams(seed=seed), ranker=RankerParams(seed=seed),
                                                context_features=name == "reelrec-ranker"))
    raise InvalidInput(f"no batch recommender named {name!r} (als, reelrec-ranker, reelrec-ranker-nocontext)",
                       field="models")


__all__ = ["make_recommender", "Pipeline", "PipelineConfig", "RankerRecommender", "ALSRecommender", "fit_pipeline",
           "fit_stage1", "grid_size"]


# --- persistence: a pipeline <-> the files of a model version --------------------------------------
_STATE_SPARSE = ("positives", "ts", "exclude")
_STATE_DENSE = ("vectors", "region", "cluster", "device", "hour", "search_genres", "events_week", "context")


def save_pipeline(pipe: Pipeline, folder) -> None:
    """Write a pipeline's files into ``folder`` (see reelrec.batch.versions for the layout)."""
    from pathlib import Path

    from reelrec.batch.versions import put_sparse
    folder = Path(folder)
    a = pipe.art
    arrays: dict[str, np.ndarray] = {
        "title_ids": np.asarray(a.title_ids, dtype=str), "item_factors": a.item_factors,
        "content": a.content, "ref_s": np.array(a.ref_s),
        "als": np.array(json.dumps(a.als.as_dict())),  # what the speed layer's fold-in needs
    }
    for k, v in a.stats.arrays().items():
        arrays[f"stats.{k}"] = v
    if pipe.users is not None:
        arrays["user_ids"] = np.asarray(pipe.user_ids, dtype=str)
        for name in _STATE_SPARSE:
            put_sparse(arrays, f"users.{name}", getattr(pipe.users, name))
        for name in _STATE_DENSE:
            arrays[f"users.{name}"] = np.asarray(getattr(pipe.users, name))
    with open(folder / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    with open(folder / "covisit.npz", "wb") as f:
        sp.save_npz(f, sp.csr_matrix(a.covisit), compressed=False)
    if a.ease is not None:
        np.save(folder / "ease.npy", a.ease)
    for name, w in a.item_item.items():
        with open(folder / f"item_item.{name}.npz", "wb") as f:
            sp.save_npz(f, sp.csr_matrix(w), compressed=False)
    a.ann.save(folder / "ann.faiss")
    if pipe.ranker is not None:
        (folder / "ranker.txt").write_text(pipe.ranker.model_to_string())


def config_from_dict(d: dict) -> PipelineConfig:
    d = dict(d)
    return PipelineConfig(als=ALSParams(**d.pop("als")), ranker=RankerParams(**d.pop("ranker")),
                          ann=ANNConfig(**d.pop("ann")),
                          **{k: tuple(v) if k == "ease_lambdas" else v for k, v in d.items()})


def load_pipeline(folder, config: dict) -> Pipeline:
    """Read a pipeline written by ``save_pipeline``; ``config`` is the manifest's ``config``."""
    from pathlib import Path

    from reelrec.batch.versions import get_sparse
    from reelrec.recall.popular import TitleStats
    folder = Path(folder)
    cfg = config_from_dict(config)
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    stats = TitleStats.from_arrays({k[len("stats."):]: v for k, v in arrays.items() if k.startswith("stats.")})
    cov = sp.load_npz(folder / "covisit.npz").tocsr()
    eb = np.load(folder / "ease.npy", allow_pickle=False) if (folder / "ease.npy").exists() else None
    item_item = {p.name[len("item_item."):-len(".npz")]: sp.load_npz(p).tocsr()
                 for p in sorted(folder.glob("item_item.*.npz"))}
    # a version saved before the ALS settings were stored folds in with the configured ones
    als = als_params_from_dict(json.loads(str(arrays["als"]))) if "als" in arrays else cfg.als
    art = Artifacts(arrays["title_ids"].astype(object), arrays["item_factors"], arrays["content"].astype(bool),
                    als, ANNIndex.load(folder / "ann.faiss", cfg.ann, arrays["item_factors"]), cov, stats, eb,
                    float(arrays["ref_s"]), item_item)
    users = user_ids = None
    if "user_ids" in arrays:
        user_ids = arrays["user_ids"].astype(object)
        # by name: a version saved before a field existed (e.g. the context cells) gets its default
        users = UserState(**{n: get_sparse(arrays, f"users.{n}") for n in _STATE_SPARSE},
                          **{n: arrays[f"users.{n}"] for n in _STATE_DENSE if f"users.{n}" in arrays})
    ranker = None
    if (folder / "ranker.txt").exists():
        import lightgbm as lgb
        ranker = lgb.Booster(model_str=(folder / "ranker.txt").read_text())
    return Pipeline(art, ranker, cfg, users, user_ids)
