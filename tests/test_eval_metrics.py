"""Ranking metrics on hand-computed cases, and against a plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from reelrec.eval import metrics as M


def rel_matrix(sets: list[set[int]], n_titles: int) -> sp.csr_matrix:
    rows = [u for u, s in enumerate(sets) for _ in s]
    cols = [t for s in sets for t in sorted(s)]
    return sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(sets), n_titles))


def test_hand_computed_case():
    recs = np.array([[1, 5, 2, 7], [4, 0, 6, -1], [3, 2, 1, 0]])
    rel = rel_matrix([{2, 3, 9}, {4}, set()], 10)  # the third user has nothing to find: dropped
    got = M.accuracy(recs, rel, 3)
    ndcg_a = (1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["recall@3"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["ndcg@3"] == pytest.approx((ndcg_a + 1) / 2)
    assert got["map@3"] == pytest.approx((1 / 9 + 1) / 2)
    assert got["map_all@3"] == pytest.approx((1 / 9 + 1) / 2)
    assert got["hr@3"] == pytest.approx(1.0)


def test_map_variants_differ_when_relevant_exceeds_k():
    # hits at ranks 1 and 2 of 2; five relevant titles
    recs = np.array([[0, 1]])
    rel = rel_matrix([{0, 1, 2, 3, 4}], 6)
    got = M.accuracy(recs, rel, 2)
    assert got["map@2"] == pytest.approx(1.0)  # (1/1 + 2/2) / min(5, 2)
    assert got["map_all@2"] == pytest.approx(2 / 5)
    assert got["ndcg@2"] == pytest.approx(1.0)
    assert got["recall@2"] == pytest.approx(2 / 5)


def test_padding_and_short_lists_count_as_misses():
    rel = rel_matrix([{1}], 3)
    full = M.accuracy(np.array([[0, 1]]), rel, 2)
    short = M.accuracy(np.array([[1]]), rel, 2)  # one recommendation for K = 2
    padded = M.accuracy(np.array([[-1, -1]]), rel, 2)
    assert full["precision@2"] == pytest.approx(0.5)
    assert short["precision@2"] == pytest.approx(0.5) and short["ndcg@2"] == pytest.approx(1.0)
    assert padded["hr@2"] == 0.0 and padded["ndcg@2"] == 0.0


def test_curves_match_pointwise_metrics():
    recs = np.array([[1, 5, 2, 7], [4, 0, 6, 3]])
    rel = rel_matrix([{2, 3, 9}, {4, 3}], 10)
    c = M.curves(recs, rel, range(1, 5))
    for k in range(1, 5):
        assert c["ndcg"][k - 1] == pytest.approx(M.accuracy(recs, rel, k)[f"ndcg@{k}"])


def test_coverage_diversity_novelty():
    assert M.coverage(np.array([[0, 1], [1, 2], [-1, -1]]), 4) == pytest.approx(0.75)
    g = M.genre_matrix([["a"], ["a", "b"], ["c"]])
    # pairs (0,1): 1 - 1/2; (0,2): 1; (1,2): 1 -> mean 2.5/3; the second list has one title
    assert M.diversity(np.array([[0, 1, 2], [0, -1, -1]]), g) == pytest.approx(2.5 / 3)
    assert M.diversity(np.array([[0, 0]]), g) == pytest.approx(0.0)
    # p = 4/4, 1/4, and 0 users clipped to 1/4 -> (0 + 2 + 2) / 3 bits
    assert M.novelty(np.array([[0, 1], [2, -1]]), np.array([4, 1, 0]), 4) == pytest.approx(4 / 3)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError):
        M.accuracy(np.zeros((2, 3), dtype=int), rel_matrix([{1}], 4), 3)


# --- an independent reference: per user, with sets and loops, straight from the definitions ---
def reference(rec_lists: list[list[int]], rel_sets: list[set[int]], k: int) -> dict[str, float]:
    sums = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "hr": 0.0}
    n = 0
    for recs, rel in zip(rec_lists, rel_sets):
        if not rel:
            continue
        n += 1
        top = [r for r in recs[:k] if r >= 0]
        hit_ranks = [i + 1 for i, r in enumerate(recs[:k]) if r in rel]
        sums["precision"] += len(hit_ranks) / k
        sums["recall"] += len(hit_ranks) / len(rel)
        dcg = sum(math.log(2) / math.log(1 + r) for r in hit_ranks)
        idcg = sum(math.log(2) / math.log(1 + r) for r in range(1, min(len(rel), k) + 1))
        sums["ndcg"] += dcg / idcg
        sums["map"] += sum((j + 1) / r for j, r in enumerate(hit_ranks)) / min(len(rel), k)
        sums["hr"] += 1.0 if set(top) & rel else 0.0
    return {key: v / n for key, v in sums.items()} if n else {}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_reference(data):
    n_titles = data.draw(st.integers(3, 15))
    n_users = data.draw(st.integers(1, 6))
    k = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(1, 8))
    rec_lists, rel_sets = [], []
    for _ in range(n_users):
        perm = data.draw(st.permutations(list(range(n_titles))))
        lst = list(perm[:width]) + [-1] * max(0, width - n_titles)
        cut = data.draw(st.integers(0, len(lst)))
        lst = lst[:cut] + [-1] * (len(lst) - cut)  # pad the tail like a short list
        rec_lists.append(lst)
        rel_sets.append(set(data.draw(st.lists(st.integers(0, n_titles - 1), max_size=6))))
    ref = reference(rec_lists, rel_sets, k)
    got = M.accuracy(np.array(rec_lists), rel_matrix(rel_sets, n_titles), k)
    for key, value in ref.items():
        assert got[f"{key}@{k}"] == pytest.approx(value, abs=1e-9), key


def test_paired_bootstrap_sees_a_shift_that_separate_intervals_hide():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.0, 1.0, 60)          # users differ a lot ...
    a = np.clip(b + 0.02, 0.0, 1.0)        # ... and A is a little better on every one of them
    ia, ib = M.bootstrap_ci(a, seed=1), M.bootstrap_ci(b, seed=1)
    assert ia[0] < ib[1]                   # the per-model intervals overlap
    r = M.paired_bootstrap(a, b, seed=1)
    assert r["p_not_better"] == 0.0 and r["ci95"][0] > 0.0
    assert r["rel"] == pytest.approx(a.mean() / b.mean() - 1)
    assert r["users"] == 60


def test_paired_bootstrap_of_equal_models_straddles_zero():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)
    b = b - b.mean() + a.mean()            # same mean, independent per user
    r = M.paired_bootstrap(a, b, seed=2)
    assert r["ci95"][0] < 0.0 < r["ci95"][1] and 0.3 < r["p_not_better"] < 0.7
    with pytest.raises(ValueError, match="same users"):
        M.paired_bootstrap(a, b[:-1])
