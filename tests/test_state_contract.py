"""The online-state contract, run against every backend: memory, a real redis-server and a real
three-node Redis Cluster."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

from fixtures_servers import free_port
from reelrec.errors import InvalidInput, Unavailable
from reelrec.storage.state import open_state, window_buckets

T0 = 1_790_000_000.0  # a fixed unix time, a multiple of 300 s buckets plus 200 s
OPTS = "max_recent=5&bucket_s=60&retention_s=3600&seen_ttl_s=0.3"


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
def state(request):
    if request.param == "memory":
        s = open_state(f"memory://?{OPTS}")
    else:
        s = open_state(f"{request.getfixturevalue(f'{request.param}_url')}?{OPTS}")
    yield s
    s.close()


def test_recent_history_is_bounded_and_newest_first(state):
    assert state.recent("u1") == []
    state.push_recent("u1", ["a", "b"])
    state.push_recent("u1", ["c", "d", "e", "f"])
    state.push_recent("u2", ["z"])
    assert state.recent("u1") == ["f", "e", "d", "c", "b"]
    assert state.recent("u1", n=2) == ["f", "e"]
    assert state.recent("u2") == ["z"]


def test_fields_set_and_atomic_increments(state):
    assert state.fields("u1") == {}
    state.set_fields("u1", {"region": "IN", "device": "tv"})
    assert state.incr_fields("u1", {"w:m1": 4.0, "plays": 1}) == {"w:m1": 4.0, "plays": 1.0}
    assert state.incr_fields("u1", {"w:m1": -1.5}) == {"w:m1": 2.5}
    f = state.fields("u1")
    assert f["region"] == "IN" and float(f["w:m1"]) == 2.5 and float(f["plays"]) == 1.0
    with pytest.raises(InvalidInput) as e:
        state.incr_fields("u1", {"region": 1.0})
    assert e.value.errors[0].field == "deltas"


def test_vectors_round_trip_as_float32(state):
    rng = np.random.default_rng(3)
    v1 = rng.standard_normal(128).astype(np.float32)
    v2 = rng.standard_normal(128)  # float64 in, float32 out
    state.set_vector("u1", v1)
    state.set_vector("u2", v2)
    got = state.vectors(["u2", "nobody", "u1"])
    assert got[1] is None
    np.testing.assert_array_equal(got[2], v1)
    np.testing.assert_array_equal(got[0], v2.astype(np.float32))
    assert got[0].dtype == np.float32
    state.set_vector("u1", np.zeros(128))
    np.testing.assert_array_equal(state.vectors(["u1"])[0], np.zeros(128, np.float32))
    with pytest.raises(InvalidInput) as e:
        state.set_vector("u1", [1.0, float("nan")])
    assert e.value.errors[0].field == "vector"


def test_exposure_and_in_progress(state):
    state.add_exposure("u1", ["m1", "m2"])
    state.add_exposure("u1", ["m2", "m3"])
    assert state.exposure("u1") == {"m1", "m2", "m3"}
    assert state.exposure("u2") == set()
    state.set_in_progress("u1", "s1", T0)
    state.set_in_progress("u1", "m9", T0 + 10)
    state.set_in_progress("u1", "s1", dt.datetime.fromtimestamp(T0 + 20, dt.timezone.utc))
    assert state.in_progress("u1") == ["s1", "m9"]
    state.clear_in_progress("u1", "s1")
    state.clear_in_progress("u1", "never-there")
    assert state.in_progress("u1") == ["m9"]


def test_window_counters_slide_and_decay(state):
    # bucket_s = 60: events 0-59 s apart share a bucket.
    state.bump("trending:IN", ["m1", "m1", "m2"], T0)
    state.bump("trending:IN", ["m2", "m3"], T0 + 120, weights=[2.0, 1.0])
    state.bump("trending:US", ["m9"], T0 + 120)
    at = T0 + 130
    assert state.top("trending:IN", 10, at=at, window_s=3600) == [
        ("m2", 3.0), ("m1", 2.0), ("m3", 1.0)]
    # A window that starts after the first bucket forgets it.
    assert state.top("trending:IN", 10, at=at, window_s=60) == [("m2", 2.0), ("m3", 1.0)]
    assert state.top("trending:IN", 1, at=at, window_s=3600) == [("m2", 3.0)]
    assert state.top("trending:US", 10, at=at, window_s=3600) == [("m9", 1.0)]
    assert state.top("trending:FR", 10, at=at, window_s=3600) == []
    # With decay an old burst counts less than a fresh one.
    decayed = dict(state.top("trending:IN", 10, at=at, window_s=3600, half_life_s=60))
    expected = {b: w for b, w in window_buckets(at, 3600, 60, 60)}
    b0, b2 = int(T0 // 60), int((T0 + 120) // 60)
    assert decayed["m1"] == pytest.approx(2.0 * expected[b0])
    assert decayed["m2"] == pytest.approx(1.0 * expected[b0] + 2.0 * expected[b2])
    assert decayed["m3"] > decayed["m1"]


def test_bandit_posteriors_add_evidence_to_the_prior(state):
    arms = ["IN|c1", "IN|c2", "US|c1"]
    np.testing.assert_array_equal(state.bandit_posteriors(arms), np.ones((3, 2)))
    state.bandit_update(["IN|c1", "US|c1"], successes=[1, 0], failures=[0, 1])
    state.bandit_update(["IN|c1"], successes=[2], failures=[1])
    np.testing.assert_array_equal(
        state.bandit_posteriors(arms, prior=(2.0, 5.0)),
        [[5.0, 6.0], [2.0, 5.0], [2.0, 6.0]])
    with pytest.raises(InvalidInput):
        state.bandit_update(["IN|c1"], successes=[1, 2], failures=[0])


def test_seen_marks_event_ids_once_until_ttl(state):
    assert state.seen("e1") is False
    assert state.seen("e1") is True
    assert state.seen_many(["e2", "e1", "e2", "e3"]) == [False, True, True, False]
    time.sleep(0.4)  # seen_ttl_s = 0.3
    assert state.seen_many(["e1", "e2"]) == [False, False]


def test_bad_arguments_name_the_field(state):
    with pytest.raises(InvalidInput) as e:
        state.push_recent("", ["m1"])
    assert e.value.errors[0].field == "user_id"
    with pytest.raises(InvalidInput) as e:
        state.push_recent("u1", "m1")
    assert e.value.errors[0].field == "title_ids"
    with pytest.raises(InvalidInput) as e:
        state.bump("c", ["m1"], dt.datetime(2026, 1, 1))
    assert e.value.errors[0].field == "at"
    with pytest.raises(InvalidInput) as e:
        state.top("c", 3, at=T0, window_s=0)
    assert e.value.errors[0].field == "window_s"


def test_redis_user_ttl_expires_a_users_keys(redis_url):
    s = open_state(f"{redis_url}?user_ttl_s=0.2")
    s.push_recent("u1", ["m1"])
    s.set_vector("u1", np.ones(4))
    assert s.recent("u1") == ["m1"]
    time.sleep(0.35)
    assert s.recent("u1") == [] and s.vectors(["u1"]) == [None]


def test_unreachable_redis_is_unavailable():
    s = open_state(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(Unavailable):
        s.ping()
    with pytest.raises(Unavailable):
        s.seen("e1")
    with pytest.raises(Unavailable):
        s.vectors(["u1"])


@pytest.mark.parametrize("url, field", [
    ("cassandra://x", "state_url"), ("memory://?max_recent=0", "state_url.max_recent"),
    ("memory://?bucket_s=x", "state_url.bucket_s"), ("memory://?nope=1", "state_url"),
])
def test_bad_urls_are_invalid_input(url, field):
    with pytest.raises(InvalidInput) as e:
        open_state(url)
    assert e.value.errors[0].field == field
