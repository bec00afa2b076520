"""``reelrec evaluate`` end to end: a tiny lake, the JSON shape, the report, and ml-100k."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from eval_lake import build_ml100k, catalog_table, rating_events, write_world
from reelrec.cli import app
from reelrec.config import load_settings
from reelrec.eval.harness import evaluate
from reelrec.eval.splits import stratified_split_events

ACCURACY_KEYS = {"ndcg@5", "precision@5", "recall@5", "map@5", "map_all@5", "hr@5", "recall@100",
                 "coverage", "diversity", "novelty", "fit_s", "recommend_s", "curves"}


@pytest.fixture
def tiny(tmp_path):
    """60 users with taste for one of three genres, 45 titles, ~900 ratings over 100 days."""
    rng = np.random.default_rng(7)
    genres = ["drama", "comedy", "horror"]
    users, items, ts = [], [], []
    for u in range(60):
        g = u % 3
        liked = rng.choice(np.arange(g * 15, g * 15 + 15), 12, replace=False)
        other = rng.choice(45, 3, replace=False)
        for t in set(liked.tolist()) | set(other.tolist()):
            users.append(u)
            items.append(t)
            ts.append(1_600_000_000 + int(rng.integers(0, 100 * 86400)))
    n = len(users)
    events = rating_events(np.array(users), np.array(items), rng.integers(3, 6, n), np.array(ts), "t")
    ids = [f"t{i}" for i in range(45)]
    cat = catalog_table(ids, ids, [[genres[i // 15], "x" if i % 2 else "y"] for i in range(45)])
    data = tmp_path / "tiny"
    write_world(data, events, cat)
    return data, events


def test_cli_writes_json_and_report(tiny, tmp_path):
    data, _ = tiny
    out, rep = tmp_path / "out.json", tmp_path / "rep"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--protocol", "msr-stratified",
                                   "--k", "5", "--json", str(out), "--report", str(rep),
                                   "--seeds", "2", "--models", "popularity,ease,covisit,reelrec-ranker"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["dataset"] == "tiny" and doc["protocol"] == "msr-stratified" and doc["k"] == 5
    assert doc["seeds"] == [42, 43] and len(doc["split"]) == 2
    assert set(doc["models"]) == {"popularity", "ease", "covisit", "reelrec-ranker"}
    assert not doc["unavailable"]
    for m in doc["models"].values():
        assert ACCURACY_KEYS <= set(m)
        assert set(m["std"]) >= {"ndcg@5", "diversity"}
        assert len(m["curves"]["ndcg"]) == 20
        assert 0.0 <= m["ndcg@5"] <= 1.0 and 0.0 <= m["coverage"] <= 1.0
    # taste is learnable here: the item-item models beat popularity
    assert doc["models"]["ease"]["ndcg@5"] > doc["models"]["popularity"]["ndcg@5"]
    assert doc["models"]["covisit"]["ndcg@5"] > doc["models"]["popularity"]["ndcg@5"]
    for f in ("report.md", "metrics_at_k.png", "accuracy_vs_diversity.png"):
        assert (rep / f).stat().st_size > 0
    assert "| ease |" in (rep / "report.md").read_text()
    # the ranker against each baseline, paired over the same test users, once per seed
    paired = doc["paired"]["ndcg@5"]
    assert set(paired) == {"reelrec-ranker vs popularity", "reelrec-ranker vs ease",
                           "reelrec-ranker vs covisit"}
    for pair, rows in paired.items():
        assert [r["seed"] for r in rows] == [42, 43]
        for r in rows:
            assert r["ci95"][0] <= r["rel"] <= r["ci95"][1] and 0.0 <= r["p_not_better"] <= 1.0
    runs = doc["models"]
    assert np.mean([r["a"] for r in paired["reelrec-ranker vs ease"]]) == pytest.approx(
        runs["reelrec-ranker"]["ndcg@5"], abs=1e-5)
    assert "| reelrec-ranker vs ease | 42 |" in (rep / "report.md").read_text()


def test_temporal_protocol_and_split_facts(tiny):
    data, events = tiny
    doc = evaluate(load_settings(data_dir=data), "temporal", k=5, models=["popularity", "covisit"])
    split = doc["split"]
    assert split["train_events"] + split["test_events"] <= events.num_rows
    assert split["train_events"] == pytest.approx(0.8 * events.num_rows, rel=0.02)
    assert "cutoff" in split and split["test_users"] > 0
    assert "std" not in doc["models"]["popularity"]  # one seed: no spread


def test_session_test_window_is_in_the_json_and_the_report(tiny, tmp_path):
    """--test-window session: the same cut and training side, fewer test events (each user's
    first test session; ratings without session ids, so sessions end at 30 idle minutes)."""
    data, _ = tiny
    whole = evaluate(load_settings(data_dir=data), "temporal", k=5, models=["popularity"])
    out, rep = tmp_path / "out.json", tmp_path / "rep"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--protocol", "temporal",
                                   "--test-window", "session", "--k", "5", "--json", str(out),
                                   "--report", str(rep), "--models", "popularity"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert whole["test_window"] == "all" and doc["test_window"] == "session"
    assert doc["split"]["cutoff"] == whole["split"]["cutoff"]
    assert doc["split"]["train_interactions"] == whole["split"]["train_interactions"]
    assert 0 < doc["split"]["test_users"] <= whole["split"]["test_users"]
    assert doc["split"]["test_events"] < whole["split"]["test_events"]
    assert "first test session" in (rep / "report.md").read_text().splitlines()[0]
    bad = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--protocol", "msr-stratified",
                                   "--test-window", "session", "--models", "popularity"])
    assert bad.exit_code == 2


def test_ground_truth_of_a_simulated_world_is_scored(tiny):
    data, events = tiny
    # the ground truth here is exactly the held-out ratings, so true metrics equal the split's
    _, test = stratified_split_events(events, seed=42)
    (data / "sim").mkdir()
    truth = test.select(["user_id", "title_id"])
    truth = truth.append_column("relevant", pa.array([True] * truth.num_rows))
    pq.write_table(truth, data / "sim" / "ground_truth.parquet")
    doc = evaluate(load_settings(data_dir=data), "msr-stratified", k=5, models=["popularity"])
    m = doc["models"]["popularity"]
    assert doc["data"]["ground_truth"].endswith("ground_truth.parquet")
    assert m["true_precision@5"] == pytest.approx(m["precision@5"])
    assert m["true_recall@5"] == pytest.approx(m["recall@5"])


def test_bad_arguments_name_their_field(tiny):
    data, _ = tiny
    res = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--protocol", "loo",
                                   "--models", "popularity,magic"])
    assert res.exit_code == 2
    assert "protocol" in res.output or "protocol" in (res.stderr if res.stderr_bytes else "")


@pytest.mark.slow
def test_ml100k_msr_stratified_popularity_and_ease(ml100k, tmp_path):
    settings = build_ml100k(ml100k, tmp_path / "ml100k")
    # one BLAS thread: on a busy shared machine a BLAS thread pool only adds contention
    with threadpool_limits(1, "blas"):
        doc = evaluate(settings, "msr-stratified", k=10, models=["popularity", "ease"])
    assert doc["split"]["test_users"] == 943
    pop, ease = doc["models"]["popularity"], doc["models"]["ease"]
    assert 0.22 < pop["ndcg@10"] < 0.30  # Recommenders' table: popularity about 0.26
    assert ease["ndcg@10"] > 0.46  # BiVAE, the table's best, is 0.475
    assert ease["precision@10"] > pop["precision@10"]


def test_model_params_become_plain_json():
    import dataclasses

    from reelrec.eval.harness import _jsonable

    @dataclasses.dataclass
    class Params:
        factors: int = 64
        grid: tuple = (1.0, np.float32(2.0))

    out = _jsonable({"als": Params(), "n": np.int64(3), "other": object})
    assert json.loads(json.dumps(out)) == {"als": {"factors": 64, "grid": [1.0, 2.0]}, "n": 3,
                                           "other": str(object)}


def test_temporal_protocol_passes_each_test_users_request(tiny, monkeypatch):
    """A model that can score for a request gets the split's (one row per test user) on the
    temporal protocol; the other models and msr-stratified call plain ``recommend``."""
    import reelrec.eval.harness as H
    from reelrec.eval.models import PopularityRecommender, Resolved
    calls = []

    class Ctx(PopularityRecommender):
        def recommend_in_context(self, users, k, request):
            calls.append((len(users), len(request)))
            return self.recommend(users, k)

    monkeypatch.setattr(H, "resolve", lambda name, seed=0: Resolved(name, Ctx()))
    data, _ = tiny
    doc = evaluate(load_settings(data_dir=data), "temporal", k=5, models=["popularity"])
    assert calls and calls[0][0] == calls[0][1] == doc["split"]["test_users"]
    assert doc["split"]["request_context_known"] == 0  # rating events carry no device
    calls.clear()
    evaluate(load_settings(data_dir=data), "msr-stratified", k=5, models=["popularity"])
    assert not calls
