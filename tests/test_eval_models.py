"""Baselines find the held-back title on a block world; the registry reports missing models."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import InteractionMatrix
from reelrec.errors import InvalidInput
from reelrec.eval.models import (
    BASELINES,
    CovisitRecommender,
    EASERecommender,
    ImplicitALSRecommender,
    PopularityRecommender,
    resolve,
    top_k,
)
from reelrec.recommender import Recommender, TrainData

from eval_lake import catalog_table

N_TITLES = 12


def block_world(seed: int = 0) -> tuple[TrainData, np.ndarray]:
    """Users 0-14 like titles 0-5, users 15-39 like titles 6-11; each user lacks exactly one title
    of their block (the one to find). Block B is more popular, so popularity alone fails block A."""
    rng = np.random.default_rng(seed)
    rows, cols, missing = [], [], []
    for u in range(40):
        block = list(range(0, 6)) if u < 15 else list(range(6, 12))
        hole = int(rng.choice(block))
        missing.append(hole)
        rows += [u] * 5
        cols += [t for t in block if t != hole]
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(40, N_TITLES))
    empty = sp.csr_matrix((40, N_TITLES), dtype=np.float32)
    ids = [f"t{i}" for i in range(N_TITLES)]
    m = InteractionMatrix(np.array([f"u{i}" for i in range(40)], dtype=object),
                          np.array(ids, dtype=object), x, empty, empty.copy())
    cat = Catalog(catalog_table(ids, ids, [["a"]] * N_TITLES))
    events = pa.table({"user_id": pa.array([], pa.string())})
    return TrainData(matrix=m, events=events, catalog=cat), np.array(missing)


@pytest.mark.parametrize("make", [
    lambda: EASERecommender(lambdas=(1.0, 10.0)),
    lambda: CovisitRecommender(),
    lambda: ImplicitALSRecommender(grid=({"factors": 2, "regularization": 0.01, "alpha": 5.0},),
                                   iterations=20),
], ids=["ease", "covisit", "als"])
def test_models_find_the_held_back_title(make):
    data, missing = block_world()
    model = make().fit(data)
    assert isinstance(model, Recommender)
    recs = model.recommend(np.arange(40), 1)
    np.testing.assert_array_equal(recs[:, 0], missing)


def test_popularity_orders_by_users_and_never_returns_seen_titles():
    data, _ = block_world()
    model = PopularityRecommender().fit(data)
    recs = model.recommend(np.arange(40), N_TITLES)
    seen = data.matrix.positives.toarray() > 0
    for u in range(40):
        listed = recs[u][recs[u] >= 0]
        assert not seen[u, listed].any()
        assert len(listed) == N_TITLES - seen[u].sum()  # the rest is -1 padding
    assert recs[0, 0] >= 6  # a block-A user gets block B's titles first: they are more popular


def test_ease_refuses_catalogs_over_its_limit():
    data, _ = block_world()
    with pytest.raises(InvalidInput) as info:
        EASERecommender(max_titles=5).fit(data)
    assert info.value.errors[0].field == "models" and "limited" in info.value.errors[0].reason


def test_ease_tunes_lambda_on_training_data_only():
    data, _ = block_world()
    model = EASERecommender().fit(data)
    assert model.params["lambda"] in {float(k) for k in model.params["validation_ndcg@10"]}
    assert len(model.params["validation_ndcg@10"]) == 5  # three coarse, two refinements


def test_top_k_skips_seen_and_pads():
    scores = np.array([[0.1, 0.9, 0.5, -np.inf], [3.0, 2.0, 1.0, 0.0]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]]))
    np.testing.assert_array_equal(top_k(scores, seen, 4), [[2, 0, -1, -1], [0, 1, 2, 3]])
    np.testing.assert_array_equal(top_k(scores, None, 6)[1], [0, 1, 2, 3, -1, -1])


def test_registry_knows_baselines_and_refuses_strangers():
    for name in BASELINES:
        assert resolve(name).model is not None
    with pytest.raises(InvalidInput) as info:
        resolve("random-forest")
    assert info.value.errors[0].field == "models"


@pytest.mark.skipif(importlib.util.find_spec("reelrec.batch") is not None,
                    reason="the batch layer is installed")
def test_batch_models_are_reported_unavailable_without_the_batch_layer():
    ranker = resolve("reelrec-ranker")
    assert ranker.model is None and "reelrec.batch.pipeline" in ranker.reason
    als = resolve("als")
    assert isinstance(als.model, ImplicitALSRecommender) and als.notes


def test_batch_lookup_finds_a_recommender_class_by_name(tmp_path, monkeypatch):
    """The batch layer exposes classes such as ``ALSRecommender`` with ``name = "als"``."""
    from reelrec.eval.models import _from_batch
    (tmp_path / "evalbatchdemo.py").write_text(
        "from reelrec.eval.models import PopularityRecommender\n"
        "class Ranker(PopularityRecommender):\n"
        "    name = 'reelrec-ranker'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _from_batch("reelrec-ranker", seed=1, module="evalbatchdemo")
    assert type(model).__name__ == "Ranker" and model.seed == 1
    data, _ = block_world()
    assert model.fit(data).recommend(np.arange(3), 2).shape == (3, 2)
    with pytest.raises(Exception, match="no recommender named 'als'"):
        _from_batch("als", seed=1, module="evalbatchdemo")
