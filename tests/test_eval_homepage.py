"""reelrec-homepage: the composed top picks as an evaluated model, on the simulated tiny world.

The pages come from the serving code (ServingModel.compose); these tests hold them to the
evaluation contract (never a training title, best first, -1 padding) and to composition's rules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from eval_lake import catalog_table, rating_events, write_world
from reelrec.cli import app

from reelrec.batch.pipeline import PipelineConfig
from reelrec.compose.config import ComposeConfig
from reelrec.domain.catalog import Catalog
from reelrec.domain.users import load_users
from reelrec.errors import InvalidInput
from reelrec.eval.homepage_model import HomepageRecommender
from reelrec.eval.models import DEFAULT_MODELS, resolve
from reelrec.eval.splits import make_split, seen_matrix
from reelrec.recommender import Recommender
from reelrec.storage.lake import open_lake

K = 30  # longer than the page: the rest is padding


@pytest.fixture(scope="module")
def fitted(tiny_world):
    s = tiny_world
    catalog = Catalog.load(s.data_dir)
    split = make_split(open_lake(s.lake).scan(), catalog, "msr-stratified", 42, load_users(s.data_dir),
                       s.signals)
    model = HomepageRecommender(seed=1, config=PipelineConfig(tune=False)).fit(split.train)
    return split, model, model.recommend(split.test_rows, K)


def test_registry_names_the_homepage_model():
    r = resolve("reelrec-homepage", seed=3)
    assert isinstance(r.model, HomepageRecommender) and isinstance(r.model, Recommender)
    assert r.model.seed == 3 and r.source == "reelrec.eval.homepage_model"
    assert "reelrec-homepage" in DEFAULT_MODELS


def test_recommend_before_fit_is_an_error():
    with pytest.raises(InvalidInput):
        HomepageRecommender().recommend(np.arange(3), 10)


def test_pages_never_hold_training_titles_and_are_padded(fitted):
    split, model, recs = fitted
    n_page = ComposeConfig().page_size
    assert recs.shape == (len(split.test_rows), K)
    seen = seen_matrix(split.train.matrix)[split.test_rows].toarray() > 0
    for u, row in enumerate(recs):
        page = row[row >= 0]
        assert len(page) == n_page and len(np.unique(page)) == n_page
        assert (row[n_page:] == -1).all()
        assert not seen[u, page].any()


def test_pages_follow_the_composition_rules(fitted):
    split, model, recs = fitted
    cfg = ComposeConfig()
    f = model.model.features
    genre_counts = f.genre_multi_hot[recs[:, :cfg.page_size]].sum(axis=1)
    assert genre_counts.max() <= cfg.genre_cap
    slots = model.params["slots_per_page"]
    assert slots["explore"] == cfg.explore_slots(cfg.page_size)
    assert slots["novel"] == cfg.novel_slots
    assert sum(slots.values()) == cfg.page_size
    # exploit and novel items lead; one explore slot (position 6) falls in the top 10
    assert model.params["slots_in_top10"]["explore"] == 1.0
    checked = model.params["serving_would_show_seen"]
    assert checked["pages"] == min(len(split.test_rows), 200) and checked["items"] >= 0


def test_the_same_seed_gives_the_same_pages(fitted):
    split, model, recs = fitted
    again = model.recommend(split.test_rows, K)
    np.testing.assert_array_equal(again, recs)


def test_evaluate_scores_the_homepage_beside_the_ranker(tmp_path):
    """``reelrec evaluate`` end to end on a small ratings lake: both models scored on one split."""
    rng = np.random.default_rng(5)
    genres = ["drama", "comedy", "horror", "crime"]
    users, items = [], []
    for u in range(60):
        g = u % 4
        liked = rng.choice(np.arange(g * 15, g * 15 + 15), 10, replace=False)
        for t in set(liked.tolist()) | set(rng.choice(60, 3, replace=False).tolist()):
            users.append(u)
            items.append(t)
    n = len(users)
    events = rating_events(np.array(users), np.array(items), rng.integers(3, 6, n),
                           1_600_000_000 + rng.integers(0, 90 * 86400, n), "t")
    ids = [f"t{i}" for i in range(60)]
    write_world(tmp_path / "lake", events, catalog_table(ids, ids, [[genres[i // 15]] for i in range(60)]))
    out = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "lake"), "--protocol",
                                   "msr-stratified", "--k", "5", "--json", str(out),
                                   "--models", "popularity,reelrec-ranker,reelrec-homepage"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert not doc["unavailable"]
    home = doc["models"]["reelrec-homepage"]
    assert 0.0 < home["ndcg@5"] <= 1.0 and len(home["curves"]["ndcg"]) == 20
    assert home["params"]["pages"] == doc["split"]["test_users"]
    assert "| reelrec-homepage |" in res.output


def test_every_training_title_is_an_exclusion_for_composition(fitted):
    """Serving excludes only rejected, finished and in-progress titles; the evaluator adds the rest
    of the user's training titles, so popular backfill cannot bring one back."""
    split, model, _ = fitted
    seen = seen_matrix(split.train.matrix)
    for row in split.test_rows[:50]:
        serving, strict, titles = model._profile(int(row))
        np.testing.assert_array_equal(np.sort(titles), seen[int(row)].indices)
        assert set(titles.tolist()) <= set(strict.thumbs_down.tolist())
        assert set(serving.thumbs_down.tolist()) <= set(strict.thumbs_down.tolist())
        assert strict.n_engaged == serving.n_engaged and strict.user_id == serving.user_id
