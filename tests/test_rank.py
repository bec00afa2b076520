"""Stage 2: the label window never leaks into features; exclusions; the ranker end to end."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))
import batch_world  # noqa: E402
from test_train import small_config  # noqa: E402

from reelrec.batch.pipeline import Pipeline, RankerRecommender, fit_stage1  # noqa: E402
from reelrec.domain.events import EVENT_SCHEMA  # noqa: E402
from reelrec.errors import InvalidInput  # noqa: E402
from reelrec.batch.pipeline import make_recommender  # noqa: E402
from reelrec.eval.models import resolve  # noqa: E402
from reelrec.rank.features import CONTEXT_FEATURES, build_features, feature_names  # noqa: E402
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
    # nor when it was watched: the time features see no engagement of it
    assert np.isnan(s1.art.stats.first_s[t40]) and np.isnan(s1.art.stats.mean_s[t40])
    assert not s1.art.stats.pop_time[:, t40].any()
    assert s1.art.stats.time_edges[-1] < w.ref.timestamp()
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


def test_time_features_place_a_title_against_the_users_activity():
    """t40 is first watched on day 20 by group B: for a user whose positives all lie before it,
    the title came after their last visit; popularity in the user's periods is the title's share
    of the spans the user was active in."""
    data = batch_world.train_data(_late_title_events(batch_world.train_data()))
    cfg = small_config()
    m = data.matrix
    s1 = fit_stage1(m.positives, _ts(data), m.negatives, m.finished,
                    data.events, data.catalog, m.user_ids, data.users,
                    batch_world.T0 + dt.timedelta(days=30), cfg, cfg.als, None)
    st = s1.art.stats
    t40 = data.catalog.index_of("t40")
    assert st.first_s[t40] == (batch_world.T0 + dt.timedelta(days=20)).timestamp()
    u = m.user_index()["u00"]  # group A: never watched t40
    state = s1.users.take(np.array([u]))
    last = sp.csr_matrix(state.ts).data.max()
    from reelrec.recall.candidates import Candidates
    cands = Candidates(np.array([[t40, 0]]), np.zeros((1, 2, 1), np.float32), ("ann",))
    x = build_features(s1.art, state, cands, {})
    names = feature_names(("ann",))
    got = x[0, 0, names.index("title_first_vs_user_last")]
    assert got == pytest.approx((st.first_s[t40] - last) / 86400.0, rel=1e-5)
    period = x[0, :, names.index("pop_user_period")]
    # the user was never active when t40 was watched, so its share there is nil
    assert last < st.first_s[t40] and period[0] == pytest.approx(np.log(1e-7))
    assert period[1] > period[0]


def _ts(data):
    from reelrec.rank.ranker import aligned_ts
    return aligned_ts(data.events, data.catalog, data.matrix)


def test_nocontext_ranker_drops_exactly_the_context_features():
    assert resolve("reelrec-ranker-nocontext", 3).model.config.context_features is False
    assert make_recommender("reelrec-ranker", seed=3).config.context_features is True
    data = batch_world.train_data()
    rec = RankerRecommender(small_config(context_features=False)).fit(data)
    names = rec.report["ranker"]["features"]
    assert not set(CONTEXT_FEATURES) & set(names)
    assert rec.pipeline.ranker.num_feature() == len(names)
    state = rec.pipeline.users.take(np.arange(4))
    cands, dense = rec.pipeline.candidates(state)
    x = rec.pipeline.features(state, cands, dense)
    assert names == [n for n in feature_names(cands.sources) if n not in CONTEXT_FEATURES]
    x_all = build_features(rec.pipeline.art, state, cands, dense)
    keep = [i for i, n in enumerate(feature_names(cands.sources)) if n not in CONTEXT_FEATURES]
    np.testing.assert_array_equal(x, x_all[:, :, keep])
    assert rec.recommend(np.arange(4), 5).shape == (4, 5)


def test_a_ranker_trained_on_fewer_features_keeps_scoring_after_an_upgrade():
    """A model version saved by an earlier reelrec has a ranker that knows fewer features than
    this code builds; scoring picks the ranker's own columns by name instead of failing."""
    from dataclasses import replace
    data = batch_world.train_data()
    rec = RankerRecommender(small_config(context_features=False)).fit(data)
    older = rec.pipeline  # its ranker was trained without the context features
    newer = Pipeline(older.art, older.ranker, replace(older.cfg, context_features=True),
                     older.users, older.user_ids)
    state = older.users.take(np.arange(6))
    cols_old, s_old = older.score(state, 10)
    cols_new, s_new = newer.score(state, 10)
    np.testing.assert_array_equal(cols_new, cols_old)
    np.testing.assert_array_equal(s_new, s_old)
    cands, dense = newer.candidates(state)
    assert newer.features(state, cands, dense).shape[2] == older.ranker.num_feature()


