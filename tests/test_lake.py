import datetime as dt

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelrec.domain.events import EVENT_SCHEMA
from reelrec.errors import InvalidInput
from reelrec.storage.lake import dedupe_first, open_lake

UTC = dt.timezone.utc


def batch(ids, day=1, hour=12):
    n = len(ids)
    return pa.table({
        "event_id": [str(i) for i in ids],
        "user_id": [f"u{i % 3}" for i in ids],
        "title_id": ["t1"] * n,
        "type": ["play_start"] * n,
        "ts": [dt.datetime(2026, 10, day, hour, tzinfo=UTC)] * n,
    })


def test_append_partitions_by_date_and_scans_a_range(tmp_path):
    lake = open_lake(tmp_path / "lake")
    lake.append(pa.concat_tables([batch(range(10), day=1), batch(range(10, 15), day=2)]))
    assert lake.partitions() == ["date=2026-10-01", "date=2026-10-02"]
    assert lake.count() == 15
    day2 = lake.scan(start=dt.datetime(2026, 10, 2, tzinfo=UTC))
    assert sorted(day2.column("event_id").to_pylist()) == [str(i) for i in range(10, 15)]
    none = lake.scan(end=dt.datetime(2026, 10, 1, 12, tzinfo=UTC))
    assert none.num_rows == 0
    assert lake.scan(types=["complete"]).num_rows == 0
    assert lake.scan().schema == EVENT_SCHEMA


def test_redelivered_events_are_not_counted_twice(tmp_path):
    lake = open_lake((tmp_path / "lake").as_uri())
    lake.append(batch([1, 2, 3]))
    lake.append(batch([3, 4, 4]))  # 3 re-delivered, 4 twice in one batch
    assert lake.count() == 4
    assert lake.stats()["by_type"] == {"play_start": 4}


def test_compact_merges_files_and_drops_duplicates(tmp_path):
    lake = open_lake(tmp_path)
    for k in range(5):
        lake.append(batch([k, k + 1]))
    assert len(lake.files()) == 5
    rep = lake.compact()
    assert (rep.files_before, rep.files_after) == (5, 1)
    assert (rep.rows_before, rep.rows_after) == (10, 6)
    assert lake.count() == 6
    assert len(lake.files()) == 1


def test_no_temporary_file_is_visible(tmp_path):
    lake = open_lake(tmp_path)
    (tmp_path / "date=2026-10-01").mkdir()
    (tmp_path / "date=2026-10-01" / ".tmp-part-x.parquet").write_bytes(b"half a file")
    lake.append(batch([1]))
    assert lake.count() == 1


def test_duckdb_reads_the_lake_with_a_glob(tmp_path):
    lake = open_lake(tmp_path)
    lake.append(batch(range(7)))
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{lake.glob}', hive_partitioning=true)").fetchall()[0][0]
    assert n == 7


def test_bad_tables_are_refused_with_the_column_named(tmp_path):
    lake = open_lake(tmp_path)
    with pytest.raises(InvalidInput, match="user_id"):
        lake.append(batch([1]).drop_columns(["user_id"]))
    with pytest.raises(InvalidInput, match="colour"):
        lake.append(batch([1]).append_column("colour", pa.array(["red"])))
    assert lake.count() == 0


def test_dedupe_keeps_first_in_order():
    t = pa.table({"event_id": ["a", "b", "a", "c", "b"], "v": [1, 2, 3, 4, 5]})
    assert dedupe_first(t).column("v").to_pylist() == [1, 2, 4]


def test_append_spanning_many_days_writes_one_file_per_day(tmp_path):
    lake = open_lake(tmp_path)
    ids = list(range(300))
    days = [1 + (i * 7) % 30 for i in ids]  # interleaved, not sorted
    t = pa.table({
        "event_id": [str(i) for i in ids],
        "user_id": ["u"] * 300,
        "title_id": ["t"] * 300,
        "type": ["complete"] * 300,
        "ts": [dt.datetime(2026, 9, d, 12, i % 60, tzinfo=UTC) for i, d in zip(ids, days)],
    })
    assert lake.append(t) == 300
    assert len(lake.partitions()) == 30
    assert len(lake.files()) == 30
    for d in (1, 17, 30):
        start = dt.datetime(2026, 9, d, tzinfo=UTC)
        got = lake.scan(start=start, end=start + dt.timedelta(days=1), columns=["event_id"])
        assert sorted(got.column("event_id").to_pylist(), key=int) == \
            [str(i) for i, day in zip(ids, days) if day == d]
    ts = lake.scan(columns=["ts"]).column("ts").to_pylist()
    assert [x.date() for x in ts] == sorted(x.date() for x in ts)  # date order


def test_redelivery_after_compaction_is_still_deduplicated(tmp_path):
    lake = open_lake(tmp_path)
    lake.append(batch([1, 2, 3]))
    lake.append(batch([3, 4]))
    lake.compact()
    assert len(lake.files()) == 1 and lake.count() == 4
    lake.append(batch([4, 5]))  # 4 re-delivered into the compacted partition
    assert lake.count() == 5
    assert sorted(lake.scan(columns=["event_id"]).column("event_id").to_pylist()) == list("12345")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(0, 40), max_size=15), min_size=1, max_size=6),
       st.integers(0, 5))
def test_scan_counts_each_event_once_whatever_the_batches(tmp_path_factory, batches, compact_after):
    # an event id always carries the same timestamp, as a re-delivered event does
    lake = open_lake(tmp_path_factory.mktemp("lake"))
    seen = set()
    for k, ids in enumerate(batches):
        n = len(ids)
        lake.append(pa.table({
            "event_id": [str(i) for i in ids],
            "user_id": ["u"] * n,
            "title_id": ["t"] * n,
            "type": ["complete"] * n,
            "ts": [dt.datetime(2026, 10, 1 + i % 3, i % 24, tzinfo=UTC) for i in ids],
        }, schema=pa.schema([EVENT_SCHEMA.field(c) for c in ("event_id", "user_id", "title_id", "type", "ts")])))
        seen.update(ids)
        if k == compact_after:
            lake.compact()
    got = lake.scan(columns=["event_id", "ts"])
    assert sorted(got.column("event_id").to_pylist(), key=int) == [str(i) for i in sorted(seen)]
    assert lake.stats()["events"] == len(seen)


def test_duckdb_glob_skips_a_file_being_written(tmp_path):
    lake = open_lake(tmp_path)
    lake.append(batch(range(3)))
    (tmp_path / "date=2026-10-01" / ".tmp-part-9.parquet").write_bytes(b"half a file")
    rows = duckdb.sql(f"SELECT count(*), min(date) FROM read_parquet('{lake.glob}', "
                      "hive_partitioning=true)").fetchall()
    assert rows == [(3, dt.date(2026, 10, 1))]
