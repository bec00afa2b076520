"""Stage 2: a LightGBM LambdaRank model over the candidates' features, and its label window.

Labels come strictly from a later window than the features. ``label_window`` splits the training
data into a feature window and label pairs:

* temporal data (``cutoff`` given): events before the cutoff build the features and stage 1;
  titles a user first turns positive at or after it are the labels;
* a random split (no time order to respect): a random slice of each user's positives is held
  out as labels and every event of a held-out (user, title) pair is removed from the features.

Either way no label event can reach its own features; tests/test_rank.py checks it. What a
temporal window's labels do pass on is the request they answer: the device and local hour of
each user's first event in the label window (``Window.request``), which the ranker's request
features read as a served request's device and hour; nothing else of those events. With
``RankerParams.label_session`` a temporal window's labels are only the positives of each user's
first session in the label window (``reelrec.eval.splits.first_session_events``, the session rule
of the ``--test-window session`` protocol): the session the request describes, as that protocol
scores it. ALS and EASE are still tuned against every positive of the window (``Window.all_labels``).

The ranker learns on features from stage-1 models fitted on the feature window and is served
features from stage-1 models fitted on all the training data, so its own held-out groups (drawn
from the same windows) cannot tell how it does at serving. ``select_ranker`` chooses the tree size
and the number of rounds on a replica of that gap instead: rows whose stage 1 was fitted on a
window of the window (``reelrec.batch.pipeline.fit_pipeline`` builds them) train each candidate,
and the window's own rows, whose stage 1 saw everything but their labels, score it by NDCG@10
against every label of the user, as the evaluator does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.config import SignalWeights
from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import InteractionMatrix, index_of, seconds
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import RequestContext, first_event_context
from reelrec.recall.als import holdout_random


@dataclass
class RankerParams:
    # values picked on MovieLens-100K windows (docs/benchmarks.md, "Batch layer")
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 200
    rounds: int = 150
    early_stopping: int = 0  # 0: train every round; the held-out groups only report NDCG
    feature_fraction: float = 0.9
    valid_share: float = 0.15
    seed: int = 42
    label_frac: float = 0.2  # share of each user's positives held out as labels (random splits)
    windows: int = 3  # label windows drawn on random splits (each refits stage 1)
    max_users: int = 20_000  # users (LambdaRank groups) sampled per window, to bound the fit
    # LightGBM's listwise objectives: "rank_xendcg" measured better than "lambdarank" on
    # MovieLens-100K (0.4805 vs 0.4733 NDCG@10 with early stopping); both stay available
    objective: str = "rank_xendcg"
    # one thread: on a shared 2-core machine LightGBM's two OpenMP threads spin against other
    # processes and ran 5x slower than one (measured, docs/benchmarks.md)
    threads: int = 1
    # choose (num_leaves, min_data_in_leaf) among the values above and the alternatives in
    # ``grid``, and the rounds (at most ``max_rounds``, stopping after ``patience`` rounds without
    # gain), on the serving-gap replica (``select_ranker``); the final ranker then trains on every
    # group. Off: the values above, with ``valid_share`` of the groups held out to report NDCG.
    select: bool = True
    grid: tuple = ((7, 1000), (4, 500))
    max_rounds: int = 250
    patience: int = 50
    round_step: int = 25
    inner_windows: int = 2  # label windows drawn inside the first window for the replica
    # temporal windows: label only the positives of each user's first session in the label window
    # (the session of the event the request is read from) instead of every positive of the window
    label_session: bool = False


@dataclass
class Window:
    """A feature window and its labels: features from ``events``/``matrix``, labels after."""

    events: pa.Table
    matrix: InteractionMatrix
    ts: sp.csr_matrix  # aligned with matrix.positives, epoch seconds
    labels: sp.csr_matrix  # (users, titles) 1 where the title is a label positive
    ref: dt.datetime  # features see events strictly before this time
    # per matrix row, the request the labels answer (temporal windows): the device and local hour
    # of the user's first event in the label window, all a real request would carry of it; None
    # for a random window (no time order), where the user's habitual cell stands in
    request: RequestContext | None = None
    # every positive of the label window where ``labels`` keeps fewer (``label_session``); what
    # stage 1 is tuned against. None: the same as ``labels``
    all_labels: sp.csr_matrix | None = None

    @property
    def tune_labels(self) -> sp.csr_matrix:
        return self.labels if self.all_labels is None else self.all_labels


def aligned_ts(events: pa.Table, catalog: Catalog, matrix: InteractionMatrix,
               weights: SignalWeights | None = None, interactions: pa.Table | None = None) -> sp.csr_matrix:
    """The last event time (epoch seconds) of each positive of ``matrix``, same sparsity."""
    f = interactions if interactions is not None else fold_interactions(events, catalog.table, weights)
    rows = index_of(f.column("user_id"), pa.array(list(matrix.user_ids), pa.string()))
    cols = index_of(f.column("title_id"), pa.array(list(matrix.title_ids), pa.string()))
    t = seconds(f.column("last_ts"))
    ok = (rows >= 0) & (cols >= 0)
    n = np.int64(matrix.shape[1])
    keys = rows[ok] * n + cols[ok]
    order = np.argsort(keys)
    keys, t = keys[order], t[ok][order]
    pos = sp.csr_matrix(matrix.positives)
    pos.sort_indices()
    q = np.repeat(np.arange(pos.shape[0], dtype=np.int64), np.diff(pos.indptr)) * n + pos.indices
    at = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    found = keys[at] == q if len(keys) else np.zeros(len(q), bool)
    when = np.where(found, t[at] if len(t) else 0.0, np.nanmax(t, initial=0.0))
    return sp.csr_matrix((when, pos.indices.copy(), pos.indptr.copy()), shape=pos.shape)


def event_times(events: pa.Table) -> np.ndarray:
    return seconds(events.column("ts"))


def label_window(events: pa.Table, matrix: InteractionMatrix, catalog: Catalog,
                 cutoff: dt.datetime | None, params: RankerParams,
                 weights: SignalWeights | None = None, regions=None) -> Window:
    """Split training data into a feature window and later labels (see the module docstring).

    ``cutoff`` is the end of the outer training window for temporal data; the inner cutoff is
    the 80th percentile of event times before it. None means a random split. ``regions`` (per
    matrix row) place the hour of a temporal window's request when its event has no region.
    """
    if cutoff is not None and events.num_rows:
        t = event_times(events)
        inner = float(np.quantile(t, 0.8))
        ref = dt.datetime.fromtimestamp(inner, tz=dt.timezone.utc)
        before = pa.array(t < inner)
        fe = events.filter(before)
        le = events.filter(pc.invert(before))
        fi = fold_interactions(fe, catalog.table, weights)
        fm = InteractionMatrix.from_interactions(fi, matrix.title_ids, user_ids=matrix.user_ids)
        seen = (fm.positives + fm.negatives) > 0

        def positives_of(ev: pa.Table) -> sp.csr_matrix:
            lm = InteractionMatrix.from_interactions(fold_interactions(ev, catalog.table, weights),
                                                     matrix.title_ids, user_ids=matrix.user_ids)
            lab = sp.csr_matrix((lm.positives > 0).astype(np.float32) - (lm.positives > 0).multiply(seen))
            lab.eliminate_zeros()
            return lab

        labels = all_labels = positives_of(le)
        if params.label_session:
            from reelrec.eval.splits import first_session_events
            labels = positives_of(first_session_events(le))
        request = first_event_context(le.select([c for c in ("user_id", "ts", "device", "region")
                                                  if c in le.column_names]), matrix.user_ids, regions)
        return Window(fe, fm, aligned_ts(fe, catalog, fm, weights, fi), labels, ref, request,
                      all_labels if params.label_session else None)

    keep, held = holdout_random(matrix.positives, params.label_frac, params.seed)
    held_b = sp.csr_matrix((held > 0).astype(np.float32))
    # drop every event of a held-out pair so its label cannot leak into the features
    from reelrec.recall.ann import is_member
    er = index_of(events.column("user_id"), pa.array(list(matrix.user_ids), pa.string()))
    ec = index_of(events.column("title_id"), pa.array(list(matrix.title_ids), pa.string()))
    known = (er >= 0) & (ec >= 0)
    held_event = np.zeros(events.num_rows, dtype=bool)
    held_event[known] = is_member(held_b, er[known], ec[known])
    fe = events.filter(pa.array(~held_event))
    keep_b = (keep > 0)
    fm = InteractionMatrix(matrix.user_ids, matrix.title_ids, sp.csr_matrix(keep),
                           sp.csr_matrix(matrix.negatives), sp.csr_matrix(matrix.finished.multiply(keep_b)))
    t = event_times(events)
    ref = dt.datetime.fromtimestamp(float(t.max()) + 1.0, tz=dt.timezone.utc) if len(t) else \
        dt.datetime.now(dt.timezone.utc)
    return Window(fe, fm, aligned_ts(fe, catalog, fm, weights), held_b, ref)


def _lgb_params(params: RankerParams) -> dict:
    return {
        "objective": params.objective, "metric": "ndcg", "eval_at": [10],
        "learning_rate": params.learning_rate, "num_leaves": params.num_leaves,
        "min_data_in_leaf": params.min_data_in_leaf, "feature_fraction": params.feature_fraction,
        "lambdarank_truncation_level": 20, "seed": params.seed, "verbosity": -1,
        "num_threads": params.threads, "deterministic": True, "force_row_wise": True,
    }


@dataclass
class RankData:
    """Ranker rows of a set of users: features ``x`` and labels ``y`` of their candidates, in
    groups of ``groups`` rows (only users with a label among their candidates get a group);
    ``n_labels`` is each group's user's number of labels in all (found or not), ``label_users``
    how many users had labels at all."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    names: list[str]
    n_labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    label_users: int = 0

    @staticmethod
    def concat(parts: list["RankData"]) -> "RankData":
        return RankData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                        np.concatenate([p.groups for p in parts]), parts[-1].names,
                        np.concatenate([p.n_labels for p in parts]), sum(p.label_users for p in parts))