def test_group_ndcg_matches_the_evaluators_ndcg():
    """The selection's metric is the evaluator's NDCG@10: labels missed by the candidates and
    users with no group still count."""
    from reelrec.eval import metrics as M
    from reelrec.rank.ranker import GroupNDCG, RankData
    rng = np.random.default_rng(3)
    # three users with labels; user 2 has no label among its candidates (no group)
    cands = [np.array([5, 1, 7, 9, 2, 11, 12, 13, 14, 15, 16, 17]), np.array([3, 4, 8])]
    labels = [{1, 9, 20}, {8}, {30, 31}]
    scores = [rng.random(len(c)) for c in cands]
    data = RankData(np.zeros((15, 1)), np.concatenate([[t in labels[i] for t in c] for i, c in enumerate(cands)]),
                    np.array([12, 3]), ["f"], np.array([3, 1]), label_users=3)
    got = GroupNDCG(data)(np.concatenate(scores))
    recs = np.full((3, 10), -1)
    for i, (c, s) in enumerate(zip(cands, scores)):
        top = c[np.argsort(-s, kind="stable")][:10]
        recs[i, : len(top)] = top
    rel = sp.lil_matrix((3, 40))
    for i, ls in enumerate(labels):
        for t in ls:
            rel[i, t] = 1
    assert got == pytest.approx(M.accuracy(recs, sp.csr_matrix(rel), 10)["ndcg@10"])


def test_selection_on_the_serving_gap_replica_picks_from_the_grid():
    data = batch_world.train_data(n_users=80, per_user=8)
    cfg = small_config()
    cfg.ranker.select, cfg.ranker.grid, cfg.ranker.max_rounds = True, ((3, 20),), 40
    rec = RankerRecommender(cfg).fit(data)
    sel = rec.report["ranker_selection"]
    pairs = [(t["num_leaves"], t["min_data_in_leaf"]) for t in sel["trials"]]
    assert pairs == [(cfg.ranker.num_leaves, cfg.ranker.min_data_in_leaf), (3, 20)]
    assert all(1 <= t["rounds"] <= 40 and 0.0 <= t["ndcg@10"] <= 1.0 for t in sel["trials"])
    best = max(sel["trials"], key=lambda t: t["ndcg@10"])
    assert sel["chosen"] == {k: best[k] for k in ("num_leaves", "min_data_in_leaf", "rounds")}
    assert rec.pipeline.ranker.current_iteration() == best["rounds"]
    assert sel["inner_groups"] > 0


def test_context_reads_local_time_and_title_lifts_follow_where_titles_are_watched():
    """An IN user (UTC+5:30) watching at 04:00 UTC watches at 09:30 local: a morning; a title only
    ever played on phones in the morning has its largest lift in the (mobile, morning) cell."""
    from reelrec.batch.pipeline import user_context
    from reelrec.domain.users import DAYPARTS, DEVICES, context_cell, utc_offset_h
    from reelrec.recall.popular import compute_stats
    assert utc_offset_h(["IN", "us", None, "ZZ"]).tolist() == [5.5, -5.0, 0.0, 0.0]
    assert utc_offset_h(pa.array(["IN", None, "JP"])).tolist() == [5.5, 0.0, 9.0]
    t = (batch_world.T0 + dt.timedelta(hours=4)).timestamp()
    mobile, morning = DEVICES.index("mobile"), DAYPARTS.index("morning")
    assert context_cell(np.array([mobile]), np.array([t]), np.array([5.5]))[0] == mobile * 4 + morning
    assert context_cell(np.array([mobile]), np.array([t]), np.array([0.0]))[0] == mobile * 4  # UTC: night
    rows = [dict(event_id=f"m{i}", user_id="u99", title_id="t05", type=typ, device="mobile", region="IN",
                 ts=batch_world.T0 + dt.timedelta(days=i, hours=4))
            for i in range(12) for typ in ("play_start", "complete")]
    base = batch_world.train_data()
    ev = pa.concat_tables([base.events, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)])
    ids = np.array(["u99", "u00"], dtype=object)
    ref = batch_world.T0 + dt.timedelta(days=40)
    ctx = user_context(ev, ids, np.array(["drama"]), ref, np.array(["IN", "GB"], dtype=object))
    assert ctx["hour"][0, morning] == 1.0 and ctx["context"][0, mobile * 4 + morning] == 1.0
    assert ctx["context"][1].sum() == pytest.approx(1.0)
    st, _ = compute_stats(ev, base.catalog.table, ids, sp.csr_matrix((2, len(base.catalog))),
                          np.array(["IN", "GB"], dtype=object), ref, None, 1)
    t05 = base.catalog.index_of("t05")
    assert np.argmax(st.context_lift[t05]) == mobile * 4 + morning and st.context_lift[t05].max() > 0


