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
from reelrec.recall.ann import ANNConfig, ANNIndex, is_member, recall_with_ties  # noqa: E402
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
    r = recall_with_ties(approx.search(q, 100)[0], q, v, exact.search(q, 100)[1])
    assert r >= 0.95


def test_search_drops_excluded_titles_and_pads():
    v = np.eye(4, dtype=np.float32)
    idx = ANNIndex.build(v)
    q = np.array([[1, 0.5, 0.2, 0.1]], dtype=np.float32)
    ex = sp.csr_matrix(np.array([[1, 0, 1, 0]], dtype=np.float32))
    cols, scores = idx.search(q, 3, ex)
    assert cols.tolist() == [[1, 3, -1]]
    assert np.isneginf(scores[0, 2])


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


def _random_artifacts(seed: int, n: int = 3000, b: int = 40):
    """A catalog of ``n`` titles with ties everywhere (integer popularity, whole days, small
    whole trends), three regions blocking a fifth of the titles each, and ``b`` users of every
    region."""
    from reelrec.recall.als import ALSParams
    from reelrec.recall.candidates import Artifacts, UserState
    from reelrec.recall.popular import TitleStats
    rng = np.random.default_rng(seed)
    R, G, K, f = 3, 8, 4, 16
    genres = sp.csr_matrix((rng.random((n, G)) < 0.2) | (np.arange(G)[None, :] == rng.integers(0, G, n)[:, None]),
                           dtype=np.float32)
    blocked = rng.random((R + 1, n)) < 0.2
    blocked[R] = False
    whole = lambda *s: rng.integers(0, 4, s).astype(np.float32)  # noqa: E731
    age = rng.integers(0, 60, n).astype(np.float32)
    age[rng.random(n) < 0.05] = np.nan
    stats = TitleStats(
        regions=np.array(["GB", "IN", "US"]), pop=np.floor(rng.pareto(0.3, n) * 50).astype(np.float32),
        pop_region=whole(R, n), trend_day=whole(n), trend_week=whole(n), trend_region=whole(R, n),
        recent=whole(n), age_days=age,
        mean_weight=rng.random(n).astype(np.float32), completion=rng.random((K, n)).astype(np.float32),
        ctr=rng.random((K, n)).astype(np.float32), completion_all=rng.random(n).astype(np.float32),
        ctr_all=rng.random(n).astype(np.float32), genres=genres, genre_names=np.array([f"g{i}" for i in range(G)]),
        kind=rng.integers(0, 3, n), runtime_min=rng.random(n).astype(np.float32) * 100,
        unavailable=sp.csr_matrix(blocked, dtype=np.float32), centroids=rng.normal(size=(K, f)).astype(np.float32))
    vectors = clustered(n, f, seed)
    cov = prune_rows(sp.csr_matrix(sp.random(n, n, density=0.02, random_state=seed, dtype=np.float32)), 20)
    art = Artifacts(np.array([f"t{i}" for i in range(n)], dtype=object), vectors, np.zeros(n, bool), ALSParams(),
                    ANNIndex.build(vectors), cov, stats)
    pos = sp.random(b, n, density=0.01, random_state=seed + 1, format="csr", dtype=np.float32)
    pos.data = np.ceil(pos.data * 4)
    pos = sp.csr_matrix(sp.diags((np.arange(b) < b - 1).astype(np.float32)) @ pos)  # the last: no history
    pos.eliminate_zeros()
    ts = pos.copy()
    ts.data = rng.integers(0, 10**6, pos.nnz).astype(np.float64)
    neg = sp.random(b, n, density=0.002, random_state=seed + 2, format="csr", dtype=np.float32)
    exclude = sp.csr_matrix(((pos + neg) > 0).astype(np.float32))
    state = UserState(pos, sp.csr_matrix(ts), exclude, clustered(b, f, seed + 3), rng.integers(-1, R, b),
                      rng.integers(0, K, b))
    return art, state


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_sources_equal_the_dense_top_k(seed):
    """Trending and new (per-region lists), co-visitation (sparse product), genre_pop (genre
    prefixes and their bound) and the ANN search with the region inside FAISS give exactly what
    a top-k over the source's whole score block, without the exclusion block, gives."""
    from reelrec.recall.als import topk_excluding
    from reelrec.recall.candidates import dense_scores, exclusion_block, run_sources
    from reelrec.recall.popular import genre_affinity, genre_pop_scores, new_scores
    art, state = _random_artifacts(seed)
    quotas = {"ann": 30, "covisit": 25, "trending": 20, "new": 10, "genre_pop": 30}
    dense = dense_scores(art, state, tuple(quotas))
    ex = exclusion_block(art, state)
    ref = {"covisit": np.asarray((recent_seeds(state.positives, state.ts) @ art.covisit).todense(), np.float32),
           "trending": trending_scores(art.stats, state.region), "new": new_scores(art.stats, len(state)),
           "genre_pop": genre_pop_scores(genre_affinity(state.positives, art.stats.genres), art.stats)}
    got = {r.name: r for r in run_sources(art, state, quotas, dense)}
    cols = np.concatenate([got[s].cols for s in quotas], axis=1)
    for name, block in ref.items():
        np.testing.assert_array_equal(np.asarray(dense[name]), block)  # the block, read whole
        np.testing.assert_array_equal(dense[name].at(cols), np.take_along_axis(block, np.maximum(cols, 0), axis=1))
        s = np.where(block > 0, block, -np.inf) if name == "covisit" else block
        want_c, want_s = topk_excluding(s, ex, quotas[name])
        np.testing.assert_array_equal(got[name].cols, want_c, err_msg=name)
        np.testing.assert_array_equal(got[name].scores, want_s, err_msg=name)
    assert (got["new"].cols >= 0).all() and (got["covisit"].cols >= 0).any()
    want_c, want_s = art.ann.search(state.vectors, quotas["ann"], ex)  # exact (flat) index
    np.testing.assert_array_equal(got["ann"].cols, want_c)
    np.testing.assert_allclose(got["ann"].scores, want_s, rtol=1e-6)
    assert not is_member(ex, np.repeat(np.arange(len(state)), cols.shape[1]), np.maximum(cols, 0).ravel())[
        cols.ravel() >= 0].any()
    # the lists and FAISS selectors built on the way stay out of a pickled model (Ray ships it)
    import pickle
    again = pickle.loads(pickle.dumps(art))
    assert "_derived" not in again.__dict__ and "_selectors" not in again.ann.__dict__
    for r in run_sources(again, state, quotas, dense_scores(again, state, tuple(quotas))):
        np.testing.assert_array_equal(r.cols, got[r.name].cols)


