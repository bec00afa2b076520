"""The aggregator on the in-process bus: micro-batches, validation again on the way out,
dead letters, redelivery after a rebalance, a real full disk; and the vectorised validation
never accepting what parse_event rejects (hypothesis)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reelrec.domain.catalog import Catalog, Title
from reelrec.domain.events import events_to_table, parse_event
from reelrec.errors import InvalidInput, Unavailable
from reelrec.storage.bus import Message, open_bus
from reelrec.storage.lake import open_lake
from reelrec.workers.aggregate import Aggregator, CatalogWatch
from reelrec.workers.revalidate import _lake_rows, _read_wire, check_messages, fast_mask

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 1, 12, tzinfo=UTC)
CATALOG = Catalog.from_titles([
    Title("m1", "Heat", "movie", ["crime", "thriller"], runtime_min=120),
    Title("s1", "Narcos", "series", ["crime", "drama"], episodes=3, episode_runtime_min=50),
    Title("d1", "Planet", "documentary", ["nature"]),  # no runtime: position not checked
])


def play(i: int, user: str | None = None, title: str = "m1", **kw) -> dict:
    e = {"event_id": f"e{i}", "user_id": user or f"u{i % 7}", "type": "progress", "title_id": title,
         "ts": f"2026-11-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z", "position_s": 60.0,
         "watched_s": 30.0, "device": "tv"}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def msgs(records, topic="t") -> list[Message]:
    return [Message(topic, 0, i, "k", r if isinstance(r, bytes) else json.dumps(r).encode())
            for i, r in enumerate(records)]


# --- validation on the way out -------------------------------------------------------------------
def test_mixed_batch_keeps_valid_rows_in_order_and_rejects_with_reasons():
    records = [play(0), play(1, title="gone"), b"{not json", play(3, ts=1793527200),  # epoch: slow
               {**play(4), "event_id": None}, play(5, position_s=99_999.0), play(6)]
    checked = check_messages(msgs(records), titles=CATALOG, now=NOW)
    ids = checked.table.column("event_id").to_pylist()
    assert ids == ["e0", "e3", "t-0-4", "e6"]  # message order; a missing id comes from the log
    reasons = {m.offset: r for m, r in checked.rejected}
    assert set(reasons) == {1, 2, 5}
    assert "title_id: unknown title 'gone'" in reasons[1]
    assert reasons[2].startswith("value: not JSON")
    assert "position_s" in reasons[5] and "past the runtime" in reasons[5]
    assert checked.fast == 0  # one non-JSON value sends the whole batch the exact way


def test_clean_batch_takes_the_fast_path_and_equals_parse_event_rows():
    records = [parse_event(play(i, session_id=f"s{i}", region="IN"), now=NOW).to_json()
               for i in range(50)]
    records.append(parse_event({"event_id": "o", "user_id": "u1", "type": "onboarding",
                                "ts": "2026-11-01T09:00:00.123456Z",
                                "genres": ["crime", "sci-fi"]}, now=NOW).to_json())
    records.append(parse_event({"event_id": "p", "user_id": "u1", "type": "profile",
                                "ts": "2026-11-01T09:00:00Z", "region": "GB", "language": "en"},
                               now=NOW).to_json())
    checked = check_messages(msgs(records), titles=CATALOG, now=NOW)
    assert checked.fast == len(records) and not checked.rejected
    expected = events_to_table([parse_event(r, titles=CATALOG, now=NOW) for r in records])
    assert checked.table.equals(expected)


BASES = [
    play(1, session_id="s1", region="IN", language="en"),
    play(2, title="s1", position_s=2900.0),
    {"event_id": "i", "user_id": "u", "type": "impression", "title_id": "d1", "shelf_id": "top10",
     "position": 3, "slot_kind": "explore", "ts": "2026-11-01T10:00:00.250000Z"},
    {"event_id": "r", "user_id": "u", "type": "rating", "title_id": "m1", "rating": 4.5,
     "ts": "2026-11-01T10:00:00Z"},
    {"event_id": "q", "user_id": "u", "type": "search", "query": "heist films",
     "ts": "2026-11-01T11:00:00Z"},
    {"event_id": "o", "user_id": "u", "type": "onboarding", "genres": ["crime", "sci-fi"],
     "ts": "2026-11-01T11:00:00Z", "device": "mobile"},
    {"event_id": "p", "user_id": "u", "type": "profile", "region": "GB", "language": "en",
     "ts": "2026-11-01T11:00:00Z"},
]
# Values of the right JSON type (so the batch still parses as Arrow) that probe each rule.
PROBES = {
    "event_id": ["e9", "", "x" * 201, "\u00e9" * 200],
    "user_id": ["u9", "", "x" * 201],
    "type": ["progress", "impression", "search", "onboarding", "profile", "rating", "complete",
             "nope"],
    "title_id": ["m1", "s1", "d1", "gone", ""],
    "ts": ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00.5Z", "2026-11-01 10:00:00",
           "2026-11-01T10:00:00+02:00", "2026-11-01T12:04:59.999Z", "2026-11-01T12:05:00Z",
           "2026-11-01T12:05:00.001Z", "2026-11-01T12:06:00Z", "1969-12-31T23:59:59Z",
           "2026-02-30T00:00:00Z", "later", "1793527200"],
    "device": ["tv", "TV", "fridge", ""],
    "region": ["IN", "in", "US-CA", "TOOLONGREGION", "", "\u00ceN"],
    "position_s": [0.0, 60.0, 3000.0, 7200.0, 7200.0001, -1.0, 1e12, 5, float("nan")],
    "watched_s": [30.0, -0.5, 0],
    "rating": [0.0, 10.0, 10.5, 4, -0.0],
    "query": ["crime", "   ", "\u2003", "\u00e9", "x" * 501, "", " crime "],
    "genres": [["crime"], ["Crime"], [" crime"], [], ["a"] * 11, ["sci-fi", "drama"], [""],
               ["ok", None]],
    "shelf_id": ["top10", ""],
    "position": [0, 3, -1, 2**31, 2**31 - 1],
    "slot_kind": ["explore", "bogus", ""],
    "language": ["en", "", "x" * 17],
}


@st.composite
def records(draw):
    rec = dict(draw(st.sampled_from(BASES)))
    for name in draw(st.lists(st.sampled_from(sorted(PROBES)), max_size=3)):
        if draw(st.integers(0, 4)) == 0:
            rec.pop(name, None)
        else:
            rec[name] = draw(st.sampled_from(PROBES[name]))
    return rec


def exact(rec: dict, offset: int):
    """What parse_event makes of a record, with the aggregator's id for one without."""
    if rec.get("event_id") in (None, ""):
        rec = {**rec, "event_id": f"t-0-{offset}"}
    try:
        return parse_event(rec, titles=CATALOG, now=NOW, future_tolerance_s=300)
    except InvalidInput:
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records(), min_size=1, max_size=8))
def test_fast_pass_never_accepts_what_parse_event_rejects(batch):
    wire = _read_wire(msgs(batch))
    assert wire is not None  # every probe keeps the batch readable as Arrow
    try:
        ok, ts_us = fast_mask(wire, titles=CATALOG, now=NOW, future_tolerance_s=300)
    except pa.ArrowInvalid:
        ok = None  # an impossible date: the whole batch goes the exact way
    for i in ([] if ok is None else ok.nonzero()[0]):
        event = exact(batch[i], i)
        assert event is not None, f"fast pass accepted {batch[i]!r}, which parse_event rejects"
        assert _lake_rows(wire, pa.array([i]).to_numpy(), ts_us).equals(events_to_table([event]))
    # and the whole check keeps exactly the events parse_event keeps, in order
    want = [e for e in (exact(r, i) for i, r in enumerate(batch)) if e is not None]
    checked = check_messages(msgs(batch), titles=CATALOG, now=NOW)
    assert checked.table.equals(events_to_table(want) if want else
                                checked.table.schema.empty_table())
    assert len(checked.rejected) == len(batch) - len(want)