def test_the_evaluator_records_what_the_ranker_chose():
    rec = RankerRecommender(small_config())
    assert rec.params == {}
    rec.fit(batch_world.train_data())
    p = rec.params
    assert p["rounds"] == rec.pipeline.ranker.current_iteration()
    assert [(t["num_leaves"], t["min_data_in_leaf"]) for t in p["selection_trials"]][0] == (15, 5)


def test_a_version_saved_before_the_context_cells_loads_and_scores(tmp_path):
    from reelrec.batch.pipeline import load_pipeline, save_pipeline
    data = batch_world.train_data()
    rec = RankerRecommender(small_config()).fit(data)
    save_pipeline(rec.pipeline, tmp_path)
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as z:
        old = {k: z[k] for k in z.files if k not in ("users.context", "stats.context_lift")}
    with open(tmp_path / "arrays.npz", "wb") as f:
        np.savez(f, **old)
    pipe = load_pipeline(tmp_path, rec.config.as_dict())
    assert pipe.art.stats.context_lift.shape[0] == 0 and len(pipe.users.context) == 0
    state = pipe.users.take(np.arange(6))
    cols, scores = pipe.score(state, 5)
    assert (cols >= 0).all() and np.isfinite(scores).all()
    x = pipe.features(state, *pipe.candidates(state))
    fit = x[:, :, pipe.ranker.feature_name().index("context_fit")]
    assert (fit[np.isfinite(fit)] == 0).all()


@pytest.mark.parametrize("label_session", [False, True])
def test_temporal_window_request_is_the_first_label_event_and_nothing_else(label_session):
    """A temporal window's request is the device and local hour of each user's first event after
    the inner cutoff (the event's region's time zone, else the user's); the labels' titles,
    types and later events do not reach it, nor the features built with it. The same with the
    labels cut to the first label session."""
    base = batch_world.train_data()
    data = batch_world.train_data(_late_title_events(base), cutoff=batch_world.T0 + dt.timedelta(days=30))
    params = RankerParams(label_session=label_session)
    w = label_window(data.events, data.matrix, data.catalog, data.cutoff, params,
                     regions=np.array(["GB"] * 30 + ["US"] * 30, dtype=object))
    assert w.request is not None and len(w.request) == data.matrix.shape[0]
    ev = data.events
    t = ev.column("ts").to_pylist()
    ids = data.matrix.user_index()
    for u in ("u31", "u40", "u03"):
        mine = [(ts, d) for ts, d, uu in zip(t, ev.column("device").to_pylist(), ev.column("user_id").to_pylist())
                if uu == u and ts >= w.ref]
        r = ids[u]
        if not mine:
            assert w.request.device[r] == -1 and np.isnan(w.request.hour[r])
            continue
        ts, dev = min(mine)
        off = -5.0 if int(u[1:]) >= 30 else 0.0  # US / GB (the events carry no region)
        assert w.request.device[r] == ["tv", "mobile", "tablet", "web"].index(dev)
        assert w.request.hour[r] == pytest.approx((ts.timestamp() / 3600.0 + off) % 24.0)
    # the late t40 watches (day 20, tv) are the first label event of group B users 30-44 with no other
    late = [ids[f"u{u:02d}"] for u in range(30, 45)]
    assert (w.request.device[late] >= 0).all()

    # scramble everything of the label events but each user's first event's device and time
    # (their times stay, so the inner cutoff stays): titles, types, and later events' devices
    after = pc.greater_equal(ev.column("ts"), pa.scalar(w.ref, EVENT_SCHEMA.field("ts").type))
    before_ev, label_ev = ev.filter(pc.invert(after)), ev.filter(after)
    label_ev = label_ev.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    users_l = label_ev.column("user_id").to_pylist()
    first = np.array([i == 0 or users_l[i] != users_l[i - 1] for i in range(len(users_l))])
    n = label_ev.num_rows
    devices = np.where(first, np.array(label_ev.column("device").to_pylist(), dtype=object), "web")
    scrambled = label_ev.set_column(label_ev.schema.get_field_index("title_id"), "title_id",
                                    pa.array(["t00"] * n, pa.string()))
    scrambled = scrambled.set_column(scrambled.schema.get_field_index("type"), "type",
                                     pa.array(["search"] * n, pa.string()))
    scrambled = scrambled.set_column(scrambled.schema.get_field_index("device"), "device",
                                     pa.array(list(devices), pa.string()))
    w2 = label_window(pa.concat_tables([before_ev, scrambled.cast(ev.schema)]), data.matrix, data.catalog,
                      data.cutoff, params, regions=np.array(["GB"] * 30 + ["US"] * 30, dtype=object))
    assert w.labels.nnz > 0 and w2.ref == w.ref and w2.labels.nnz == 0  # the labels are gone, the request is not
    np.testing.assert_array_equal(w.request.device, w2.request.device)
    np.testing.assert_array_equal(w.request.hour, w2.request.hour)
    # and the window's features, built for that request, are the same either way
    s1, cands, _, names = _window_features(data, w)
    st = s1.users.with_request(w.request)
    x = build_features(s1.art, st, cands, {})
    st2 = s1.users.with_request(w2.request)
    np.testing.assert_allclose(x, build_features(s1.art, st2, cands, {}), equal_nan=True)