def test_top_k_ties_keep_the_lowest_columns():
    from reelrec.recall.als import topk_excluding
    s = np.array([[1, 3, 3, 3, 0, 3], [2, 2, 2, 2, 2, 2]], np.float32)
    ex = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32))
    cols, vals = topk_excluding(s, ex, 3)
    assert cols.tolist() == [[1, 3, 5], [1, 2, 3]]
    assert vals.tolist() == [[3, 3, 3], [2, 2, 2]]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(1, 2**16), st.integers(1, 2**17), st.integers(0, 2**31))
def test_entry_order_is_lexsort_by_row_value_column(n, n_rows, n_cols, seed):
    from reelrec.recall.als import entry_order
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, n_rows * n_cols, n))
    rows, cols = pairs // n_cols, pairs % n_cols
    # few distinct values, signed zeros, infinities and subnormals: ties and every corner of the key
    values = np.array([0.0, -0.0, 1.5, -2.0, 1e30, -1e-30, np.inf, -np.inf, 3e-39, -3e-39], np.float32)
    vals = rng.choice(values, len(rows))
    np.testing.assert_array_equal(entry_order(rows, cols, vals), np.lexsort((cols, -vals, rows)))
    if len(vals):  # NaN: lexsort's own order
        vals[0] = np.nan
        np.testing.assert_array_equal(entry_order(rows, cols, vals), np.lexsort((cols, -vals, rows)))