# --- the worker on the in-process bus -------------------------------------------------------------
@pytest.fixture
def bus():
    return open_bus(f"memory://?topic=ev-{uuid.uuid4().hex[:8]}&partitions=3")


def save_catalog(data: Path, catalog: Catalog = CATALOG) -> CatalogWatch:
    catalog.save(data)
    return CatalogWatch(data)


def test_batches_by_count_then_by_time(bus, tmp_path):
    lake = open_lake(tmp_path / "lake")
    agg = Aggregator(bus, lake, catalog=save_catalog(tmp_path), max_batch=100, max_wait_s=0.2)
    bus.publish([play(i) for i in range(250)])
    assert [agg.step() for _ in range(3)] == [100, 100, 50]
    assert len(lake.files()) == 3 and lake.count() == 250
    assert agg.step() == 0  # an idle poll
    bus.publish([play(1000)])
    assert agg.step() == 1  # by time: one message, max_wait_s later
    agg.close()
    with bus.consumer(agg.group) as again:  # everything was committed
        assert again.poll(timeout=0.1) == []


def test_title_withdrawn_after_acceptance_goes_to_dead_letter_with_reason(bus, tmp_path):
    watch = save_catalog(tmp_path)
    lake = open_lake(tmp_path / "lake")
    bus.publish([play(1, title="m1"), play(2, title="s1")])  # accepted while both existed
    Catalog(CATALOG.table.filter(pa.array([t != "s1" for t in CATALOG.ids]))).save(tmp_path)
    os.utime(tmp_path / "catalog" / "titles.parquet", ns=(1, 1))  # a new stamp, whatever the clock
    agg = Aggregator(bus, lake, catalog=watch, max_batch=10, max_wait_s=0.1)
    assert agg.step() == 2
    assert lake.scan().column("event_id").to_pylist() == ["e1"]
    with bus.consumer("dl-reader", topic=bus.dead_letter_topic) as c:
        [dead] = c.poll(timeout=1)
    assert dead.json()["event_id"] == "e2"
    assert "unknown title 's1'" in dead.headers["reason"]
    assert dead.headers["source_topic"] == bus.topic
    agg.close()


