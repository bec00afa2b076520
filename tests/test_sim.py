"""The synthetic world: a small world must look like a streaming service and keep its promises
(every event type, valid events, availability, determinism, ground truth that explains plays)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from reelrec.config import load_settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.events import EVENT_TYPES, parse_event
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import load_users
from reelrec.errors import Conflict, InvalidInput, NotFound
from reelrec.sim import SimConfig, load_truth, simulate
from reelrec.sim import vocab as V
from reelrec.sim.catalog import make_catalog
from reelrec.sim.population import make_population
from reelrec.storage.lake import open_lake

UTC = dt.timezone.utc
START = dt.date(2026, 10, 5)


def _world(path, **kw):
    s = load_settings(data_dir=path)
    cfg = SimConfig(**{"users": 300, "titles": 200, "days": 2, "seed": 7, "progress": False, **kw})
    return s, simulate(cfg, s)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s, summary = _world(tmp_path_factory.mktemp("world"))
    events = open_lake(s.lake).scan()
    return {"settings": s, "summary": summary, "events": events,
            "catalog": Catalog.load(s.data_dir), "users": load_users(s.data_dir),
            "truth": load_truth(s.data_dir)}


def _of(events: pa.Table, *types: str) -> pa.Table:
    return events.filter(pc.is_in(events["type"], pa.array(types)))


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False)


def test_every_event_type_but_profile_and_rating(world):
    seen = set(_col(world["events"], "type"))
    assert set(EVENT_TYPES) - {"profile", "rating"} <= seen
    assert not seen & {"profile", "rating"}
    assert world["summary"].events == world["events"].num_rows
    assert world["summary"].by_type["impression"] == len(_of(world["events"], "impression"))


def test_event_ids_are_unique_and_sorted_within_the_window(world):
    ev = world["events"]
    assert pc.count_distinct(ev["event_id"]).as_py() == ev.num_rows
    ts = ev["ts"].cast(pa.int64()).to_numpy() // 1000
    start = (START - dt.date(1970, 1, 1)).days * 86400
    assert ts.min() >= start - 86400 and ts.max() < start + 2 * 86400


def test_catalog_shape():
    cat = make_catalog(np.random.default_rng(3), 5000, 100, START, 7)
    t = cat.table
    kinds = _col(t, "kind")
    for kind, share in zip(V.KINDS, V.KIND_SHARES):
        assert abs((kinds == kind).mean() - share) < 0.03
    runtime, ep_runtime = _col(t, "runtime_min"), _col(t, "episode_runtime_min")
    movie, doc, series = kinds == "movie", kinds == "documentary", kinds == "series"
    assert runtime[movie].min() >= 80 and runtime[movie].max() <= 180
    assert runtime[doc].min() >= 40 and runtime[doc].max() <= 120
    assert ep_runtime[series].min() >= 20 and ep_runtime[series].max() <= 60
    assert (_col(t, "episodes")[series] >= 1).all() and np.isnan(runtime[series]).all()
    genres = t["genres"].to_pylist()
    assert all(1 <= len(g) <= 3 and len(set(g)) == len(g) for g in genres)
    assert all(set(g) <= set(V.DOCUMENTARY) for g, d in zip(genres, doc) if d)
    assert all(not set(g) & set(V.DOCUMENTARY) for g, d in zip(genres, doc) if not d)
    # regional genres come from home: most Bollywood titles are Indian, K-dramas Korean
    origin = _col(t, "origin_region")
    bolly = np.array(["bollywood" in g for g in genres])
    kdrama = np.array(["k-drama" in g for g in genres])
    assert bolly.sum() > 50 and (origin[bolly] == "IN").all()
    assert kdrama.sum() > 50 and (origin[kdrama] == "KR").all()
    # co-occurrence: action goes with thriller far more than with romance
    pairs = lambda a, b: sum(a in g and b in g for g in genres)  # noqa: E731
    assert pairs("action", "thriller") > 5 * max(pairs("action", "romance"), 1)
    # decades of releases; new releases arrive inside the window
    added, release = t["added_date"].to_pylist(), t["release_date"].to_pylist()
    years = [d.year for d in release]
    assert min(years) < 1990 and max(years) >= 2025
    new = added[5000:]
    assert all(START <= d < START + dt.timedelta(days=7) for d in new)
    assert all(d < START for d in added[:5000])
    assert all(r <= a for r, a in zip(release, added))
    # region-only titles exist for regional catalogs
    home_only = [r == [o] for r, o in zip(t["regions"].to_pylist(), origin)]
    assert sum(h for h, o in zip(home_only, origin) if o == "IN") > 30


def test_population_shape():
    pop = make_population(np.random.default_rng(4), 4000, 200, START, 7)
    share = pop.kind_share
    assert np.allclose(share.sum(axis=1), 1, atol=1e-5)
    top = share.max(axis=1)
    assert 0.6 < np.median(top) < 0.8  # most users lean to one kind, about 70/15/15
    assert (np.argmax(share, axis=1) == 0).mean() > 0.45
    taste = pop.taste
    assert np.allclose((taste * V.FICTION_MASK).sum(1), 1, atol=1e-4)
    # home genres: Indian users like Bollywood far more than others do
    india = pop.region == V.RI["IN"]
    assert taste[india, V.GI["bollywood"]].mean() > 5 * taste[~india, V.GI["bollywood"]].mean()
    # long tail of activity
    assert np.percentile(pop.activity, 99) > 8 * np.median(pop.activity)
    start_s = (START - dt.date(1970, 1, 1)).days * 86400
    assert (pop.signup_s[pop.joiner] >= start_s).all()
    assert (pop.signup_s[~pop.joiner] < start_s).all()
    picks = pop.picks.to_pylist()
    n_picks = np.array([len(p) for p in picks])
    assert (n_picks[pop.onboarded] >= 3).all() and (n_picks[pop.onboarded] <= 5).all()
    assert (n_picks[~pop.onboarded] == 0).all()
    assert pop.onboarded[pop.joiner].mean() > 0.7


def test_events_validate_against_the_catalog(world):
    ev, cat = world["events"], world["catalog"]
    idx = np.random.default_rng(0).choice(ev.num_rows, 3000, replace=False)
    sample = ev.take(idx).to_pylist()
    sample += _of(ev, "onboarding", "search", "thumbs_down", "skip_recap").to_pylist()
    now = dt.datetime(2026, 11, 1, tzinfo=UTC)
    for rec in sample:
        e = parse_event({k: v for k, v in rec.items() if v is not None}, titles=cat, now=now)
        assert e.type == rec["type"]


def test_progress_positions_stay_within_runtime(world):
    prog = _of(world["events"], "progress")
    cat = world["catalog"]
    runtime = cat.runtime_s[[cat.index_of(t) for t in _col(prog, "title_id")]]
    pos, watched = _col(prog, "position_s"), _col(prog, "watched_s")
    assert (pos <= runtime + 1e-3).all() and (pos > 0).all()
    assert (watched > 0).all() and (watched <= pos + 1e-3).all()
    # many early drop-offs and many completions: both signals are there
    f = fold_interactions(world["events"], cat.table)
    neg = _col(f, "negative")
    assert 0.05 < neg.mean() < 0.5
    assert (_col(f, "best_completion") >= 0.9).mean() > 0.2


def test_plays_follow_latent_taste(world):
    ev, truth = world["events"], world["truth"]
    plays = _of(ev, "play_start")
    imps = _of(ev, "impression")
    pu, pt = truth.user_rows(_col(plays, "user_id")), truth.title_cols(_col(plays, "title_id"))
    iu, it = truth.user_rows(_col(imps, "user_id")), truth.title_cols(_col(imps, "title_id"))
    assert truth.preference(pu, pt).mean() > truth.preference(iu, it).mean() + 1.0
    # users mostly play their favourite kind
    top_kind = truth.kind_share.argmax(axis=1)[pu]
    assert (truth.title_kind[pt] == top_kind).mean() > 0.55
    # thumbs follow preference too
    ups, downs = _of(ev, "thumbs_up"), _of(ev, "thumbs_down")
    pref = lambda t: truth.preference(truth.user_rows(_col(t, "user_id")),  # noqa: E731
                                      truth.title_cols(_col(t, "title_id"))).mean()
    assert pref(ups) > pref(downs) + 1.0


def test_ground_truth_scores_match_pairwise_preference(world):
    truth = world["truth"]
    users = np.arange(0, 300, 37)
    dense = truth.scores(users)
    assert dense.shape == (len(users), len(truth.title_ids))
    u = np.repeat(users, len(truth.title_ids))
    t = np.tile(np.arange(len(truth.title_ids)), len(users))
    assert np.allclose(dense.ravel(), truth.preference(u, t), atol=1e-4)
    top = truth.top_k(users, 10)
    avail = truth.available(users)
    assert np.take_along_axis(avail, top, axis=1).all()
    s = np.take_along_axis(dense, top, axis=1)
    assert (np.diff(s, axis=1) <= 1e-6).all()
    best = -np.sort(-np.where(avail, dense, -np.inf), axis=1)[:, :10]
    assert np.allclose(s, best)
    assert list(truth.title_ids) == world["catalog"].ids
    assert list(truth.user_ids) == world["users"]["user_id"].to_pylist()
    with pytest.raises(NotFound):
        truth.user_rows(["nobody"])


def test_newcomers_onboard_and_start_cold(world):
    users, ev = world["users"], world["events"]
    signup = dict(zip(_col(users, "user_id"), users["signup_ts"].to_pylist()))
    picks = dict(zip(_col(users, "user_id"), users["onboarding_genres"].to_pylist()))
    onb = _of(ev, "onboarding")
    start = dt.datetime.combine(START, dt.time(), UTC)
    joiners = {u for u, s in signup.items() if s >= start}
    assert world["summary"].new_users == len(joiners) > 0
    assert set(_col(onb, "user_id")) <= joiners and onb.num_rows >= 0.7 * len(joiners)
    for r in onb.to_pylist():
        assert r["genres"] == picks[r["user_id"]] and r["ts"] >= signup[r["user_id"]]
    # nobody acts before signing up
    first = ev.group_by("user_id").aggregate([("ts", "min")]).to_pylist()
    assert all(r["ts_min"] >= signup[r["user_id"]] for r in first)


def test_regional_availability_and_release_dates_respected(world):
    ev, cat = world["events"], world["catalog"]
    shown = _of(ev, "impression", "play_start")
    regions = cat.table["regions"].to_pylist()
    added = cat.table["added_date"].to_pylist()
    idx = [cat.index_of(t) for t in _col(shown, "title_id")]
    ev_region = _col(shown, "region")
    ev_day = shown["ts"].cast(pa.date32()).to_pylist()
    assert all(not regions[i] or r in regions[i] for i, r in zip(idx, ev_region))
    assert all(added[i] <= d for i, d in zip(idx, ev_day))
    # titles confined to a region are actually played there
    local = [i for i in idx if regions[i] and len(regions[i]) == 1]
    assert local


def test_sessions_have_device_patterns_and_shelves(world):
    ev, cat = world["events"], world["catalog"]
    plays = _of(ev, "play_start")
    runtime = cat.runtime_s[[cat.index_of(t) for t in _col(plays, "title_id")]]
    dev = _col(plays, "device")
    assert runtime[dev == "mobile"].mean() < runtime[dev == "tv"].mean()
    imps = _of(ev, "impression")
    assert set(_col(imps, "slot_kind")) == {"exploit", "explore", "novel"}
    shelves = set(_col(imps, "shelf_id"))
    assert {"popular", "new", "search"} <= shelves and any(s.startswith("genre:") for s in shelves)
    queries = _col(_of(ev, "search"), "query")
    assert all(any(g in q for g in V.GENRES) for q in queries)
    skips = _of(ev, "skip_intro", "skip_recap")
    assert set(cat.table.take([cat.index_of(t) for t in _col(skips, "title_id")])["kind"]
               .to_pylist()) == {"series"}


def test_same_seed_same_lake(tmp_path):
    tables = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        s, _ = _world(tmp_path / name, users=120, titles=60, seed=seed, chunk_users=50)
        tables.append(open_lake(s.lake).scan().sort_by("event_id"))
        if name == "a":
            cat_a = Catalog.load(s.data_dir).table
        elif name == "b":
            assert Catalog.load(s.data_dir).table.equals(cat_a)
    assert tables[0].equals(tables[1])
    assert not tables[0].equals(tables[2])


def test_bad_config_and_existing_lake(tmp_path):
    s = load_settings(data_dir=tmp_path)
    with pytest.raises(InvalidInput) as exc:
        simulate(SimConfig(users=0, titles=5, days=1), s)
    assert {e.field for e in exc.value.errors} == {"users", "titles"}
    _world(tmp_path, users=20, titles=20, days=1)
    with pytest.raises(Conflict):
        _world(tmp_path, users=20, titles=20, days=1)
