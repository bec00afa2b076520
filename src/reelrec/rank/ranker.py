"""Stage 2: a LightGBM LambdaRank model over the candidates' features, and its label window.

Labels come strictly from a later window than the features. ``label_window`` splits the training
data into a feature window and label pairs:

* temporal data (``cutoff`` given): events before the cutoff build the features and stage 1;
  titles a user first turns positive at or after it are the labels;
* a random split (no time order to respect): a random slice of each user's positives is held
  out as labels and every event of a held-out (user, title) pair is removed from the features.

Either way no label event can reach its own features; tests/test_rank.py checks it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.config import SignalWeights
from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import InteractionMatrix, index_of
from reelrec.domain.signals import fold_interactions
from reelrec.recall.als import holdout_random


@dataclass
class RankerParams:
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    rounds: int = 300
    early_stopping: int = 30
    feature_fraction: float = 0.8
    valid_share: float = 0.15
    seed: int = 42
    label_frac: float = 0.25


@dataclass
class Window:
    """A feature window and its labels: features from ``events``/``matrix``, labels after."""

    events: pa.Table
    matrix: InteractionMatrix
    ts: sp.csr_matrix  # aligned with matrix.positives, epoch seconds
    labels: sp.csr_matrix  # (users, titles) 1 where the title is a label positive
    ref: dt.datetime  # features see events strictly before this time


def aligned_ts(events: pa.Table, catalog: Catalog, matrix: InteractionMatrix,
               weights: SignalWeights | None = None, interactions: pa.Table | None = None) -> sp.csr_matrix:
    """The last event time (epoch seconds) of each positive of ``matrix``, same sparsity."""
    f = interactions if interactions is not None else fold_interactions(events, catalog.table, weights)
    rows = index_of(f.column("user_id"), pa.array(list(matrix.user_ids), pa.string()))
    cols = index_of(f.column("title_id"), pa.array(list(matrix.title_ids), pa.string()))
    t = pc.cast(f.column("last_ts"), pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64) / 1000.0
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
    return pc.cast(events.column("ts"), pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64) / 1000.0


def label_window(events: pa.Table, matrix: InteractionMatrix, catalog: Catalog,
                 cutoff: dt.datetime | None, params: RankerParams,
                 weights: SignalWeights | None = None) -> Window:
    """Split training data into a feature window and later labels (see the module docstring).

    ``cutoff`` is the end of the outer training window for temporal data; the inner cutoff is
    the 80th percentile of event times before it. None means a random split.
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
        lm = InteractionMatrix.from_interactions(fold_interactions(le, catalog.table, weights),
                                                 matrix.title_ids, user_ids=matrix.user_ids)
        seen = (fm.positives + fm.negatives) > 0
        labels = sp.csr_matrix((lm.positives > 0).astype(np.float32) - (lm.positives > 0).multiply(seen))
        labels.eliminate_zeros()
        return Window(fe, fm, aligned_ts(fe, catalog, fm, weights, fi), labels, ref)

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


def train_ranker(x: np.ndarray, y: np.ndarray, group_sizes: np.ndarray, names: list[str],
                 params: RankerParams | None = None):
    """Fit LambdaRank on rows grouped by user (``group_sizes`` rows each, in order)."""
    import lightgbm as lgb
    params = params or RankerParams()
    rng = np.random.default_rng(params.seed)
    g = len(group_sizes)
    valid = rng.random(g) < params.valid_share
    row_valid = np.repeat(valid, group_sizes)
    lp = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [10],
        "learning_rate": params.learning_rate, "num_leaves": params.num_leaves,
        "min_data_in_leaf": params.min_data_in_leaf, "feature_fraction": params.feature_fraction,
        "lambdarank_truncation_level": 20, "seed": params.seed, "verbosity": -1,
        "num_threads": 2, "deterministic": True, "force_row_wise": True,
    }
    dtrain = lgb.Dataset(x[~row_valid], y[~row_valid], group=group_sizes[~valid], feature_name=names,
                         free_raw_data=True)
    callbacks = []
    valid_sets = []
    if valid.any() and (~valid).any():
        dvalid = lgb.Dataset(x[row_valid], y[row_valid], group=group_sizes[valid], reference=dtrain)
        valid_sets = [dvalid]
        callbacks.append(lgb.early_stopping(params.early_stopping, verbose=False))
    booster = lgb.train(lp, dtrain, num_boost_round=params.rounds, valid_sets=valid_sets,
                        callbacks=callbacks)
    return booster
