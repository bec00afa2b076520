"""Stage 2: the label window never leaks into features; exclusions; the ranker end to end."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))
import batch_world  # noqa: E402
from test_train import small_config  # noqa: E402

from reelrec.batch.pipeline import Pipeline, RankerRecommender, fit_stage1  # noqa: E402
from reelrec.domain.events import EVENT_SCHEMA  # noqa: E402
from reelrec.rank.features import build_features, feature_names  # noqa: E402
from reelrec.rank.ranker import RankerParams, label_window  # noqa: E402
from reelrec.recall.ann import is_member  # noqa: E402

UTC = dt.timezone.utc


def _late_title_events(data):
    """The new drama t40, unwatched before, watched by group-B users on day 20 only (after any
    inner cutoff)."""
    rows = []
    for u in range(30, 45):
        rows.append(dict(event_id=f"late{u}", user_id=f"u{u:02d}", title_id="t40", type="complete",
                         ts=batch_world.T0 + dt.timedelta(days=20), device="tv"))
    return pa.concat_tables([data.events, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)])


def _window_features(data, w):
    cfg = small_config()
    s1 = fit_stage1(w.matrix.positives, w.ts, w.matrix.negatives, w.matrix.finished, w.events, data.catalog,
                    data.matrix.user_ids, data.users, w.ref, cfg, cfg.als, 250.0)
    pipe = Pipeline(s1.art, None, cfg, s1.users, s1.user_ids)
    state = s1.users.take(np.arange(len(s1.users)))
    cands, dense = pipe.candidates(state)
    return s1, cands, build_features(s1.art, state, cands, dense), feature_names(cands.sources)


def test_temporal_labels_come_after_every_feature_event():
    base = batch_world.train_data()
    ev = _late_title_events(base)
    data = batch_world.train_data(ev, cutoff=batch_world.T0 + dt.timedelta(days=30))
    w = label_window(data.events, data.matrix, data.catalog, data.cutoff, RankerParams())
    t_feat = pc.max(w.events.column("ts")).as_py()
    assert t_feat < w.ref
    # every label pair's first event is at or after the cutoff, and not a feature positive
    lr = np.repeat(np.arange(w.labels.shape[0]), np.diff(w.labels.indptr))
    assert not is_member(w.matrix.positives, lr, w.labels.indices).any()
    t40 = data.catalog.index_of("t40")
    assert w.labels[:, t40].nnz >= 15
    # the late watches are labels, so the window knows nothing of them: no popularity, no trend
    s1, cands, x, names = _window_features(data, w)
    late_users = [data.matrix.user_index()[f"u{u:02d}"] for u in range(30, 45)]
    assert s1.art.stats.pop[t40] == 0 and s1.art.stats.trend_week[t40] == 0
    assert s1.users.positives[late_users][:, t40].nnz == 0
    # features of the window are the same whether or not the label events exist at all
    clean = data.events.filter(pc.less(data.events.column("ts"), pa.scalar(w.ref, EVENT_SCHEMA.field("ts").type)))
    s1b, cands_b, xb, _ = _window_features(data, w.__class__(clean, w.matrix, w.ts, w.labels, w.ref))
    np.testing.assert_array_equal(cands.cols, cands_b.cols)
    np.testing.assert_allclose(x, xb, equal_nan=True)


def test_random_window_removes_every_event_of_a_label_pair():
    data = batch_world.train_data()
    w = label_window(data.events, data.matrix, data.catalog, None, RankerParams(label_frac=0.25, seed=1))
    assert w.labels.nnz > 0
    held = set()
    lr = np.repeat(np.arange(w.labels.shape[0]), np.diff(w.labels.indptr))
    for r, c in zip(lr, w.labels.indices):
        held.add((data.matrix.user_ids[r], data.matrix.title_ids[c]))
    pairs = set(zip(w.events.column("user_id").to_pylist(), w.events.column("title_id").to_pylist()))
    assert not (held & pairs)
    assert not is_member(w.matrix.positives, lr, w.labels.indices).any()
    # and the held-out pairs were real positives
    assert is_member(data.matrix.positives, lr, w.labels.indices).all()


def _homepage_pipeline():
    """Exclusions as on a homepage (seen titles allowed back unless excluded for a reason)."""
    data = batch_world.train_data()
    extra = []
    # u00 (GB, drama) thumbs down t01 (unseen); u01 finished t02 and rewatched it; u31 (US) likes t41's genre
    extra.append(dict(event_id="x1", user_id="u00", title_id="t01", type="thumbs_down",
                      ts=batch_world.T0 + dt.timedelta(days=1)))
    for i, (typ, day) in enumerate([("play_start", 1), ("complete", 1.1), ("play_start", 2)]):
        extra.append(dict(event_id=f"x2{i}", user_id="u01", title_id="t02", type=typ,
                          ts=batch_world.T0 + dt.timedelta(days=day)))
    ev = pa.concat_tables([data.events, pa.Table.from_pylist(extra, schema=EVENT_SCHEMA)])
    data = batch_world.train_data(ev)
    rec = RankerRecommender(small_config(exclude_seen=False)).fit(data)
    return data, rec


def test_exclusions_thumbs_down_finished_and_region():
    data, rec = _homepage_pipeline()
    ids = data.matrix.user_index()
    out = rec.recommend(np.array([ids["u00"], ids["u01"], ids["u31"], ids["u32"], ids["u02"]]), 40)
    cols = data.catalog.index_of
    assert cols("t01") not in out[0]  # thumbs down
    fin = data.matrix.finished.toarray()
    for i, u in enumerate(["u00", "u02"]):  # finished, never rewatched: never back on the page
        row = out[[0, 4][i]]
        assert not fin[ids[u], row[row >= 0]].any()
    assert data.matrix.finished[ids["u01"], cols("t02")] == 0  # a rewatch is not "finished"
    assert cols("t41") not in out[2] and cols("t41") not in out[3]  # GB-only title, US users


def test_ranker_puts_the_taste_block_first_and_features_are_finite():
    data = batch_world.train_data(n_users=80, per_user=8)
    rec = RankerRecommender(small_config()).fit(data)
    assert rec.report["ranker"]["groups"] > 0
    out = rec.recommend(np.arange(80), 5)
    drama = (out[:40] < 20) | (out[:40] == 40)
    comedy = ((out[40:] >= 20) & (out[40:] < 40)) | (out[40:] == 41)
    assert drama.mean() > 0.9 and comedy.mean() > 0.9
    state = rec.pipeline.users.take(np.arange(8))
    cands, dense = rec.pipeline.candidates(state)
    x = rec.pipeline.features(state, cands, dense)
    assert x.shape[2] == len(feature_names(cands.sources)) == rec.pipeline.ranker.num_feature()
    core = [feature_names(cands.sources).index(n) for n in ("ann_rel", "genre_affinity", "pop_log")]
    assert np.isfinite(x[cands.valid][:, core]).all()


def test_speed_layer_scores_one_user_after_fold_in():
    data = batch_world.train_data()
    rec = RankerRecommender(small_config()).fit(data)
    pipe = rec.pipeline
    row = sp.csr_matrix(data.matrix.positives[[5]])
    vec = pipe.fold_in(row)
    assert vec.shape == (pipe.art.item_factors.shape[1],) and vec.dtype == np.float32
    state = pipe.state_from_history(row, region="GB", vector=vec)
    cols, scores = pipe.score(state, 5)
    assert cols.shape == (1, 5) and (np.diff(scores[0]) <= 1e-6).all()
    assert not (row.toarray()[0, cols[0]] > 0).any()
    trained = pipe.users.vectors[5]
    assert vec @ trained / (np.linalg.norm(vec) * np.linalg.norm(trained)) > 0.95