def test_redelivery_after_a_rebalance_is_not_counted_twice(bus, tmp_path):
    lake = open_lake(tmp_path / "lake")
    bus.publish([play(i, user=f"user{i}") for i in range(60)])  # on every partition
    first = Aggregator(bus, lake, max_batch=1000, max_wait_s=0.05)
    batch = first.collect()
    assert len(batch) == 60
    second = Aggregator(bus, lake, max_batch=1000, max_wait_s=0.05)
    assert second.consumer.assignment()  # joining takes partitions away from the first
    # the first writes its file, but its commit is refused: those messages go to the second
    assert first.write(batch) is False and first.stats.conflicts == 1
    first.close()
    while second.step():
        pass
    raw = lake.scan(dedupe=False).num_rows
    assert raw > 60  # the redelivered events were written again...
    assert lake.count() == 60  # ...and counted once
    second.close()


# --- a real full disk --------------------------------------------------------------------------
@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "512k"):
    """A real, small tmpfs at ``path`` (needs root or CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); "
                    "the full-disk test needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write zeros until the filesystem says it is full."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC: the disk is really full
    finally:
        os.close(fd)
    return filler


def test_full_disk_is_a_clear_error_and_commits_nothing(bus, tmp_path):
    with tiny_filesystem(tmp_path / "disk") as disk:
        lake = open_lake(disk / "lake")
        filler = fill(disk)
        bus.publish([play(i) for i in range(300)])
        agg = Aggregator(bus, lake, max_batch=1000, max_wait_s=0.05)
        batch = agg.collect()
        with pytest.raises(Unavailable, match="No space left on device") as err:
            agg.write(batch)
        assert "lake write to" in str(err.value)
        assert lake.files() == [] and agg.stats.write_failures == 1
        agg.close()
        # nothing was committed: the group gets every event again, and once there is room
        # they all land
        filler.unlink()
        again = Aggregator(bus, lake, max_batch=1000, max_wait_s=0.05)
        assert again.step() == 300
        assert lake.count() == 300
        again.close()


def test_full_disk_worker_retries_until_there_is_room(bus, tmp_path):
    with tiny_filesystem(tmp_path / "disk") as disk:
        lake = open_lake(disk / "lake")
        filler = fill(disk)
        bus.publish([play(i) for i in range(100)])
        agg = Aggregator(bus, lake, max_batch=1000, max_wait_s=0.05, retry_max_s=0.2)
        stop = threading.Event()
        worker = threading.Thread(target=agg.run, args=(stop,), kwargs={"max_idle_s": 30})
        worker.start()
        deadline = dt.datetime.now() + dt.timedelta(seconds=10)
        while agg.stats.write_failures < 2 and dt.datetime.now() < deadline:
            threading.Event().wait(0.05)
        assert agg.stats.write_failures >= 2 and agg.stats.batches == 0
        filler.unlink()
        while agg.stats.batches == 0 and dt.datetime.now() < deadline:
            threading.Event().wait(0.05)
        stop.set()
        worker.join(10)
        assert lake.count() == 100 and agg.stats.messages == 100