def _repeated(n: int, distinct: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` title vectors drawn from ``distinct`` rows (shuffled, every row used), and the rows."""
    rng = np.random.default_rng(seed)
    u = clustered(distinct, d, seed)
    rows = rng.permutation(np.concatenate([np.arange(distinct), rng.integers(0, distinct, n - distinct)]))
    return u[rows], rows


def _exact_with_ties(q, v, rows, exclude, k):
    """Brute force over the titles, equal vectors scored once (so ties are exact), lowest
    column first among equal scores."""
    from reelrec.recall.als import topk_excluding
    u = np.zeros((rows.max() + 1, v.shape[1]), np.float32)
    u[rows] = v
    return topk_excluding((q @ u.T)[:, rows], exclude, k)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_repeated_vectors_are_indexed_once_and_expand_to_every_title(kind):
    v, rows = _repeated(1500, 120, 16, 8)
    q = clustered(25, 16, 9)
    idx = ANNIndex.build(v, ANNConfig(exact_max=500), force=None if kind == "flat" else "hnsw")
    # 1,500 titles above exact_max, but the choice is made on the 120 distinct vectors
    assert idx.kind == kind and idx.distinct == 120 and idx.size == 1500
    cols, scores = idx.search(q, 60)
    want_c, want_s = _exact_with_ties(q, v, rows, None, 60)
    np.testing.assert_array_equal(cols, want_c)
    np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-4)
    # the titles of one vector come together, lowest column first
    first = cols[:, 0]
    group = np.flatnonzero(rows == rows[first[0]])
    assert cols[0, :len(group)].tolist() == group[:60].tolist()


@pytest.mark.parametrize("seed, b", [(0, 30), (1, 200)])
def test_repeated_vectors_respect_regions_and_exclusions(seed, b):
    """Regions block single titles and whole vectors' titles; users exclude titles, some of them
    every available title of a top vector: the search matches the exact top-k without them
    (a few users a region: FAISS's search with the region's selector; many: the masked product)."""
    rng = np.random.default_rng(seed)
    n, R, k = 2000, 3, 40
    v, rows = _repeated(n, 150, 16, seed + 20)
    blocked = rng.random((R + 1, n)) < 0.25
    blocked[:R] |= rng.random((R, 150))[:, rows] < 0.2  # every title of a fifth of the vectors
    blocked[R] = False
    un = sp.csr_matrix(blocked, dtype=np.float32)
    q = clustered(b, 16, seed + 30)
    groups = rng.integers(0, R + 1, b)
    ex = (rng.random((b, n)) < 0.01)
    top = np.argmax(q @ v.T, axis=1)  # each user excludes every title of their best vector
    ex |= rows[None, :] == rows[top][:, None]
    ex = sp.csr_matrix(ex, dtype=np.float32)
    full = sp.csr_matrix(ex.maximum(un[groups]))
    want_c, want_s = _exact_with_ties(q, v, rows, full, k)
    for idx in (ANNIndex.build(v), ANNIndex.build(v, force="hnsw")):
        cols, scores = idx.search(q, k, ex, unavailable=un, groups=groups)
        np.testing.assert_array_equal(cols, want_c, err_msg=idx.kind)
        np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-4)
        # the region passed through the exclusions instead gives the same
        cols2, _ = idx.search(q, k, full)
        np.testing.assert_array_equal(cols2, want_c, err_msg=idx.kind)
    assert (want_c >= 0).all()


def test_deduplicated_index_survives_save_load_and_pickle(tmp_path):
    import pickle
    from reelrec.recall.ann import rows_path
    v, rows = _repeated(900, 70, 16, 11)
    q = clustered(10, 16, 12)
    idx = ANNIndex.build(v, ANNConfig(exact_max=10))  # HNSW on the distinct rows
    idx.save(tmp_path / "ann.faiss")
    assert rows_path(tmp_path / "ann.faiss").exists()
    back = ANNIndex.load(tmp_path / "ann.faiss")
    assert back.kind == "hnsw" and back.distinct == 70 and back.size == 900
    again = pickle.loads(pickle.dumps(back))
    a = idx.search(q, 50)[0]
    np.testing.assert_array_equal(back.search(q, 50)[0], a)
    np.testing.assert_array_equal(again.search(q, 50)[0], a)


def test_an_index_saved_before_the_dedupe_still_serves(tmp_path):
    """An older version's index holds one row per title and no rows file: it is served as it is,
    or rebuilt on the distinct rows when the title vectors are given and those are few."""
    from reelrec.recall.ann import rows_path
    v, rows = _repeated(600, 40, 8, 13)
    q = clustered(12, 8, 14)
    old = ANNIndex.build(v, dedupe=False)
    assert old.distinct == old.size == 600
    old.save(tmp_path / "ann.faiss")
    rows_path(tmp_path / "ann.faiss").unlink()
    want_c, want_s = _exact_with_ties(q, v, rows, None, 30)
    served = ANNIndex.load(tmp_path / "ann.faiss")
    assert served.distinct == 600
    # exact, but FAISS picks arbitrarily among the titles tied at the 30th place
    assert recall_with_ties(served.search(q, 30)[0], q, v, want_s) == 1.0
    rebuilt = ANNIndex.load(tmp_path / "ann.faiss", vectors=v)
    assert rebuilt.distinct == 40
    np.testing.assert_array_equal(rebuilt.search(q, 30)[0], want_c)


def test_recall_with_ties_counts_equal_scores():
    v = np.array([[3, 0], [2, 0], [2, 0], [1, 0], [0, 0]], np.float32)
    q = np.array([[1, 0]], np.float32)
    exact_s = np.array([[3, 2]], np.float32)  # top 2: column 0 and one of the tied 1, 2
    assert recall_with_ties(np.array([[0, 2]]), q, v, exact_s) == 1.0
    assert recall_with_ties(np.array([[0, 3]]), q, v, exact_s) == 0.5
    assert recall_with_ties(np.array([[1, 2]]), q, v, exact_s) == 1.0
    assert recall_with_ties(np.array([[4, -1]]), q, v, exact_s) == 0.0


def test_rp3beta_and_item_knn_by_hand():
    """Two blocks of titles watched by two groups of users: each title's neighbours are its own
    block; RP3beta is the walk's probability over popularity^beta, item-kNN the shrunk cosine."""
    from reelrec.recall.itemitem import item_knn, rp3beta
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32))
    w = rp3beta(x, alpha=1.0, beta=0.0, top=10).toarray()
    # from title 0: users 0 and 1 (1/2 each); user 0 -> titles 0, 1 (1/2); user 1 -> 0, 1, 2 (1/3)
    assert w[0, 1] == pytest.approx(0.5 * 0.5 + 0.5 / 3) and w[0, 2] == pytest.approx(0.5 / 3)
    assert w[0, 0] == 0 and w[0, 3] == 0
    wb = rp3beta(x, alpha=1.0, beta=1.0, top=10).toarray()
    assert wb[0, 2] == pytest.approx(w[0, 2] / 3)  # title 2 has three users
    k = item_knn(x, top=10, shrink=0.0).toarray()
    assert k[0, 1] == pytest.approx(2 / np.sqrt(2 * 2)) and k[0, 2] == pytest.approx(1 / np.sqrt(2 * 3))
    assert (rp3beta(x, top=1).getnnz(axis=1) <= 1).all() and (item_knn(x, top=1).getnnz(axis=1) <= 1).all()


def test_session_covisitation_pairs_titles_of_one_sitting_only():
    """Titles one user turned positive within the gap pair up; titles of another day do not,
    whoever watched them. Counts are over (sqrt(n_i n_j) + shrink)."""
    from reelrec.errors import InvalidInput
    from reelrec.recall.itemitem import build, session_covisitation
    day = 86400.0
    x = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1]], np.float32))
    # user 0: titles 0, 1 in one sitting, title 2 a day later; user 1: 0 and 1 together, 3 a day
    # later; user 2: 2 and 3 two days apart
    t = sp.csr_matrix(np.array([[10.0, 70.0, day, 0], [5.0, 20.0, 0, day], [0, 0, 100.0, 2 * day + 100]]))
    w = session_covisitation(x, t, gap_s=600.0, shrink=0.0).toarray()
    assert w[0, 1] == pytest.approx(2 / np.sqrt(2 * 2)) and w[1, 0] == pytest.approx(w[0, 1])
    assert (w[2] == 0).all() and (w[3] == 0).all() and w[0, 0] == 0
    # a gap of two days joins every pair of each user's positives
    wide = session_covisitation(x, t, gap_s=3 * day, shrink=0.0).toarray()
    assert wide[2, 3] == pytest.approx(1 / np.sqrt(2 * 2)) and wide[0, 2] == pytest.approx(1 / np.sqrt(2 * 2))
    # the window bounds the pairs of a positive to its next ``window`` ones in time order
    assert session_covisitation(x, t, gap_s=3 * day, shrink=0.0, window=1).toarray()[0, 3] == 0
    assert wide[0, 3] > 0
    with pytest.raises(InvalidInput):
        build("session", x, {})
    with pytest.raises(InvalidInput):
        session_covisitation(x, sp.csr_matrix(np.ones((3, 4))), gap_s=600.0)