def test_request_features_read_the_request_cell_else_the_users_habit():
    data = batch_world.train_data()
    cfg = small_config()
    m = data.matrix
    s1 = fit_stage1(m.positives, _ts(data), m.negatives, m.finished, data.events, data.catalog, m.user_ids,
                    data.users, batch_world.T0 + dt.timedelta(days=30), cfg, cfg.als, None)
    from reelrec.domain.users import RequestContext
    from reelrec.recall.candidates import Candidates
    from reelrec.rank.features import REQUEST_FEATURES
    ids = m.user_index()
    rows = np.array([ids["u00"], ids["u01"]])  # tv / mobile users of GB
    state = s1.users.take(rows)
    lift = s1.art.stats.context_lift
    t00, t09 = data.catalog.index_of("t00"), data.catalog.index_of("t09")
    cands = Candidates(np.array([[t00, t09], [t00, t09]]), np.zeros((2, 2, 1), np.float32), ("ann",))
    names = feature_names(("ann",))
    col = {n: names.index(n) for n in REQUEST_FEATURES}
    # no request: the user's most frequent (device, local daypart) cell stands in
    x = build_features(s1.art, state, cands, {})
    top = np.argmax(state.context, axis=1)
    assert top[0] // 4 == 0 and top[1] // 4 == 1  # tv, mobile
    np.testing.assert_allclose(x[:, :, col["req_lift"]], lift[np.array([[t00, t09]]), top[:, None]], rtol=1e-6)
    assert x[0, 0, col["req_runtime_x_tv"]] == pytest.approx(100 / 60) and x[0, 0, col["req_runtime_x_mobile"]] == 0
    # a request from a phone at 08:00 local: the cell (mobile, morning) for both users
    req = RequestContext.of("mobile", 8, n=2)
    assert (req.cell == 1 * 4 + 1).all()
    xr = build_features(s1.art, state.with_request(req), cands, {})
    np.testing.assert_allclose(xr[:, :, col["req_lift"]], lift[[t00, t09], 5][None, :].repeat(2, 0), rtol=1e-6)
    assert (xr[:, :, col["req_hour"]] == 8).all()
    assert xr[0, 0, col["req_runtime_x_mobile"]] == pytest.approx(100 / 60)
    assert xr[0, 1, col["req_runtime_x_mobile"]] == pytest.approx(40 / 60)  # a series: its episode
    fit = x[:, :, names.index("context_fit")]
    np.testing.assert_allclose(xr[:, :, col["req_lift_vs_fit"]], xr[:, :, col["req_lift"]] - fit, rtol=1e-5, atol=1e-6)
    # everything but the request features is the same
    other = [i for i, n in enumerate(names) if n not in REQUEST_FEATURES]
    np.testing.assert_allclose(x[:, :, other], xr[:, :, other], equal_nan=True)