class GroupNDCG:
    """NDCG@k of scores over ``RankData`` groups against every label of the user: a group's
    DCG of its top ``k`` over the ideal DCG of min(labels, k) hits; users with labels but no
    group count 0. The evaluator's definition, for choosing the ranker's settings."""

    def __init__(self, data: RankData, k: int = 10):
        g = data.groups.astype(np.int64)
        self.k, self.users = k, max(data.label_users, len(g))
        width = int(g.max(initial=1))
        starts = np.cumsum(g) - g
        col = np.arange(int(g.sum())) - np.repeat(starts, g)
        row = np.repeat(np.arange(len(g)), g)
        self.at = (row, col)
        self.shape = (len(g), max(width, k))
        self.y = np.zeros(self.shape, np.float32)
        self.y[self.at] = data.y
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        self.disc = disc
        self.idcg = np.cumsum(disc)[np.minimum(np.maximum(data.n_labels, 1), k).astype(np.int64) - 1] \
            if len(g) else np.zeros(0)

    def __call__(self, scores: np.ndarray) -> float:
        if not len(self.idcg):
            return 0.0
        s = np.full(self.shape, -np.inf)
        s[self.at] = scores
        top = np.argpartition(-s, self.k - 1, axis=1)[:, : self.k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        hits = np.take_along_axis(self.y, top, axis=1) > 0
        return float(((hits * self.disc).sum(axis=1) / self.idcg).sum() / self.users)


def select_ranker(train: RankData, valid: RankData, params: RankerParams) -> tuple[RankerParams, list[dict]]:
    """Choose (num_leaves, min_data_in_leaf), the configured pair or one of ``params.grid``, and the rounds: fit LambdaRank
    on ``train`` for each, score NDCG@10 on ``valid`` after every round (``GroupNDCG``), keep the
    best (fewer rounds, then the earlier entry of the grid, on a tie). Returns ``params`` with the choice, and the trials."""
    import lightgbm as lgb
    metric = GroupNDCG(valid)
    trials = []
    best: tuple[float, int, RankerParams] | None = None
    for leaves, min_data in dict.fromkeys([(params.num_leaves, params.min_data_in_leaf), *map(tuple, params.grid)]):
        p = replace(params, num_leaves=int(leaves), min_data_in_leaf=int(min_data))
        lp = {**_lgb_params(p), "metric": "None"}
        dtrain = lgb.Dataset(train.x, train.y, group=train.groups, feature_name=train.names, free_raw_data=False)
        dvalid = lgb.Dataset(valid.x, valid.y, group=valid.groups, reference=dtrain, free_raw_data=False)
        curve: list[float] = []

        def feval(preds, _data, curve=curve):
            curve.append(metric(preds))
            return "ndcg_all@10", curve[-1], True

        lgb.train(lp, dtrain, num_boost_round=params.max_rounds, valid_sets=[dvalid], feval=feval,
                  callbacks=[lgb.early_stopping(params.patience, verbose=False)])
        # the curve is noisy round to round: read it smoothed (a centred mean over
        # ``round_step`` rounds) at multiples of ``round_step``, so no lucky round is chosen
        c = np.asarray(curve)
        h = params.round_step // 2
        at = np.arange(params.round_step, len(c) + 1, params.round_step)
        if not len(at):
            at = np.array([len(c)])
        smooth = np.array([c[max(0, r - 1 - h): r + h].mean() for r in at])
        r = int(at[int(np.argmax(smooth))])
        trials.append({"num_leaves": p.num_leaves, "min_data_in_leaf": p.min_data_in_leaf, "rounds": r,
                       "ndcg@10": round(float(smooth.max()), 5), "ran": len(curve)})
        if best is None or smooth.max() > best[0]:
            best = (float(smooth.max()), r, p)
    assert best is not None
    return replace(best[2], rounds=best[1]), trials


def train_ranker(x: np.ndarray, y: np.ndarray, group_sizes: np.ndarray, names: list[str],
                 params: RankerParams | None = None):
    """Fit LambdaRank on rows grouped by user (``group_sizes`` rows each, in order)."""
    import lightgbm as lgb
    params = params or RankerParams()
    rng = np.random.default_rng(params.seed)
    g = len(group_sizes)
    valid = rng.random(g) < params.valid_share
    row_valid = np.repeat(valid, group_sizes)
    lp = _lgb_params(params)
    dtrain = lgb.Dataset(x[~row_valid], y[~row_valid], group=group_sizes[~valid], feature_name=names,
                         free_raw_data=True)
    callbacks = []
    valid_sets = []
    if valid.any() and (~valid).any():
        dvalid = lgb.Dataset(x[row_valid], y[row_valid], group=group_sizes[valid], reference=dtrain)
        valid_sets = [dvalid]
        if params.early_stopping:
            callbacks.append(lgb.early_stopping(params.early_stopping, verbose=False))
    booster = lgb.train(lp, dtrain, num_boost_round=params.rounds, valid_sets=valid_sets,
                        callbacks=callbacks)
    return booster
