"""Training: ALS and its fold-in, content vectors, tuning, model versions, the train CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))
import batch_world  # noqa: E402

from reelrec.batch.pipeline import PipelineConfig, RankerRecommender, ALSRecommender  # noqa: E402
from reelrec.batch.train import load_model, train  # noqa: E402
from reelrec.batch.versions import ModelStore  # noqa: E402
from reelrec.config import load_settings  # noqa: E402
from reelrec.errors import Conflict, InvalidInput, NotFound  # noqa: E402
from reelrec.rank.ranker import RankerParams  # noqa: E402
from reelrec.recall.als import (ALSParams, content_vectors, fit_als, fold_in, holdout_random,  # noqa: E402
                                recommend_als, tune_als)
from reelrec.recommender import Recommender  # noqa: E402


def small_config(**kw) -> PipelineConfig:
    base = dict(als=ALSParams(factors=8, regularization=0.5, alpha=2.0, iterations=10), tune=False,
                ranker=RankerParams(rounds=30, min_data_in_leaf=5, windows=1), clusters=2)
    base.update(kw)
    return PipelineConfig(**base)


def checkerboard(groups: int = 6, size: int = 5, users_per: int = 8) -> sp.csr_matrix:
    rows, cols = [], []
    for g in range(groups):
        for u in range(users_per):
            for t in range(size):
                rows.append(g * users_per + u)
                cols.append(g * size + t)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(groups * users_per, groups * size))
    return m


def test_checkerboard_heldout_title_comes_first():
    m = checkerboard().tolil()
    m[0, 2] = 0  # user 0 (group 0) has not seen title 2 of their block
    m = m.tocsr()
    m.eliminate_zeros()
    model = fit_als(m, ALSParams(factors=8, regularization=0.1, alpha=5.0, iterations=20))
    recs = recommend_als(model, np.array([0]), m, 3)
    assert recs[0, 0] == 2
    assert model.user_factors.dtype == np.float32 and model.item_factors.dtype == np.float32


def test_fold_in_matches_implicit_recalculate_user():
    from implicit.cpu.als import AlternatingLeastSquares
    rng = np.random.default_rng(1)
    m = sp.random(30, 20, density=0.3, random_state=2, format="csr", dtype=np.float32)
    m.data = rng.uniform(1, 5, m.nnz).astype(np.float32)
    p = ALSParams(factors=6, regularization=0.3, alpha=2.0, iterations=5)
    model = AlternatingLeastSquares(factors=6, regularization=0.3, alpha=2.0, iterations=5, random_state=0)
    model.fit(m, show_progress=False)
    ours = fold_in(model.item_factors, m[[3, 7]], p)
    theirs = model.recalculate_user([3, 7], m[[3, 7]])
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


def test_an_als_blend_scores_the_sum_of_its_members_and_folds_in_member_by_member():
    """An ``ALSBlend``'s vectors: the dot product is each member's score over the RMS of its
    scores, summed; ``fold_in`` gives a training user back their blended vector (each member's
    columns folded with its own settings and scaled as the fit scaled them)."""
    from reelrec.recall.als import ALSBlend, score_rms
    rng = np.random.default_rng(3)
    m = sp.random(40, 25, density=0.3, random_state=4, format="csr", dtype=np.float32)
    m.data = rng.uniform(1, 5, m.nnz).astype(np.float32)
    members = (ALSParams(factors=6, regularization=0.3, alpha=2.0, iterations=8),
               ALSParams(factors=4, regularization=3.0, alpha=0.5, iterations=8))
    parts = [fit_als(m, p) for p in members]
    got = fit_als(m, ALSBlend(members))
    assert got.user_factors.shape == (40, 10) and got.item_factors.shape == (25, 10)
    assert got.params.members == members
    want = sum(p.scores(np.arange(40)) / score_rms(p.user_factors, p.item_factors) for p in parts)
    np.testing.assert_allclose(got.scores(np.arange(40)), want, rtol=1e-4, atol=1e-5)
    full = parts[0].user_factors @ parts[0].item_factors.T
    rms = score_rms(parts[0].user_factors, parts[0].item_factors)
    assert rms == pytest.approx(np.sqrt((full.astype(np.float64) ** 2).mean()), rel=1e-5)
    # the fold-in of a training user lands on their trained vector, member by member (fits run
    # to convergence, so the trained vector is the exact solve of the final item vectors)
    conv = fit_als(m, ALSBlend(tuple(ALSParams(**{**p.as_dict(), "iterations": 200}) for p in members)))
    folded = fold_in(conv.item_factors, m[[5, 11]], conv.params)
    np.testing.assert_allclose(folded, conv.user_factors[[5, 11]], rtol=1e-3, atol=1e-3)
    assert ALSBlend.from_dict(json.loads(json.dumps(got.params.as_dict()))) == got.params
    with pytest.raises(InvalidInput, match="als"):
        fold_in(got.item_factors[:, :8], m[[5]], got.params)


def test_a_tuned_version_blends_its_best_settings_and_serves_them_after_a_reload(tmp_path):
    s = _settings(tmp_path)
    grid = {"regularization": (0.3, 3.0), "alpha": (0.5, 2.0)}
    res = train(s, small_config(tune=True, als_grid=grid, als_members=3))
    chosen = res.manifest["params"]["als"]
    assert len(chosen["members"]) == 3 and len(chosen["scales"]) == 3
    trials = sorted(res.manifest["tuning"]["als"], key=lambda t: -t["ndcg@10"])
    assert {(t["regularization"], t["alpha"]) for t in trials[:3]} == \
        {(p["regularization"], p["alpha"]) for p in chosen["members"]}
    pipe = load_model(s)
    assert pipe.art.item_factors.shape[1] == 3 * 8 and pipe.art.als.as_dict() == chosen
    # the speed layer's fold-in of a training user's row: about their trained vector
    row = pipe.users.positives[[0]]
    np.testing.assert_allclose(pipe.fold_in(row), pipe.users.vectors[0], rtol=0.1, atol=0.05)
    one = train(s, small_config(tune=True, als_grid=grid, als_members=1), publish=False)
    assert "members" not in one.manifest["params"]["als"]


def test_content_vectors_mean_of_titles_sharing_attributes():
    f = np.array([[1, 0], [3, 0], [0, 2], [0, 0], [0, 0]], dtype=np.float32)
    trained = np.array([True, True, True, False, False])
    # attributes: 0 = drama (titles 0, 1, 3), 1 = comedy (title 2), 2 = unseen genre (title 4)
    a = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32))
    out = content_vectors(f, trained, a)
    np.testing.assert_allclose(out[3], [2, 0])
    np.testing.assert_allclose(out[4], f[:3].mean(axis=0))  # nothing shared: the mean of all
    np.testing.assert_array_equal(out[:3], f[:3])


def test_holdout_random_keeps_a_quarter_per_user():
    m = checkerboard(groups=2, size=8, users_per=3)
    keep, held = holdout_random(m, 0.25, seed=3)
    assert (np.diff(held.indptr) == 2).all()
    assert keep.multiply(held).nnz == 0
    assert (keep + held - m).nnz == 0


def test_tune_als_records_every_trial_and_picks_the_best():
    m = checkerboard(groups=4, size=6, users_per=10)
    best, trials = tune_als(m, ALSParams(factors=4, iterations=5),
                            {"regularization": (0.1, 100.0), "alpha": (1.0,), "iterations": (5,)})
    assert len(trials) == 2
    top = max(trials, key=lambda t: t["ndcg@10"])
    assert best.regularization == top["regularization"]


def test_new_title_is_retrievable_before_retrain():
    data = batch_world.train_data()
    rec = RankerRecommender(small_config()).fit(data)
    pipe = rec.pipeline
    new = list(data.catalog.ids).index("t40")
    assert pipe.art.content[new] and not pipe.art.content[0]
    # a drama watcher's ANN candidates include the unwatched drama t40, a comedy watcher's do not
    # 12 unwatched titles of their block, plus the new one: 13
    cols, _ = pipe.art.ann.search(pipe.users.vectors[[0, 59]], 13, pipe.users.exclude[[0, 59]])
    assert new in cols[0]
    assert new not in cols[1]


def test_recommenders_follow_the_protocol():
    data = batch_world.train_data()
    for rec in (RankerRecommender(small_config()), ALSRecommender(small_config().als, tune=False)):
        assert isinstance(rec, Recommender)
        out = rec.fit(data).recommend(np.array([0, 1, 40]), 5)
        assert out.shape == (3, 5)
        seen = data.matrix.positives[[0, 1, 40]].toarray() > 0
        for i in range(3):
            assert not seen[i, out[i][out[i] >= 0]].any()
        # group A users get drama titles (t00-t19 or the new drama t40) on top
        assert out[0, 0] < 20 or out[0, 0] == 40
        assert 20 <= out[2, 0] < 40 or out[2, 0] == 41


def _settings(tmp_path):
    s = load_settings(data_dir=tmp_path)
    from reelrec.domain.users import save_users
    from reelrec.storage.lake import open_lake
    batch_world.catalog().save(s.data_dir)
    save_users(batch_world.users(), s.data_dir)
    open_lake(s.lake).append(batch_world.events())
    return s


def test_version_round_trip_and_publish(tmp_path):
    s = _settings(tmp_path)
    res = train(s, small_config())
    assert res.published
    store = ModelStore(s.models_dir)
    assert store.current() == res.version
    m = res.manifest
    assert m["counts"]["titles"] == 42 and m["counts"]["content_vectors"] == 2
    assert m["data"]["start"] < m["data"]["end"] and m["code_version"]
    assert set(m["files"]) >= {"arrays.npz", "ann.faiss", "covisit.npz", "ranker.txt"}
    loaded = load_model(s)
    fresh = load_model(s, res.version)
    rows = np.arange(10)
    np.testing.assert_array_equal(loaded.recommend_rows(rows, 5), fresh.recommend_rows(rows, 5))
    [row] = store.list()
    assert row["ok"] and row["current"]


def test_a_version_saved_before_the_ann_dedupe_still_loads_and_serves(tmp_path):
    """Versions written before the ANN index held each distinct vector once have one index row
    per title and no ann.rows.npy: they load (rebuilt on the distinct rows) and serve the same."""
    import json

    from reelrec.batch.versions import MANIFEST, _sha256
    from reelrec.recall.ann import ANNIndex
    s = _settings(tmp_path)
    res = train(s, small_config())
    assert "ann.rows.npy" in res.manifest["files"]
    fresh = load_model(s, res.version)
    folder = ModelStore(s.models_dir).path(res.version)
    ANNIndex.build(fresh.art.item_factors, dedupe=False).save(folder / "ann.faiss")
    (folder / "ann.rows.npy").unlink()
    m = json.loads((folder / MANIFEST).read_text())
    del m["files"]["ann.rows.npy"]
    m["files"]["ann.faiss"] = {"sha256": _sha256(folder / "ann.faiss"), "bytes": (folder / "ann.faiss").stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(m))
    older = load_model(s, res.version)
    assert older.art.ann.size == 42 and older.art.ann.distinct == fresh.art.ann.distinct
    rows = np.arange(12)
    np.testing.assert_array_equal(older.recommend_rows(rows, 5), fresh.recommend_rows(rows, 5))


def test_a_version_saved_before_its_als_was_stored_folds_in_with_the_configured_settings(tmp_path):
    """Versions written before ``arrays.npz`` held the served ALS settings load with the
    configuration's ALS (what they folded in with then); newer ones with their own."""
    from reelrec.batch.versions import MANIFEST, _sha256
    s = _settings(tmp_path)
    cfg = small_config(tune=True, als_grid={"regularization": (0.3, 3.0)}, als_members=1)
    res = train(s, cfg)
    chosen = res.manifest["params"]["als"]
    assert ALSParams(**chosen) != cfg.als  # tuning moved the regularisation off the configured 0.5
    assert load_model(s, res.version).art.als == ALSParams(**chosen)
    folder = ModelStore(s.models_dir).path(res.version)
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "als"}
    with open(folder / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    m = json.loads((folder / MANIFEST).read_text())
    m["files"]["arrays.npz"] = {"sha256": _sha256(folder / "arrays.npz"),
                                "bytes": (folder / "arrays.npz").stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(m))
    assert load_model(s, res.version).art.als == cfg.als


def test_corrupt_or_half_written_version_is_refused(tmp_path):
    s = _settings(tmp_path)
    res = train(s, small_config())
    store = ModelStore(s.models_dir)
    folder = store.path(res.version)
    # a flipped byte in the arrays
    arr = folder / "arrays.npz"
    data = bytearray(arr.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arr.write_bytes(bytes(data))
    with pytest.raises(Conflict, match="checksum"):
        load_model(s, res.version)
    with pytest.raises(Conflict):
        store.publish(res.version)
    # a version without its manifest (a crash before the seal)
    half = s.models_dir / "20990101T000000-aaaaaa"
    half.mkdir()
    (half / "arrays.npz").write_bytes(b"partial")
    with pytest.raises(Conflict, match="manifest"):
        load_model(s, half.name)
    assert not store.list()[0]["ok"]
    with pytest.raises(NotFound):
        load_model(s, "no-such-version")
    assert store.current() == res.version  # the pointer never moved to a bad version


def test_train_and_models_list_cli(tmp_path):
    from typer.testing import CliRunner
    from reelrec.cli import app
    _settings(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--no-tune", "--factors", "8"])
    assert r.exit_code == 0, r.output
    assert "published" in r.output
    r = runner.invoke(app, ["models", "list", "--data", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 1 and rows[0]["current"] and rows[0]["ok"]
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--factors", "8", "--als-members", "2",
                            "--no-publish"])
    assert r.exit_code == 0, r.output
    assert "ALS blend of 2: 8 factors / reg " in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--als-members", "0"])
    assert r.exit_code == 2 and "--als-members" in r.output


def test_training_without_events_is_a_clear_error(tmp_path):
    s = load_settings(data_dir=tmp_path)
    batch_world.catalog().save(s.data_dir)
    with pytest.raises(NotFound, match="no events"):
        train(s, small_config())
    data = batch_world.train_data()
    data.matrix.positives = sp.csr_matrix(data.matrix.shape, dtype=np.float32)
    with pytest.raises(InvalidInput, match="positive"):
        RankerRecommender(small_config()).fit(data)


def test_registry_names_and_candidate_stage():
    from reelrec.batch.pipeline import make_recommender
    assert make_recommender("als", seed=3).params.seed == 3
    assert make_recommender("reelrec-ranker").name == "reelrec-ranker"
    with pytest.raises(InvalidInput):
        make_recommender("bpr")
    data = batch_world.train_data()
    rec = RankerRecommender(small_config()).fit(data)
    c = rec.candidates(np.array([0, 40]), 30)
    assert c.shape == (2, 30)
    seen = data.matrix.positives[[0, 40]].toarray() > 0
    for i in range(2):
        got = c[i][c[i] >= 0]
        assert len(got) == len(set(got.tolist())) > 10 and not seen[i, got].any()


def test_item_item_sources_are_candidates_features_and_survive_a_version(tmp_path):
    """RP3beta and item-kNN, when configured, are stage-1 sources and ranker features, and a
    saved version scores the same after loading."""
    from reelrec.recall.candidates import DEFAULT_QUOTAS
    s = _settings(tmp_path)
    cfg = small_config(item_item={"rp3beta": {"alpha": 0.8, "beta": 0.3, "top": 50}, "itemknn": {"top": 50}},
                       quotas={**DEFAULT_QUOTAS, "rp3beta": 30, "itemknn": 30})
    res = train(s, cfg)
    assert {"item_item.rp3beta.npz", "item_item.itemknn.npz"} <= set(res.manifest["files"])
    loaded = load_model(s, res.version)
    assert set(loaded.art.item_item) == {"rp3beta", "itemknn"}
    names = loaded.ranker.feature_name()
    assert "rp3beta_rank" in names and "itemknn_z" in names
    state = loaded.users.take(np.arange(10))
    weights = state.positives.copy()
    cands, _ = loaded.candidates(state)
    assert {"rp3beta", "itemknn"} <= set(cands.sources)
    # the sources score binary positives without touching the weights the ranker reads next
    assert (state.positives != weights).nnz == 0 and (weights.data != 1.0).any()
    assert np.isfinite(cands.rank[:, :, cands.sources.index("rp3beta")]).any()
    from reelrec.recall.itemitem import item_knn, rp3beta
    np.testing.assert_allclose(loaded.art.item_item["rp3beta"].toarray(),
                               rp3beta(loaded.users.positives, alpha=0.8, beta=0.3, top=50).toarray(), rtol=1e-6)
    np.testing.assert_allclose(loaded.art.item_item["itemknn"].toarray(),
                               item_knn(loaded.users.positives, top=50).toarray(), rtol=1e-6)


def test_session_covisitation_as_source_and_as_feature_only(tmp_path):
    """Session co-visitation reads the positives' times: with a quota it places candidates and
    gives the ranker its features; with quota 0 it gives the features and places no candidate,
    so the pool is the one without it."""
    from reelrec.recall.candidates import DEFAULT_QUOTAS
    from reelrec.recall.itemitem import session_covisitation
    s = _settings(tmp_path)
    res = train(s, small_config(item_item={"session": {"gap_s": 1800.0, "top": 50}},
                                quotas={**DEFAULT_QUOTAS, "session": 30}))
    loaded = load_model(s, res.version)
    assert "item_item.session.npz" in res.manifest["files"]
    w = loaded.art.item_item["session"]
    assert w.nnz > 0 and (w.getnnz(axis=1) <= 50).all() and w.diagonal().sum() == 0
    np.testing.assert_allclose(w.toarray(), session_covisitation(loaded.users.positives, loaded.users.ts,
                                                                 gap_s=1800.0, top=50).toarray(), rtol=1e-6)
    state = loaded.users.take(np.arange(10))
    cands, _ = loaded.candidates(state)
    assert np.isfinite(cands.rank[:, :, cands.sources.index("session")]).any()
    assert "session_z" in loaded.ranker.feature_name()

    res0 = train(s, small_config(item_item={"session": {"gap_s": 1800.0, "top": 50}},
                                 quotas={**DEFAULT_QUOTAS, "session": 0}))
    feat_only = load_model(s, res0.version)
    plain = load_model(s, train(s, small_config()).version)
    c0, _ = feat_only.candidates(state)
    c1, _ = plain.candidates(state)
    assert "session" in c0.sources and not np.isfinite(c0.rank[:, :, c0.sources.index("session")]).any()
    np.testing.assert_array_equal(c0.cols, c1.cols)
    x = feat_only.features(state, c0, feat_only.candidates(state)[1])
    names = feat_only.ranker.feature_name()
    assert np.nanstd(x[:, :, names.index("session_z")]) > 0