def test_ranker_recommends_for_a_request_context():
    data = batch_world.train_data(cutoff=batch_world.T0 + dt.timedelta(days=10))
    rec = RankerRecommender(small_config()).fit(data)
    from reelrec.domain.users import RequestContext
    rows = np.arange(10)
    out = rec.recommend_in_context(rows, 5, RequestContext.of("tv", 21, n=10))
    assert out.shape == (10, 5)
    np.testing.assert_array_equal(rec.recommend(rows, 5), rec.recommend_in_context(rows, 5, RequestContext.unknown(10)))
    with pytest.raises(InvalidInput, match="request context for 3 users") as err:
        rec.recommend_in_context(rows, 5, RequestContext.unknown(3))
    assert err.value.errors[0].field == "context"


def test_session_labels_keep_exactly_the_first_label_sessions_positives():
    """``label_session``: a temporal window's labels are the positives of each user's first
    session after the inner cutoff (its session id, else no gap over 30 minutes), the request
    that session's first event; without it, every positive of the label window."""
    base = batch_world.train_data()
    ev = base.events
    hand = ("u00", "u31", "u02")
    # the hand users' own history ends on day 5, well before the inner cutoff (about day 8)
    early = pc.or_(pc.invert(pc.is_in(ev.column("user_id"), pa.array(list(hand)))),
                   pc.less(ev.column("ts"), pa.scalar(batch_world.T0 + dt.timedelta(days=5),
                                                      EVENT_SCHEMA.field("ts").type)))
    day20 = batch_world.T0 + dt.timedelta(days=20)
    spec = [
        # u00: session s1 on a phone completes t40; s2, on the TV a day later, completes t41 and t38
        ("u00", "t40", "complete", 0, "mobile", "s1"), ("u00", None, "search", 5, "mobile", "s1"),
        ("u00", "t41", "complete", 1440, "tv", "s2"), ("u00", "t38", "complete", 1441, "tv", "s2"),
        # u31: the first session only searches; its later one completes t00
        ("u31", None, "search", 0, "tv", "s3"), ("u31", "t00", "complete", 600, "tv", "s4"),
        # u02, no session ids: t38 and t37 20 minutes apart (one session), t36 70 minutes later
        ("u02", "t38", "complete", 0, "web", None), ("u02", "t37", "complete", 20, "web", None),
        ("u02", "t36", "complete", 90, "tablet", None),
    ]
    rows = [dict(event_id=f"h{i}", user_id=u, title_id=t, type=ty, ts=day20 + dt.timedelta(minutes=m),
                 device=d, session_id=s) for i, (u, t, ty, m, d, s) in enumerate(spec)]
    ev = pa.concat_tables([ev.filter(early), pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)])
    data = batch_world.train_data(ev, cutoff=batch_world.T0 + dt.timedelta(days=30))
    regions = np.array(["GB"] * 30 + ["US"] * 30, dtype=object)
    whole = label_window(data.events, data.matrix, data.catalog, data.cutoff, RankerParams(), regions=regions)
    w = label_window(data.events, data.matrix, data.catalog, data.cutoff, RankerParams(label_session=True),
                     regions=regions)
    assert w.ref == whole.ref and w.ref < day20
    ids, titles = data.matrix.user_index(), list(data.matrix.title_ids)

    def labelled(win, labels=None):
        lab = win.labels if labels is None else labels
        return {u: {titles[c] for c in lab[ids[u]].indices} for u in hand}

    assert labelled(w) == {"u00": {"t40"}, "u31": set(), "u02": {"t38", "t37"}}
    assert labelled(whole) == {"u00": {"t40", "t41", "t38"}, "u31": {"t00"}, "u02": {"t38", "t37", "t36"}}
    # every other user's labels are their first session's too: a subset of the window's
    assert (w.labels - w.labels.multiply(whole.labels)).nnz == 0 and w.labels.nnz < whole.labels.nnz
    # stage 1 is still tuned against every positive of the window, and the request is unchanged
    assert whole.all_labels is None and (w.tune_labels != whole.labels).nnz == 0
    np.testing.assert_array_equal(w.request.device, whole.request.device)
    np.testing.assert_array_equal(w.request.hour, whole.request.hour)
    assert w.request.device[ids["u00"]] == 1  # mobile, the first session's
    # no label event reaches the features: the feature window is the same, and before the labels
    assert w.events.equals(whole.events) and pc.max(w.events.column("ts")).as_py() < w.ref
    lr = np.repeat(np.arange(w.labels.shape[0]), np.diff(w.labels.indptr))
    assert not is_member(w.matrix.positives, lr, w.labels.indices).any()
