"""Splits: msr-stratified 75/25 per user, seed-stable, disjoint; temporal cut without future leaks."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from eval_lake import catalog_table, rating_events
from reelrec.domain.catalog import Catalog
from reelrec.domain.events import events_to_table, parse_event
from reelrec.errors import InvalidInput
from reelrec.eval.splits import (
    holdout_rows,
    make_split,
    stratified_split_events,
    temporal_split_events,
)

UTC = dt.timezone.utc


def random_ratings(seed: int, n_users: int = 40, n_titles: int = 60) -> pa.Table:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        n = int(rng.integers(1, 30))
        users += [u] * n
        items += list(rng.choice(n_titles, n, replace=False))
    n = len(users)
    return rating_events(np.array(users), np.array(items), rng.integers(1, 6, n),
                         1_600_000_000 + rng.integers(0, 10_000_000, n), "t")


def pairs(table: pa.Table) -> set[tuple[str, str]]:
    return set(zip(table.column("user_id").to_pylist(), table.column("title_id").to_pylist()))


def per_user(table: pa.Table) -> dict[str, int]:
    counts = table.group_by("user_id").aggregate([("title_id", "count")]).to_pylist()
    return {r["user_id"]: r["title_id_count"] for r in counts}


def test_stratified_is_75_25_per_user_disjoint_and_complete():
    ev = random_ratings(1)
    train, test = stratified_split_events(ev, 0.75, seed=42)
    assert train.num_rows + test.num_rows == ev.num_rows
    assert not pairs(train) & pairs(test)
    total, tr = per_user(ev), per_user(train)
    for user, n in total.items():
        assert tr.get(user, 0) == round(0.75 * n)  # Python rounds half to even, as we do


def test_stratified_is_seed_stable_and_independent_of_event_order():
    ev = random_ratings(2)
    a_train, _ = stratified_split_events(ev, seed=42)
    b_train, _ = stratified_split_events(ev, seed=42)
    c_train, _ = stratified_split_events(ev, seed=43)
    shuffled = ev.take(np.random.default_rng(0).permutation(ev.num_rows))
    d_train, _ = stratified_split_events(shuffled, seed=42)
    assert pairs(a_train) == pairs(b_train) == pairs(d_train)
    assert pairs(a_train) != pairs(c_train)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.integers(0, 2**16))
def test_stratified_counts_hold_for_any_user_sizes(sizes, seed):
    users = np.repeat(np.arange(len(sizes)), sizes)
    items = np.concatenate([np.arange(n) for n in sizes])
    ev = rating_events(users, items, np.full(len(users), 3), np.arange(len(users)) + 1_600_000_000, "t")
    train, test = stratified_split_events(ev, seed=seed)
    tr = per_user(train)
    for u, n in enumerate(sizes):
        assert tr.get(f"u{u}", 0) == round(0.75 * n)
    assert not pairs(train) & pairs(test)


def test_all_events_of_a_pair_stay_together_and_titleless_events_train():
    mk = lambda u, t, ty, ts, **kw: parse_event(  # noqa: E731
        {"user_id": u, "title_id": t, "type": ty, "ts": ts, **kw},
        now=dt.datetime(2030, 1, 1, tzinfo=UTC))
    evs = []
    for i in range(8):
        evs += [mk("a", f"t{i}", "play_start", 1_700_000_000 + i),
                mk("a", f"t{i}", "complete", 1_700_000_100 + i)]
    evs.append(parse_event({"user_id": "a", "type": "search", "query": "heat", "ts": 1_700_000_500},
                           now=dt.datetime(2030, 1, 1, tzinfo=UTC)))
    train, test = stratified_split_events(events_to_table(evs), seed=42)
    assert len(pairs(test)) == 2 and test.num_rows == 4  # both events of each held-out pair
    assert "search" in train.column("type").to_pylist()


def behaviour_world():
    """Users a and b: 24 completes in training, then 7 interactions from minute 8 on, so the
    80th percentile of the 31 interaction times is the first of those (minute 8)."""
    ids = [f"t{i}" for i in range(20)]
    titles = catalog_table(ids, ids, [["drama"]] * 20)
    titles = titles.set_column(titles.schema.get_field_index("runtime_min"), "runtime_min",
                               pa.array([100.0] * 20, pa.float32()))
    base = 1_700_000_000
    filler = [f"t{i}" for i in range(8, 16)]
    train = [("a", t) for t in ["t0", "t1", "t3", "t4"] + filler] + \
            [("b", t) for t in ["t0", "t2", "t3", "t4"] + filler]
    spec = [(u, t, "complete", i * 0.25, {}) for i, (u, t) in enumerate(train)] + [
        # test window (>= minute 8)
        ("a", "t5", "progress", 8, {"position_s": 5700.0, "watched_s": 5700.0, "device": "mobile"}),  # 95 %: positive
        ("a", "t6", "progress", 9, {"position_s": 3000.0, "watched_s": 3000.0, "device": "tv"}),  # 50 %: not
        ("a", "t7", "rating", 9.5, {"rating": 3.0}),  # below 4: not
        ("b", "t6", "thumbs_up", 10, {"device": "tv", "region": "JP"}),  # positive
        ("b", "t7", "rating", 10.5, {"rating": 4.0}),  # positive
        ("b", "t0", "complete", 11, {}),  # seen in training: never a target
        ("c", "t1", "complete", 12, {}),  # unknown in training: not a test user
    ]
    evs = [parse_event({"user_id": u, "title_id": t, "type": ty, "ts": base + 60 * m, **kw},
                       now=dt.datetime(2030, 1, 1, tzinfo=UTC)) for u, t, ty, m, kw in spec]
    return events_to_table(evs), Catalog(titles)


def test_temporal_cut_has_no_future_in_training():
    ev = random_ratings(3)
    train, test, cutoff = temporal_split_events(ev)
    cut = pa.scalar(cutoff, ev.schema.field("ts").type)
    assert pc.all(pc.less(train.column("ts"), cut)).as_py()
    assert pc.all(pc.greater_equal(test.column("ts"), cut)).as_py()
    assert train.num_rows == pytest.approx(0.8 * ev.num_rows, abs=0.02 * ev.num_rows)


def test_temporal_positives_and_test_users():
    events, catalog = behaviour_world()
    split = make_split(events, catalog, "temporal")
    m = split.train.matrix
    assert list(m.user_ids) == ["a", "b"]
    assert split.train.cutoff is not None
    assert pc.all(pc.less(split.train.events.column("ts"),
                          pa.scalar(split.train.cutoff, events.schema.field("ts").type))).as_py()
    ids = list(m.title_ids)
    rel = {m.user_ids[r]: {ids[c] for c in split.relevant[i].indices}
           for i, r in enumerate(split.test_rows)}
    assert rel == {"a": {"t5"}, "b": {"t6", "t7"}}
    assert "c" not in set(split.test_events.column("user_id").to_pylist())


def test_temporal_request_is_each_test_users_first_test_event():
    """The request a test user is scored for: the device and local hour of their first test event
    (the event's region's time zone, else the user's); msr-stratified has none."""
    from reelrec.domain.users import USER_SCHEMA
    events, catalog = behaviour_world()
    users = pa.Table.from_pylist([{"user_id": "a", "region": "US"}, {"user_id": "b", "region": "GB"}],
                                 schema=USER_SCHEMA)
    split = make_split(events, catalog, "temporal", users=users)
    m = split.train.matrix
    got = {m.user_ids[r]: (int(split.request.device[i]), float(split.request.hour[i]))
           for i, r in enumerate(split.test_rows)}
    base_h = 1_700_000_000 / 3600.0
    assert got["a"][0] == 1 and got["a"][1] == pytest.approx((base_h + 8 / 60 - 5) % 24)  # US, mobile
    assert got["b"][0] == 0 and got["b"][1] == pytest.approx((base_h + 10 / 60 + 9) % 24)  # the event's JP
    assert len(split.request) == len(split.test_rows)
    assert make_split(*random_world_with_catalog(), "msr-stratified", seed=42).request is None


def random_world_with_catalog():
    ev = random_ratings(4)
    return ev, Catalog(catalog_table([f"t{i}" for i in range(60)], [f"T{i}" for i in range(60)],
                                     [["drama"]] * 60))


def test_stratified_make_split_builds_disjoint_train_and_relevant():
    ev = random_ratings(4)
    cat = Catalog(catalog_table([f"t{i}" for i in range(60)], [f"T{i}" for i in range(60)],
                                [["drama"]] * 60))
    split = make_split(ev, cat, "msr-stratified", seed=42)
    seen = split.train.matrix.positives[split.test_rows]
    assert split.relevant.multiply(seen).nnz == 0
    _, test = stratified_split_events(ev, seed=42)
    assert split.relevant.nnz == test.num_rows  # every held-out rating is relevant


def test_unknown_protocol_names_the_field():
    ev = random_ratings(5)
    cat = Catalog(catalog_table(["t0"], ["T0"], [["drama"]]))
    with pytest.raises(InvalidInput) as info:
        make_split(ev, cat, "leave-one-out")
    assert info.value.errors[0].field == "protocol"


def test_holdout_rows_splits_each_row():
    rng = np.random.default_rng(0)
    x = sp.random(30, 40, density=0.3, format="csr", random_state=1, dtype=np.float32)
    x.data[:] = rng.integers(1, 5, x.nnz)
    fit, val = holdout_rows(x, 0.75, seed=3)
    assert (fit + val - x).count_nonzero() == 0
    assert fit.multiply(val).nnz == 0
    np.testing.assert_array_equal(np.diff(fit.indptr), np.rint(0.75 * np.diff(x.indptr)))


def session_world():
    """Users a, b, c: 32 completes in training (minutes 0-7.75), then 9 test interactions from
    minute 10 on, so the 80th percentile of the 41 interaction times is minute 10. a and b log
    session ids, c logs none (its sessions end at 30 minutes of inactivity)."""
    ids = [f"t{i}" for i in range(40)]
    titles = catalog_table(ids, ids, [["drama"]] * 40)
    titles = titles.set_column(titles.schema.get_field_index("runtime_min"), "runtime_min",
                               pa.array([100.0] * 40, pa.float32()))
    base = 1_700_000_000
    train = [("a", f"t{20 + i}") for i in range(11)] + [("b", f"t{20 + i}") for i in range(11)] + \
            [("c", f"t{20 + i}") for i in range(10)]
    spec = [(u, t, "complete", i * 0.25, {}) for i, (u, t) in enumerate(train)] + [
        # a's first test session a1 (phone): t5 watched to 95 % (positive), t6 to 50 % (not)
        ("a", "t5", "progress", 10, {"position_s": 5700.0, "watched_s": 5700.0, "device": "mobile",
                                     "session_id": "a1"}),
        ("a", None, "search", 10.5, {"query": "heat", "device": "mobile", "session_id": "a1"}),
        ("a", "t6", "progress", 11, {"position_s": 3000.0, "watched_s": 3000.0, "device": "mobile",
                                     "session_id": "a1"}),
        # a's later session a2 (TV): finishes t6 and likes t7; neither may reach the first session
        ("a", "t6", "complete", 200, {"device": "tv", "session_id": "a2"}),
        ("a", "t7", "thumbs_up", 201, {"device": "tv", "session_id": "a2"}),
        # b's first session has no positive (a rating of 3); its later one has a 5
        ("b", "t7", "rating", 12, {"rating": 3.0, "device": "tv", "session_id": "b1"}),
        ("b", "t8", "rating", 300, {"rating": 5.0, "device": "tv", "session_id": "b2"}),
        # c, no session ids: t9 and t10 17 minutes apart (one session), t11 70 minutes later
        ("c", "t9", "complete", 13, {"device": "web"}),
        ("c", "t10", "thumbs_up", 30, {"device": "web"}),
        ("c", "t11", "complete", 100, {"device": "tablet"}),
    ]
    evs = [parse_event({"user_id": u, "title_id": t, "type": ty, "ts": base + 60 * m, **kw},
                       now=dt.datetime(2030, 1, 1, tzinfo=UTC)) for u, t, ty, m, kw in spec]
    return events_to_table(evs), Catalog(titles)


def relevant_by_user(split) -> dict[str, set[str]]:
    m = split.train.matrix
    ids = list(m.title_ids)
    return {m.user_ids[r]: {ids[c] for c in split.relevant[i].indices}
            for i, r in enumerate(split.test_rows)}


def test_session_window_keeps_exactly_the_first_test_sessions_positives():
    events, catalog = session_world()
    whole = make_split(events, catalog, "temporal")
    split = make_split(events, catalog, "temporal", test_window="session")
    cut = dt.datetime.fromtimestamp(1_700_000_000 + 600, tz=UTC)
    assert whole.train.cutoff == split.train.cutoff == cut  # the same cut ...
    assert split.train.events.equals(whole.train.events)  # ... and the same training side
    assert relevant_by_user(whole) == {"a": {"t5", "t6", "t7"}, "b": {"t8"},
                                       "c": {"t9", "t10", "t11"}}
    # the first session only: a's later plays do not count, b's first session has no positive
    # (b is no test user), and c's session ends at the 70-minute gap
    assert relevant_by_user(split) == {"a": {"t5"}, "c": {"t9", "t10"}}
    assert split.test_window == "session" and whole.test_window == "all"
    # no later event is left on the test side: a's session a2, b's b2 and c's last play are gone
    ts = split.test_events.column("ts").to_pylist()
    assert set(split.test_events.column("session_id").drop_null().to_pylist()) == {"a1", "b1"}
    assert max(ts) == dt.datetime.fromtimestamp(1_700_000_000 + 30 * 60, tz=UTC)
    # the request is the first session's first event, as in the whole window
    dev = {split.train.matrix.user_ids[r]: int(split.request.device[i])
           for i, r in enumerate(split.test_rows)}
    assert dev == {"a": 1, "c": 3}  # mobile, web
    assert len(split.request) == len(split.test_rows)


def test_first_session_events_follow_the_session_id_else_the_gap():
    from reelrec.eval.splits import first_session_events
    events, _ = session_world()
    later = events.filter(pc.greater_equal(events.column("ts"), pa.scalar(
        dt.datetime.fromtimestamp(1_700_000_000 + 600, tz=UTC), events.schema.field("ts").type)))
    got = first_session_events(later)
    assert got.num_rows == 6  # a1 (3 events), b1 (1), c's first two
    # shuffling the lake's order changes nothing
    shuffled = later.take(np.random.default_rng(0).permutation(later.num_rows))
    assert sorted(first_session_events(shuffled).column("event_id").to_pylist()) == \
        sorted(got.column("event_id").to_pylist())
    # without session ids, a's search 30 s after its first event is in, a2 (3 h later) out
    bare = later.drop_columns(["session_id"])
    users = first_session_events(bare).column("user_id").to_pylist()
    assert users.count("a") == 3 and users.count("b") == 1 and users.count("c") == 2


def test_session_window_is_temporal_only():
    ev = random_ratings(5)
    cat = Catalog(catalog_table(["t0"], ["T0"], [["drama"]]))
    for protocol, window in (("msr-stratified", "session"), ("temporal", "week")):
        with pytest.raises(InvalidInput) as info:
            make_split(ev, cat, protocol, test_window=window)
        assert info.value.errors[0].field == "test_window"
