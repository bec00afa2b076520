"""Stage 1: ANN against brute force, co-visitation by hand, trending, merge and quotas."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import batch_world  # noqa: E402

from reelrec.errors import InvalidInput  # noqa: E402
from reelrec.recall.ann import ANNConfig, ANNIndex, is_member, recall_at_k  # noqa: E402
from reelrec.recall.candidates import SourceResult, merge  # noqa: E402
from reelrec.recall.covisit import DAY_S, covisitation, ease, prune_rows, recent_seeds  # noqa: E402
from reelrec.recall.popular import compute_stats, trending_scores  # noqa: E402


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Vectors around a few centres, like trained title embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    return (centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_flat_index_equals_brute_force():
    v = clustered(500, 16, 0)
    q = clustered(20, 16, 1)
    idx = ANNIndex.build(v)
    assert idx.kind == "flat"
    cols, scores = idx.search(q, 10)
    exact = np.argsort(-(q @ v.T), axis=1)[:, :10]
    np.testing.assert_array_equal(cols, exact)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ v.T, exact, axis=1), rtol=1e-5)


def test_hnsw_recall_against_exact():
    v = clustered(3000, 32, 2)
    q = clustered(50, 32, 3)
    approx = ANNIndex.build(v, ANNConfig(exact_max=1000))
    assert approx.kind == "hnsw"
    exact = ANNIndex.build(v, force="flat")
    r = recall_at_k(approx.search(q, 100)[0], exact.search(q, 100)[0])
    assert r >= 0.95


def test_search_drops_excluded_titles_and_pads():
    v = np.eye(4, dtype=np.float32)
    idx = ANNIndex.build(v)
    q = np.array([[1, 0.5, 0.2, 0.1]], dtype=np.float32)
    ex = sp.csr_matrix(np.array([[1, 0, 1, 0]], dtype=np.float32))
    cols, scores = idx.search(q, 3, ex)
    assert cols.tolist() == [[1, 3, -1]]
    assert np.isneginf(scores[0, 2])


def test_search_with_a_long_exclusion_row_searches_shallow_first_and_again_only_when_short():
    # a region's unavailable titles make every exclusion row long; the first search asks for
    # 4 x k neighbours and gives the same titles as a search as deep as the longest row
    v = clustered(4000, 16, 4)
    q = clustered(40, 16, 5)
    rng = np.random.default_rng(6)
    dense = np.zeros((40, 4000), dtype=np.float32)
    dense[:, rng.random(4000) < 0.3] = 1  # unavailable in the region: 30% of the catalog
    scores_all = q @ v.T
    top = np.argsort(-scores_all, axis=1)
    dense[0, top[0, :600]] = 1  # one user has seen all of their 600 best titles
    ex = sp.csr_matrix(dense)
    exact = ANNIndex.build(v, force="flat")
    deep = exact.search(q, 10, ex, extra=int(np.diff(ex.indptr).max()))
    calls = []
    real = exact._search
    exact._search = lambda qq, k, kk, e: calls.append((len(qq), kk)) or real(qq, k, kk, e)
    cols, scores = exact.search(q, 10, ex)
    np.testing.assert_array_equal(cols, deep[0])
    np.testing.assert_allclose(scores, deep[1])
    assert not ex[np.repeat(np.arange(40), 10), cols.ravel()].any()
    # one shallow search for everyone, one deep search for the single row it left short
    assert calls == [(40, 40), (1, 10 + int(np.diff(ex.indptr).max()))]


def test_is_member_matches_dense_lookup():
    m = sp.random(20, 30, density=0.2, random_state=4, format="csr")
    rng = np.random.default_rng(5)
    r, c = rng.integers(0, 20, 500), rng.integers(0, 30, 500)
    np.testing.assert_array_equal(is_member(m, r, c), m.toarray()[r, c] != 0)


def test_covisitation_by_hand():
    # users: u0 A B, u1 A B, u2 A C
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1]], dtype=np.float32))
    c = covisitation(x, shrink=0.0).toarray()
    np.testing.assert_allclose(c, [[0, 2 / np.sqrt(6), 1 / np.sqrt(3)],
                                   [2 / np.sqrt(6), 0, 0],
                                   [1 / np.sqrt(3), 0, 0]], rtol=1e-6)


def test_covisitation_time_decay_halves_old_pairs():
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1]], dtype=np.float32))
    ref = 100 * DAY_S
    # u0's pair is one half-life old, u1's is fresh
    ts = sp.csr_matrix(np.array([[ref - 30 * DAY_S, ref - 30 * DAY_S, 0], [ref, 0, ref]]))
    ts = sp.csr_matrix((ts.data, x.indices, x.indptr), shape=x.shape)
    c = covisitation(x, ts, ref, half_life_days=30.0, shrink=0.0).toarray()
    # counts n: A = 0.5 + 1, B = 0.5, C = 1; pair weights d*d: AB = 0.25, AC = 1
    np.testing.assert_allclose(c[0, 1], 0.25 / np.sqrt(1.5 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(c[0, 2], 1.0 / np.sqrt(1.5 * 1.0), rtol=1e-6)


def test_recent_seeds_take_the_latest_strong_positives():
    x = sp.csr_matrix(np.array([[4, 1, 4, 4]], dtype=np.float32))
    ts = sp.csr_matrix(np.array([[10.0, 40.0, 30.0, 20.0]]))
    s = recent_seeds(x, ts, n_seeds=2, strong=2.0).toarray()[0]
    assert s[2] > s[3] > 0 and s[0] == 0 and s[1] == 0  # 1 is weak, 0 the oldest strong


def test_prune_rows_keeps_the_largest():
    m = sp.csr_matrix(np.array([[5, 1, 3, 4], [0, 2, 0, 1]], dtype=np.float32))
    assert prune_rows(m, 2).toarray().tolist() == [[5, 0, 0, 4], [0, 2, 0, 1]]


def test_ease_reconstructs_block_structure_and_refuses_huge_catalogs(monkeypatch):
    x = sp.csr_matrix(np.kron(np.eye(2), np.ones((5, 3))).astype(np.float32))
    b = ease(x, lam=1.0)
    assert np.allclose(np.diag(b), 0)
    assert (b[:3, :3][~np.eye(3, dtype=bool)] > 0).all() and np.allclose(b[:3, 3:], 0, atol=1e-6)
    import reelrec.recall.covisit as cv
    monkeypatch.setattr(cv, "EASE_MAX_TITLES", 4)
    with pytest.raises(InvalidInput, match="titles"):
        cv.ease(x)


def test_trending_is_regional_and_decays():
    cat = batch_world.catalog()
    ref = dt.datetime(2026, 10, 11, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(5):  # t01 watched in GB today; t02 in US a week ago
        rows.append(dict(event_id=f"a{i}", user_id=f"g{i}", title_id="t01", type="play_start",
                         ts=ref - dt.timedelta(hours=2), region="GB"))
        rows.append(dict(event_id=f"b{i}", user_id=f"s{i}", title_id="t02", type="play_start",
                         ts=ref - dt.timedelta(days=7), region="US"))
    from reelrec.domain.events import EVENT_SCHEMA
    ev = pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)
    uids = np.array([f"g{i}" for i in range(5)] + [f"s{i}" for i in range(5)], dtype=object)
    stats, _ = compute_stats(ev, cat.table, uids, sp.csr_matrix((10, len(cat))), np.array([None] * 10), ref)
    assert stats.trend_day[1] > 0 and stats.trend_day[2] < stats.trend_day[1] / 50
    assert stats.trend_week[2] == pytest.approx(stats.trend_week[1] / 2, rel=0.01)
    s = trending_scores(stats, stats.region_index(["GB", "US"]))
    assert s[0, 1] - s[0, 2] > s[1, 1] - s[1, 2]  # GB's own trend lifts t01 for a GB user
    assert stats.unavailable[stats.region_index(["US"])[0], 41] == 1
    assert stats.unavailable[stats.region_index(["GB"])[0], 41] == 0


def test_merge_dedupes_and_keeps_the_best_placed():
    a = SourceResult("a", np.array([[1, 2, 3], [4, -1, -1]]), np.ones((2, 3)))
    b = SourceResult("b", np.array([[3, 5, 1], [4, 6, 7]]), np.ones((2, 3)))
    c = merge([a, b], max_candidates=4)
    assert c.sources == ("a", "b")
    assert sorted(c.cols[0][c.cols[0] >= 0].tolist()) == [1, 2, 3, 5]
    assert sorted(c.cols[1][c.cols[1] >= 0].tolist()) == [4, 6, 7]
    i = c.cols[0].tolist().index(3)
    assert c.rank[0, i].tolist() == [2, 0]
    i = c.cols[1].tolist().index(6)
    assert np.isinf(c.rank[1, i, 0]) and c.rank[1, i, 1] == 1


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 40), st.integers(0, 10_000))
def test_merge_properties(b, k, cap, seed):
    rng = np.random.default_rng(seed)
    res = []
    for name in ("x", "y", "z"):
        cols = np.array([rng.permutation(30)[:k] for _ in range(b)])
        cols[rng.random(cols.shape) < 0.2] = -1
        res.append(SourceResult(name, cols, rng.random(cols.shape)))
    c = merge(res, cap)
    for u in range(b):
        got = c.cols[u][c.cols[u] >= 0]
        union = set(np.concatenate([r.cols[u] for r in res]).tolist()) - {-1}
        assert len(got) == len(set(got.tolist())) == min(cap, len(union))
        assert set(got.tolist()) <= union


def test_hnsw_index_survives_save_and_load(tmp_path):
    v = clustered(1500, 16, 6)
    q = clustered(10, 16, 7)
    idx = ANNIndex.build(v, ANNConfig(exact_max=100))
    idx.save(tmp_path / "ann.faiss")
    back = ANNIndex.load(tmp_path / "ann.faiss")
    assert back.kind == "hnsw" and back.max_norm == pytest.approx(idx.max_norm, rel=1e-5)
    a, sa = idx.search(q, 20)
    b, sb = back.search(q, 20)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, np.take_along_axis(q @ v.T, a, axis=1), rtol=1e-3, atol=1e-3)
