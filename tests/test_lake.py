import datetime as dt

import duckdb
import pyarrow as pa
import pytest

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
