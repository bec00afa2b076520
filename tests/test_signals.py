"""One test per signal-weighting rule (docs/signals.md)."""

import datetime as dt

import pytest

from reelrec.config import SignalWeights
from reelrec.domain.events import events_to_table, parse_event
from reelrec.domain.signals import fold_interactions

UTC = dt.timezone.utc
W = SignalWeights()


def fold(small_catalog, *specs):
    evs = []
    for k, (title, etype, minute, extra) in enumerate(specs):
        ts = dt.datetime(2026, 10, 1, tzinfo=UTC) + dt.timedelta(minutes=minute)
        evs.append(parse_event({"user_id": "u", "title_id": title, "type": etype, "ts": ts.isoformat(),
                                "event_id": str(k), **extra}, titles=small_catalog))
    rows = fold_interactions(events_to_table(evs), small_catalog.table).to_pylist()
    return {r["title_id"]: r for r in rows}


def prog(pos, watched=None):
    return {"position_s": pos, "watched_s": pos if watched is None else watched}


def test_completion_is_a_strong_positive(small_catalog):
    r = fold(small_catalog, ("m1", "play_start", 0, {}), ("m1", "progress", 110, prog(6600)))["m1"]
    assert r["best_completion"] == pytest.approx(6600 / 7200)
    assert r["weight"] == pytest.approx(W.complete)
    assert r["finished"] and not r["negative"]


def test_early_dropoff_is_negative(small_catalog):
    r = fold(small_catalog, ("m1", "play_start", 0, {}), ("m1", "progress", 10, prog(600)))["m1"]
    assert r["weight"] == pytest.approx(W.dropoff) and r["negative"]


def test_series_dropoff_uses_episode_fraction(small_catalog):
    r = fold(small_catalog, ("s1", "play_start", 0, {}), ("s1", "progress", 10, prog(600)))["s1"]
    assert r["negative"]  # 600 s of a 3000 s episode is 20 % < 25 %
    r = fold(small_catalog, ("s1", "play_start", 0, {}), ("s1", "progress", 15, prog(900)))["s1"]
    assert r["weight"] == pytest.approx(W.partial * 0.3)


def test_partial_watch_scales_with_completion(small_catalog):
    r = fold(small_catalog, ("m1", "play_start", 0, {}), ("m1", "progress", 60, prog(3600)))["m1"]
    assert r["weight"] == pytest.approx(W.partial * 0.5)


def test_rewatch_is_among_the_strongest_positives(small_catalog):
    once = fold(small_catalog, ("m1", "play_start", 0, {}), ("m1", "complete", 120, {}))["m1"]
    twice = fold(small_catalog, ("m1", "play_start", 0, {}), ("m1", "complete", 120, {}),
                 ("m1", "play_start", 1000, {}))["m1"]
    assert twice["rewatches"] == 1
    assert twice["weight"] == pytest.approx(once["weight"] + W.rewatch)
    assert twice["weight"] > W.thumbs_up + W.complete - 1e-6 and not twice["finished"]


def test_thumbs_latest_wins(small_catalog):
    up = fold(small_catalog, ("d1", "thumbs_down", 0, {}), ("d1", "thumbs_up", 5, {}))["d1"]
    assert up["thumbs"] == 1 and up["weight"] == pytest.approx(W.thumbs_up)
    down = fold(small_catalog, ("m1", "complete", 0, {}), ("m1", "thumbs_down", 5, {}))["m1"]
    assert down["thumbs"] == -1 and down["negative"]


def test_watchlist_without_play_is_weak_positive(small_catalog):
    r = fold(small_catalog, ("m2", "watchlist_add", 0, {}))["m2"]
    assert r["watchlist_no_play"] and r["weight"] == pytest.approx(W.watchlist_only)
    removed = fold(small_catalog, ("m2", "watchlist_add", 0, {}), ("m2", "watchlist_remove", 1, {}))
    assert removed["m2"]["weight"] == 0


def test_skips_show_familiarity_capped(small_catalog):
    specs = [("s1", "skip_intro", i, {}) for i in range(10)]
    r = fold(small_catalog, *specs)["s1"]
    assert r["skips"] == 10 and r["weight"] == pytest.approx(W.skip_cap)


def test_imported_ratings(small_catalog):
    r = fold(small_catalog, ("m1", "rating", 0, {"rating": 4.0}))["m1"]
    assert r["weight"] == pytest.approx(W.rating_scale * 4.0)
    w = SignalWeights(rating_negative_below=2.0)
    e = parse_event({"user_id": "u", "title_id": "m1", "type": "rating", "rating": 1.0,
                     "ts": "2026-10-01T00:00:00Z"}, titles=small_catalog)
    low = fold_interactions(events_to_table([e]), small_catalog.table, w).to_pylist()[0]
    assert low["weight"] == pytest.approx(w.rating_negative) and low["negative"]


def test_a_rated_title_is_finished_so_the_page_leaves_it_out(small_catalog):
    got = fold(small_catalog, ("m1", "rating", 0, {"rating": 4.0}), ("m2", "play_start", 0, {}))
    assert got["m1"]["finished"] and not got["m2"]["finished"]


def test_series_finished_only_after_every_episode(small_catalog):
    one = fold(small_catalog, ("s1", "complete", 0, {}))["s1"]
    assert not one["finished"]
    all3 = fold(small_catalog, *[("s1", "complete", i, {}) for i in range(3)])["s1"]
    assert all3["finished"]


def test_impressions_do_not_create_interactions(small_catalog):
    assert fold(small_catalog, ("m1", "impression", 0,
                                {"shelf_id": "top", "position": 1, "slot_kind": "exploit"})) == {}


def test_series_binge_is_not_a_rewatch_but_earns_an_episode_bonus(small_catalog):
    # three episodes back to back: episodes 2 and 3 are new viewing, not rewatches
    specs = []
    for ep in range(3):
        specs += [("s1", "play_start", ep * 60, {}), ("s1", "complete", ep * 60 + 50, {})]
    r = fold(small_catalog, *specs)["s1"]
    assert r["rewatches"] == 0 and r["completes"] == 3 and r["finished"]
    assert r["weight"] == pytest.approx(W.complete + 2 * W.episode_bonus)
    again = fold(small_catalog, *specs, ("s1", "play_start", 500, {}))["s1"]
    assert again["rewatches"] == 1 and not again["finished"]
