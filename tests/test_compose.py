"""Composition: the top-20 rules and their precedence, the bandit, shelves and cold start.

Constraints are checked on random inputs with hypothesis; whether a rule *can* hold on an input is
decided by an independent integer program (a different formulation from the composer's own).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from reelrec.compose import (ColdStartPriors, ComposeConfig, ThompsonBandit, UserProfile, blend_weight,
                             build_shared_shelves, compose_page, select_top_picks)
from reelrec.compose import reasons as R
from reelrec.compose.features import SOURCES, CatalogFeatures, Candidates, affinities
from reelrec.compose.mix import kind_bounds, kind_shares
from reelrec.compose.page import Assembler
from reelrec.compose.shelves import BECAUSE, GENRE, KIND, TOP_PICKS
from reelrec.compose.testing import random_candidates, random_features, random_profile
from reelrec.compose.toppicks import EXPLORE, NOVEL, build_pool
from reelrec.domain.catalog import KINDS, Catalog, Title
from reelrec.errors import InvalidInput

GENRES = ["action", "comedy", "crime", "drama", "k-drama", "nature", "thriller"]
TODAY = dt.date(2026, 11, 1)


# --- random inputs ------------------------------------------------------------------------------
@st.composite
def worlds(draw, max_titles: int = 60):
    n = draw(st.integers(1, max_titles))
    n_genres = draw(st.integers(1, len(GENRES)))
    titles = []
    for i in range(n):
        kind = draw(st.sampled_from(KINDS))
        gs = draw(st.lists(st.sampled_from(GENRES[:n_genres]), min_size=1, max_size=3, unique=True))
        regions = draw(st.sampled_from([[], [], [], ["IN"], ["US"]]))
        titles.append(Title(f"t{i}", f"Title {i}", kind, gs, regions=regions,
                            added_date=TODAY - dt.timedelta(days=i), runtime_min=30 + i,
                            episode_runtime_min=30.0, episodes=2))
    features = CatalogFeatures.from_catalog(Catalog.from_titles(titles))
    features.set_popularity(np.asarray(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)), np.float32))
    idx = st.integers(0, n - 1)
    profile = UserProfile(
        user_id="u", region=draw(st.sampled_from(["IN", "US", None])),
        kind_affinity=np.asarray(draw(st.lists(st.floats(0, 50), min_size=3, max_size=3))),
        genre_affinity=np.asarray(draw(st.lists(st.floats(0, 10), min_size=features.n_genres,
                                                max_size=features.n_genres))),
        impressions=np.asarray(draw(st.lists(idx, max_size=n)), np.int64),
        thumbs_down=np.asarray(draw(st.lists(idx, max_size=5)), np.int64),
        finished=np.asarray(draw(st.lists(idx, max_size=5)), np.int64),
        rewatcher=draw(st.booleans()),
        in_progress=np.asarray(draw(st.lists(idx, max_size=3, unique=True)), np.int64),
        recent_positives=np.asarray(draw(st.lists(idx, max_size=3, unique=True)), np.int64),
        n_engaged=draw(st.integers(5, 50)),
    )
    cand_titles = draw(st.lists(idx, max_size=3 * n))
    cands = Candidates.of(cand_titles, draw(st.lists(st.floats(-5, 5), min_size=len(cand_titles),
                                                     max_size=len(cand_titles))),
                          draw(st.lists(st.sampled_from(SOURCES), min_size=len(cand_titles),
                                        max_size=len(cand_titles))))
    cfg = ComposeConfig(genre_cap=draw(st.sampled_from([5, 6])), novel_slots=draw(st.sampled_from([2, 3])),
                        page_size=draw(st.sampled_from([20, 20, 10])))
    return features, profile, cands, cfg, draw(st.integers(0, 2**32 - 1))


def excluded_or_unavailable(features: CatalogFeatures, p: UserProfile) -> set[int]:
    """Rule 1, computed here from the raw profile."""
    bad = set(p.thumbs_down.tolist()) | set(p.in_progress.tolist())
    if not p.rewatcher:
        bad |= set(p.finished.tolist())
    for t in range(len(features)):
        if features.regions and not features.everywhere[t]:
            r = features.region_index(p.region)
            if r < 0 or not features.available[r, t]:
                bad.add(t)
    return bad


def feasible(pool, n, lo, hi, cap, n_v, n_e, upto: int) -> bool:
    """Can a page of n pool items meet the first ``upto`` rules of kind, genre, novelty, explore?"""
    m = len(pool)
    if m == 0:
        return True
    # y: selected, v: novel slot, e: explore slot
    nv = 3 * m
    rows, lb, ub = [], [], []

    def add(row, a, b):
        rows.append(row)
        lb.append(a)
        ub.append(b)
    one = np.zeros(nv)
    one[:m] = 1
    add(one, n, n)
    for i in range(m):  # a slot kind only on a selected item
        r = np.zeros(nv)
        r[m + i] = r[2 * m + i] = 1
        r[i] = -1
        add(r, -np.inf, 0)
    if upto >= 1:
        for k in range(3):
            r = np.zeros(nv)
            r[:m] = pool.kind == k
            add(r, lo[k], hi[k])
    if upto >= 2:
        for g in range(pool.mh.shape[1]):
            r = np.zeros(nv)
            r[:m] = pool.mh[:, g]
            add(r, -np.inf, cap)
    if upto >= 3:
        r = np.zeros(nv)
        r[m:2 * m] = 1
        add(r, n_v, n_v)
    if upto >= 4:
        r = np.zeros(nv)
        r[2 * m:] = 1
        add(r, n_e, n_e)
    ubv = np.concatenate([np.ones(m), pool.novel, pool.explore_ok]).astype(float)
    res = milp(np.zeros(nv), constraints=LinearConstraint(np.asarray(rows), lb, ub),
               integrality=np.ones(nv), bounds=Bounds(np.zeros(nv), ubv))
    return res.status == 0


# --- top picks -----------------------------------------------------------------------------------
@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_top_picks_rules_hold_whenever_they_can(world):
    features, profile, cands, cfg, seed = world
    p = profile.validated(features)
    c = cands.validated(len(features))
    sel = select_top_picks(features, p, c, cfg, rng=np.random.default_rng(seed), claimed=p.in_progress)
    titles = sel.titles.tolist()
    # exclusions never appear, no duplicates
    assert not set(titles) & excluded_or_unavailable(features, profile)
    assert len(set(titles)) == len(titles)
    # the pool the page was chosen from (same draw of the bandit), for the feasibility oracle
    theta = np.random.default_rng(seed).beta(1.0, 1.0, len(features.cluster_names))
    pool = build_pool(features, p, c, cfg, theta, p.in_progress)
    assert not set(pool.t.tolist()) & excluded_or_unavailable(features, profile)
    n = min(cfg.page_size, len(pool))
    assert len(titles) == n
    if len(np.unique(c.titles[~np.isin(c.titles, list(excluded_or_unavailable(features, profile)))])) >= cfg.page_size:
        assert n == cfg.page_size
    lo, hi = kind_bounds(kind_shares(p.kind_affinity, cfg) * n)
    cap = cfg.genre_cap_for(n) if n < cfg.page_size else cfg.genre_cap
    n_e, n_v = cfg.explore_slots(n), cfg.novel_slots_for(n)
    counts = np.bincount(features.kind[sel.titles], minlength=3)
    genre_counts = features.genre_multi_hot[sel.titles].sum(axis=0)
    novel_ok = ~np.isin(sel.titles, p.impressions)
    dom = np.argsort(-p.genre_affinity, kind="stable")[: cfg.dominant_genres]
    dom = dom[p.genre_affinity[dom] > 0]
    outside = ~features.genre_multi_hot[sel.titles][:, dom].any(axis=1)
    # slot kinds are honest whatever happens
    assert novel_ok[sel.slots == NOVEL].all()
    assert outside[sel.slots == EXPLORE].all()
    kind_met = bool(((counts >= lo) & (counts <= hi)).all())
    genre_met = bool((genre_counts <= cap).all())
    novel_met = int((sel.slots == NOVEL).sum()) == n_v
    explore_met = int((sel.slots == EXPLORE).sum()) == n_e
    if feasible(pool, n, lo, hi, cap, n_v, n_e, 1):
        assert kind_met, (counts, lo, hi)
        if feasible(pool, n, lo, hi, cap, n_v, n_e, 2):
            assert genre_met, genre_counts
            if feasible(pool, n, lo, hi, cap, n_v, n_e, 3):
                assert novel_met
                if feasible(pool, n, lo, hi, cap, n_v, n_e, 4):
                    assert explore_met
    assert len(sel.reasons) == n and all(0 <= r < R.N_CODES for r in sel.reasons)


def test_typical_user_gets_the_configured_page_from_the_fast_path():
    rng = np.random.default_rng(7)
    f = random_features(3000, rng)
    for u in range(20):
        p = random_profile(f, rng, user_id=f"u{u}").validated(f)
        c = random_candidates(f, rng).validated(len(f))
        sel = select_top_picks(f, p, c, rng=rng, claimed=p.in_progress)
        assert len(sel) == 20
        assert sel.penalty == (0, 0, 0, 0)
        assert (sel.slots == EXPLORE).sum() == 3 and (sel.slots == NOVEL).sum() == 2
        assert features_genre_max(f, sel.titles) <= 5


def features_genre_max(f, titles):
    return int(f.genre_multi_hot[titles].sum(axis=0).max())


def test_movie_watcher_gets_70_15_15_within_one_slot():
    cfg = ComposeConfig()
    shares = kind_shares(np.array([200.0, 0.0, 0.0]), cfg)
    assert shares == pytest.approx([0.70, 0.15, 0.15], abs=0.01)
    rng = np.random.default_rng(3)
    f = random_features(4000, rng, kind_p=(0.4, 0.3, 0.3))
    p = random_profile(f, rng).validated(f)
    p.kind_affinity = np.array([200.0, 0.0, 0.0])
    sel = select_top_picks(f, p, random_candidates(f, rng).validated(len(f)), cfg, rng=rng)
    counts = np.bincount(f.kind[sel.titles], minlength=3)
    assert np.all(np.abs(counts - shares * 20) <= 1), counts


@given(st.lists(st.floats(0, 1e6), min_size=3, max_size=3), st.floats(0, 1 / 3))
def test_kind_shares_keep_every_floor(aff, floor):
    s = kind_shares(np.asarray(aff), ComposeConfig(kind_floor=floor))
    assert s.sum() == pytest.approx(1.0)
    assert (s >= floor - 1e-12).all()


def test_degrades_without_failing_on_a_tiny_catalog_of_one_genre():
    titles = [Title(f"t{i}", f"T{i}", "movie", ["thriller"]) for i in range(8)]
    f = CatalogFeatures.from_catalog(Catalog.from_titles(titles))
    p = UserProfile("u", kind_affinity=np.array([1.0, 0, 0]), n_engaged=9).validated(f)
    c = Candidates.of(np.arange(8), np.linspace(1, 0, 8)).validated(8)
    sel = select_top_picks(f, p, c, rng=np.random.default_rng(0))
    # the page is filled (rule 2) although no kind mix or genre cap can hold
    assert sorted(sel.titles.tolist()) == list(range(8))
    assert sel.penalty[1] > 0
    empty = select_top_picks(f, p, Candidates.of([], []).validated(8), rng=np.random.default_rng(0))
    # with no ranked candidates the popular backfill still fills the page
    assert len(empty) == 8 and set(empty.reasons.tolist()) <= {R.POPULAR, R.EXPLORE, R.NOVEL}


def test_genre_cap_holds_when_the_ranked_pool_lacks_genre_variety_in_a_kind():
    # A documentary lover whose ranked candidates hold documentaries of one genre only: the kind mix
    # wants about 13 documentaries of 20, which that pool cannot give under the cap of 5. The catalog
    # has documentaries of other genres, so the page can keep both rules (rule 4 only yields to rule
    # 3 when no page can meet both, not when the ranked pool happens to be narrow).
    titles = [Title(f"n{i}", f"N{i}", "documentary", ["nature"]) for i in range(40)]
    titles += [Title(f"h{i}", f"H{i}", "documentary", [("history", "travel", "music")[i % 3]]) for i in range(30)]
    titles += [Title(f"m{i}", f"M{i}", "movie", [("drama", "comedy", "crime")[i % 3]]) for i in range(30)]
    titles += [Title(f"s{i}", f"S{i}", "series", [("drama", "comedy", "crime")[i % 3]]) for i in range(30)]
    f = CatalogFeatures.from_catalog(Catalog.from_titles(titles))
    f.set_popularity(np.linspace(100, 1, len(f)).astype(np.float32))
    ranked = [i for i, t in enumerate(titles) if not t.title_id.startswith("h")]  # no other documentary
    p = UserProfile("u", kind_affinity=np.array([0.0, 0.0, 50.0]), n_engaged=50,
                    genre_affinity=np.ones(f.n_genres)).validated(f)
    c = Candidates.of(ranked, np.linspace(1, 0, len(ranked))).validated(len(f))
    cfg = ComposeConfig()
    for seed in range(5):
        sel = select_top_picks(f, p, c, cfg, rng=np.random.default_rng(seed))
        assert len(sel) == 20
        lo, hi = kind_bounds(kind_shares(p.kind_affinity, cfg) * 20)
        counts = np.bincount(f.kind[sel.titles], minlength=3)
        assert ((counts >= lo) & (counts <= hi)).all(), (counts, lo, hi)
        assert features_genre_max(f, sel.titles) <= cfg.genre_cap, f.genre_multi_hot[sel.titles].sum(axis=0)
        assert sel.penalty[:2] == (0, 0)


def test_explore_slots_follow_the_bandit():
    rng = np.random.default_rng(11)
    f = random_features(3000, rng, n_genres=12)
    p = random_profile(f, rng).validated(f)
    dom = set(np.argsort(-p.genre_affinity)[:3].tolist())
    outside = [c for c, name in enumerate(f.cluster_names)
               if name != "other" and f.genre_index(name) not in dom]
    good = outside[-1]
    bandit = ThompsonBandit(f.cluster_names)
    for c in range(len(f.cluster_names)):
        for _ in range(200):
            bandit.update("IN", c, engaged=(c == good))
    sel = select_top_picks(f, p, random_candidates(f, rng).validated(len(f)), bandit=bandit, rng=rng)
    explore = sel.titles[sel.slots == EXPLORE]
    assert len(explore) == 3
    assert f.cluster[explore[0]] == good or good in f.cluster[explore].tolist()
    reason = R.render(sel.reasons[sel.slots == EXPLORE][0], sel.reason_args[sel.slots == EXPLORE][0], f, "IN")
    assert reason.startswith("New for you: exploring ")


# --- the bandit ----------------------------------------------------------------------------------
def test_posteriors_move_with_engagement():
    b = ThompsonBandit(["comedy", "k-drama"])
    before = b.mean("IN").copy()
    for _ in range(10):
        b.update("IN", "k-drama", engaged=True)
        b.update("IN", "comedy", engaged=False)
    after = b.mean("IN")
    assert after[1] > before[1] and after[0] < before[0]
    # a region without data borrows the pooled posterior
    assert b.mean("BR") == pytest.approx(after)
    # the batch update is the same as one update per impression
    b2 = ThompsonBandit(["comedy", "k-drama"])
    b2.update_many(["IN"] * 20, np.array([1, 0] * 10), np.array([True, False] * 10))
    assert b2.to_dict() == b.to_dict()
    assert ThompsonBandit.from_dict(b.to_dict()).to_dict() == b.to_dict()
    with pytest.raises(InvalidInput, match="cluster"):
        b.update("IN", "western", True)


def test_thompson_concentrates_on_the_better_arm():
    rng = np.random.default_rng(2026)
    rates = np.array([0.05, 0.10, 0.30, 0.10, 0.05])
    b = ThompsonBandit([f"c{i}" for i in range(len(rates))])
    chosen = []
    for _ in range(3000):
        arm = int(np.argmax(b.sample("IN", rng)))
        b.update("IN", arm, bool(rng.random() < rates[arm]))
        chosen.append(arm)
    late = np.asarray(chosen[-1000:])
    assert (late == 2).mean() > 0.8
    assert np.argmax(b.mean("IN")) == 2


# --- shelves -------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(max_titles=80))
def test_shelves_never_repeat_a_title_or_show_an_exclusion(world):
    features, profile, cands, cfg, seed = world
    rng = np.random.default_rng(seed)
    n = len(features)
    neighbours = {int(a): rng.permutation(n)[:15] for a in profile.recent_positives}
    shared = build_shared_shelves(features, profile.region, today=TODAY)
    page = compose_page(features, profile, cands, cfg=cfg, rng=rng, neighbours=neighbours, shared=shared,
                        cold=ColdStartPriors(features))
    assert page.shelves[0].type == TOP_PICKS
    personal = page.personal_titles().tolist()
    assert len(personal) == len(set(personal))
    bad = excluded_or_unavailable(features, profile) - set(profile.in_progress.tolist())
    assert not set(personal) & bad
    cap = cfg.genre_cap_for(cfg.shelf_length)
    for s in page.shelves:
        if s.type in (BECAUSE, GENRE, KIND):
            counts = features.genre_multi_hot[s.titles].sum(axis=0)
            if s.type == GENRE:
                counts[s.arg] = 0
            assert counts.max(initial=0) <= cap
    doc = Assembler(features).document(page, "v1", shared)
    assert doc["shelves"][0]["id"] == "top-picks"
    for s in doc["shelves"]:
        if s["id"].startswith(("trending", "top-10", "new-releases")):
            assert not {int(i["title_id"][1:]) for i in s["items"]} & bad


def test_shelves_reasons_and_order(small_world):
    f, p, c, nb, shared = small_world
    page = compose_page(f, p, c, neighbours=nb, shared=shared, rng=np.random.default_rng(1),
                        cold=ColdStartPriors(f), now=dt.datetime(2026, 11, 1, 20, tzinfo=dt.timezone.utc))
    doc = Assembler(f).document(page, "v7", shared)
    ids = [s["id"] for s in doc["shelves"]]
    assert ids[0] == "top-picks" and ids[1] == "continue-watching"
    assert ids[2] == f"because-you-watched-{f.ids[p.recent_positives[0]]}"
    assert "trending-in" in ids and "top-10" in ids and "new-releases" in ids
    assert any(i.startswith("genre-") for i in ids) and any(i.startswith("kind-") for i in ids)
    cw = doc["shelves"][1]["items"]
    assert [i["title_id"] for i in cw] == [f.ids[t] for t in p.in_progress]  # newest first
    byw = doc["shelves"][2]
    assert byw["title"] == f"Because you watched {f.names[p.recent_positives[0]]}"
    assert all(i["reason"] == byw["title"] for i in byw["items"])
    trending = next(s for s in doc["shelves"] if s["id"] == "trending-in")
    assert trending["title"] == "Trending in India" and trending["items"][0]["reason"] == "Trending in India"
    assert {i["slot_kind"] for i in doc["shelves"][0]["items"]} == {"exploit", "explore", "novel"}
    assert doc["mode"] == "personal" and doc["model_version"] == "v7"


@pytest.fixture
def small_world():
    rng = np.random.default_rng(5)
    f = random_features(2000, rng)
    p = random_profile(f, rng, n_history=60)
    nb = {int(a): rng.permutation(len(f))[:40] for a in p.recent_positives}
    c = random_candidates(f, rng, anchors=p.recent_positives)
    shared = build_shared_shelves(f, "IN", today=TODAY)
    return f, p, c, nb, shared


# --- cold start ----------------------------------------------------------------------------------
def test_new_user_gets_onboarding_trending_and_global_top10(small_world):
    f = small_world[0]
    shared = {**build_shared_shelves(f, "IN", today=TODAY)}
    cold = ColdStartPriors(f)
    u = UserProfile("new", region="IN", device="tv", hour=20, onboarding_genres=["comedy", "crime", "k-drama"])
    page = compose_page(f, u, None, cold=cold, shared=shared, rng=np.random.default_rng(0))
    doc = Assembler(f).document(page, "v1", shared)
    ids = [s["id"] for s in doc["shelves"]]
    assert doc["mode"] == "cold_start"
    assert ids[0] == "top-picks" and "trending-in" in ids and "top-10-global" in ids
    assert [i for i in ids if i.startswith("onboarding-")] == ["onboarding-comedy", "onboarding-crime",
                                                                 "onboarding-k-drama"]
    top = doc["shelves"][0]["items"]
    assert len(top) == 20
    picked = sum(i["reason"].startswith("Because you picked") for i in top)
    assert picked >= 10
    # without picks: region and device alone, no onboarding rows
    bare = compose_page(f, UserProfile("new2", region="IN", device="tv", hour=20), None, cold=cold,
                        shared=shared, rng=np.random.default_rng(0))
    assert not [s for s in bare.shelves if s.type not in (TOP_PICKS,) and s.arg >= 0 and not s.shared]
    assert len(bare.top_picks.titles) == 20
    with pytest.raises(InvalidInput, match="cold"):
        compose_page(f, UserProfile("x", region="IN"), None)


def test_mobile_late_in_india_leans_regional_and_short():
    rng = np.random.default_rng(9)
    f = random_features(5000, rng)
    f.set_popularity(np.ones(len(f), np.float32) + rng.random(len(f)).astype(np.float32) * 0.1)
    cold = ColdStartPriors(f)

    def top(device, hour):
        page = compose_page(f, UserProfile("n", region="IN", device=device, hour=hour), None, cold=cold,
                            rng=np.random.default_rng(0))
        t = page.top_picks.titles[page.top_picks.slots == 0]
        return np.nanmean(f.runtime_s[t]), np.mean(f.origin_region[t] == "IN")

    mob_rt, mob_reg = top("mobile", 22)
    tv_rt, tv_reg = top("tv", 14)
    assert mob_rt < tv_rt
    assert mob_reg > tv_reg


def test_the_page_blends_from_cold_start_to_personal():
    rng = np.random.default_rng(4)
    f = random_features(3000, rng)
    cold = ColdStartPriors(f)
    base = random_profile(f, rng)
    cold_pool = set(cold.candidates(base.validated(f)).titles.tolist())
    others = np.asarray([t for t in range(len(f)) if t not in cold_pool])
    personal = Candidates.of(rng.permutation(others)[:300], np.linspace(1, 0, 300),
                             ["ann"] * 300)
    cfg = ComposeConfig(explore_share=0.0, novel_slots=0)
    shares = []
    for n in range(0, 8):
        base.n_engaged = n
        page = compose_page(f, base, personal, cfg=cfg, cold=cold, rng=np.random.default_rng(0))
        top = page.top_picks.titles
        shares.append(np.isin(top, personal.titles).mean())
        assert page.mode == ("cold_start" if n == 0 else "personal")
        assert blend_weight(n, cfg) == min(1.0, n / 5)
    assert shares[0] == 0.0
    assert shares[5] == shares[6] == shares[7] == 1.0
    assert all(a <= b for a, b in zip(shares, shares[1:])), shares
    assert 0 < shares[1] < shares[2] < shares[3] < 1, shares
    # fully personal: the same page as composing the personal candidates alone
    base.n_engaged = 5
    a = compose_page(f, base, personal, cfg=cfg, cold=cold, rng=np.random.default_rng(1))
    b = select_top_picks(f, base.validated(f), personal.validated(len(f)), cfg, rng=np.random.default_rng(1),
                         claimed=base.validated(f).in_progress)
    assert a.top_picks.titles.tolist() == b.titles.tolist()


# --- inputs --------------------------------------------------------------------------------------
def test_bad_input_names_the_field():
    rng = np.random.default_rng(0)
    f = random_features(50, rng)
    with pytest.raises(InvalidInput, match="titles"):
        Candidates.of([0, 50], [1.0, 0.5]).validated(len(f))
    with pytest.raises(InvalidInput, match="sources"):
        Candidates.of([0], [1.0], ["magic"])
    with pytest.raises(InvalidInput, match="scores"):
        Candidates.of([0, 1], [1.0]).validated(len(f))
    with pytest.raises(InvalidInput, match="hour"):
        UserProfile("u", hour=25).validated(f)
    with pytest.raises(InvalidInput, match="genre_affinity"):
        UserProfile("u", genre_affinity=np.ones(2)).validated(f)
    with pytest.raises(InvalidInput, match="trending"):
        build_shared_shelves(f, "IN", today=TODAY, trending=np.ones(3))


def test_affinities_sum_positive_weights_by_kind_and_genre():
    titles = [Title("a", "A", "movie", ["crime", "drama"]), Title("b", "B", "series", ["crime"]),
              Title("c", "C", "documentary", ["nature"])]
    f = CatalogFeatures.from_catalog(Catalog.from_titles(titles))
    import scipy.sparse as sp
    kind, genre = affinities(f, sp.csr_matrix(np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])))
    assert kind.tolist() == [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
    assert dict(zip(f.genre_names, genre[0])) == {"crime": 3.0, "drama": 2.0, "nature": 0.0}


def test_a_genre_named_twice_counts_once():
    # a title validated with "Drama" and "drama" holds drama once; a table written without
    # validation (an import) keeps the repeat, and the features must still count it once
    assert Title("a", "A", "movie", ["Drama", "drama", "crime"]).validate().genres == ["drama", "crime"]
    import pyarrow as pa
    from reelrec.domain.catalog import TITLE_SCHEMA
    rows = [Title("a", "A", "movie", ["crime"]).validate().__dict__,
            Title("b", "B", "movie", ["drama"]).validate().__dict__]
    rows[1]["genres"] = ["drama", "drama", "crime"]
    f = CatalogFeatures.from_catalog(Catalog(pa.Table.from_pylist(rows, schema=TITLE_SCHEMA)))
    crime, drama = f.genre_names.index("crime"), f.genre_names.index("drama")
    assert f.title_genres[1] == (drama, crime)
    assert f.genre_bits[1] == (1 << drama) | (1 << crime)


def test_page_order_places_novel_items_by_score_and_spreads_explore_items():
    """Exploit and novel items keep the ranker's order; explore items sit at 6, 11 and 16 of 20.
    Without impressions every title is novel, so the page must still lead with the best title."""
    rng = np.random.default_rng(11)
    f = random_features(2000, rng)
    for shown in (True, False):
        for u in range(10):
            p = random_profile(f, rng, user_id=f"u{u}")
            if not shown:
                p.impressions = np.zeros(0, np.int64)
            p = p.validated(f)
            c = random_candidates(f, rng).validated(len(f))
            sel = select_top_picks(f, p, c, rng=rng, claimed=p.in_progress)
            assert len(sel) == 20 and (sel.slots == NOVEL).sum() == 2
            np.testing.assert_array_equal(np.flatnonzero(sel.slots == EXPLORE), [5, 10, 15])
            ranked = sel.scores[sel.slots != EXPLORE]
            assert (np.diff(ranked) <= 0).all()
            if not shown:
                assert sel.slots[0] == NOVEL and sel.scores[0] == ranked.max()
