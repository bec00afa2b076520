"""The behavioural lake: append-only Parquet partitioned by event date (``date=YYYY-MM-DD/``).

Contract (DESIGN.md): append atomically, scan a time range, compact, dedupe by ``event_id``.

* A file is written under a temporary name and renamed, so a reader never sees half a file.
* Appends dedupe within the batch; duplicates across files (a re-delivered event) are removed
  on every scan (first write wins) and physically by ``compact``. Counting from a scan therefore
  never counts a re-delivered event twice.
* Uniqueness is kept per date partition: a re-delivered event carries its original ``ts`` and so
  lands in the partition of its first copy. A partition holding a single file (written once, or
  compacted) is known to be duplicate-free, so scans skip the dedupe for its rows; that is what
  makes a compacted lake cheap to read. (An event id re-used with a timestamp on another day is
  a different event as far as the lake is concerned once both partitions are compacted.)
* Files are written with dictionary encoding only on low-cardinality columns: on event ids,
  user ids and timestamps it costs a third of the write time and makes files larger. Files
  under ``SMALL_FILE_ROWS`` rows are not compressed (see there).
* The location is a URL: ``file:///path`` (or a bare path) today; any filesystem that
  ``pyarrow.fs.FileSystem.from_uri`` opens (``s3://``, ``gs://``) for object storage later.

DuckDB reads the same files directly::

    SELECT type, count(*) FROM read_parquet('DIR/lake/date=*/part-*.parquet', hive_partitioning=true)
    GROUP BY type
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reelrec.domain.events import EVENT_SCHEMA
from reelrec.errors import InvalidInput, Unavailable
from reelrec.log import get_logger

log = get_logger(__name__)
UTC = dt.timezone.utc
# columns with few distinct values per file: dictionary encoding shrinks and speeds them up
DICTIONARY_COLUMNS = ["title_id", "type", "device", "region", "shelf_id", "slot_kind", "language",
                      "genres"]
WRITE_THREADS = 4
# below this many rows a file is written uncompressed: setting up a zstd context per column costs
# more than the file itself (history imports write one tiny file per day); compaction compresses
SMALL_FILE_ROWS = 2000


def first_positions(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Sorted positions of the first occurrence of each distinct key."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    firsts = (
        pa.table({"k": keys, "i": pa.array(np.arange(n, dtype=np.int64))})
        .group_by("k", use_threads=False)
        .aggregate([("i", "min")])
        .column("i_min")
        .to_numpy()
    )
    return np.sort(firsts)


def dedupe_first(table: pa.Table, key: str = "event_id") -> pa.Table:
    """Keep the first row of each ``key`` value, preserving order."""
    firsts = first_positions(table.column(key))
    if len(firsts) == table.num_rows:
        return table
    return table.take(firsts)


def _conform(table: pa.Table) -> pa.Table:
    """Reorder/cast to the lake schema, filling absent optional columns with nulls."""
    missing_required = [f.name for f in EVENT_SCHEMA if not f.nullable and f.name not in table.column_names]
    if missing_required:
        raise InvalidInput(f"missing required column(s) {', '.join(missing_required)}", field="table")
    extra = set(table.column_names) - set(EVENT_SCHEMA.names)
    if extra:
        raise InvalidInput(f"unknown column(s) {', '.join(sorted(extra))}", field="table")
    cols = []
    for f in EVENT_SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InvalidInput(f"cannot be read as {f.type}: {exc}", field=f.name) from None
            if not f.nullable and col.null_count:
                raise InvalidInput("has null values", field=f.name)
            cols.append(col)
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)


@dataclass
class CompactReport:
    partitions: int
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int


class ParquetLake:
    """Parquet files by event date under ``root`` on a pyarrow filesystem."""

    def __init__(self, fs: pafs.FileSystem, root: str, url: str):
        self.fs, self.root, self.url = fs, root.rstrip("/"), url
        self.fs.create_dir(self.root, recursive=True)

    # --- layout --------------------------------------------------------------------------
    def _partition_dir(self, day: dt.date) -> str:
        return f"{self.root}/date={day.isoformat()}"

    def files(self, partition: str | None = None) -> list[str]:
        """Data files (sorted by write order), optionally of one ``date=`` partition."""
        base = f"{self.root}/{partition}" if partition else self.root
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise Unavailable(f"lake at {self.url} cannot be listed: {exc}") from exc
        names = [i.path for i in infos if i.type == pafs.FileType.File
                 and i.base_name.startswith("part-") and i.base_name.endswith(".parquet")]
        return sorted(names, key=lambda p: p.rsplit("/", 1)[-1])

    def partitions(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith("date="))

    @property
    def glob(self) -> str:
        """A glob DuckDB (``read_parquet(..., hive_partitioning=true)``) can read."""
        return f"{self.root}/date=*/part-*.parquet"

    # --- write ---------------------------------------------------------------------------
    def _write_file(self, table: pa.Table, day: dt.date, sync: bool = False) -> str:
        d = self._partition_dir(day)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = f"{d}/.tmp-{name}"
        try:
            self.fs.create_dir(d, recursive=True)
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(table, out, use_dictionary=DICTIONARY_COLUMNS,
                               compression="none" if table.num_rows < SMALL_FILE_ROWS else "zstd")
            if sync:
                _fsync_local(self.fs, tmp)
            self.fs.move(tmp, f"{d}/{name}")
            if sync:
                _fsync_local(self.fs, d)
        except OSError as exc:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise Unavailable(f"lake write to {d} failed: {exc}") from exc
        return f"{d}/{name}"

    def append(self, table: pa.Table, sync: bool = False) -> int:
        """Append events (lake schema); one file per event date. Returns rows written.

        With ``sync`` each file (and its directory entry) is flushed to stable storage before
        this returns, so a caller may acknowledge the events (a 202, a bus commit) and survive a
        power loss, not only a killed process.

        Raises:
            InvalidInput: the table lacks a required column or has an unknown one.
            Unavailable: the storage refused the write (nothing partial is left visible).
        """
        table = dedupe_first(_conform(table))
        if table.num_rows == 0:
            return 0
        days = pc.cast(table.column("ts"), pa.date32()).cast(pa.int32()).to_numpy()
        if days.min() == days.max():
            self._write_file(table, dt.date(1970, 1, 1) + dt.timedelta(days=int(days[0])), sync)
            return table.num_rows
        # one slice per day after a stable sort: O(n log n) for any number of days
        order = np.argsort(days, kind="stable")
        table, days = table.take(order), days[order]
        cuts = np.r_[0, np.flatnonzero(np.diff(days)) + 1, len(days)]
        parts = [(table.slice(a, b - a), dt.date(1970, 1, 1) + dt.timedelta(days=int(days[a])), sync)
                 for a, b in zip(cuts[:-1], cuts[1:])]
        # the Parquet writer releases the GIL; history imports write thousands of small files
        with ThreadPoolExecutor(min(WRITE_THREADS, len(parts))) as pool:
            list(pool.map(lambda p: self._write_file(*p), parts))
        return table.num_rows

    # --- read ----------------------------------------------------------------------------
    def _selected_partitions(self, start: dt.datetime | None,
                             end: dt.datetime | None) -> list[tuple[str, list[str]]]:
        """(partition, files in write order) for the partitions a [start, end) range touches."""
        lo = start.astimezone(UTC).date() if start else dt.date.min
        hi = end.astimezone(UTC).date() if end else dt.date.max
        by_part: dict[str, list[str]] = {}
        for f in self.files():
            part = f.rsplit("/", 2)[-2]
            if lo <= dt.date.fromisoformat(part[5:15]) <= hi:
                by_part.setdefault(part, []).append(f)
        return sorted(by_part.items())

    def scan(self, start: dt.datetime | None = None, end: dt.datetime | None = None,
             columns: list[str] | None = None, types: list[str] | None = None,
             dedupe: bool = True) -> pa.Table:
        """Events with ``start <= ts < end`` (UTC), deduplicated on ``event_id``.

        Rows come in date order, and in write order within a date.
        """
        parts = self._selected_partitions(start, end)
        files = [f for _, fs in parts for f in fs]
        multi = {f for _, fs in parts if len(fs) > 1 for f in fs} if dedupe else set()
        want = list(columns) if columns else list(EVENT_SCHEMA.names)
        read_cols = list(dict.fromkeys(want + (["event_id"] if multi else [])))
        if not files:
            return EVENT_SCHEMA.empty_table().select(want)
        dataset = ds.dataset(files, schema=EVENT_SCHEMA, format="parquet", filesystem=self.fs)
        flt = None
        if start is not None:
            flt = ds.field("ts") >= pa.scalar(start.astimezone(UTC), EVENT_SCHEMA.field("ts").type)
        if end is not None:
            e = ds.field("ts") < pa.scalar(end.astimezone(UTC), EVENT_SCHEMA.field("ts").type)
            flt = e if flt is None else flt & e
        if types:
            t = ds.field("type").isin(types)
            flt = t if flt is None else flt & t
        scanner = dataset.scanner(columns=read_cols, filter=flt)
        if not multi:
            return scanner.to_table().select(want)
        part_of = {f: i for i, (_, fs) in enumerate(parts) for f in fs}
        batches, labels = [], []
        for tagged in scanner.scan_batches():
            batches.append(tagged.record_batch)
            labels.append(part_of[tagged.fragment.path])
        table = pa.Table.from_batches(batches, schema=scanner.projected_schema)
        # batches come in file order, so each partition's rows are one contiguous range; only
        # partitions with several files can hold duplicates (see the module docstring), and
        # deduplicating one date at a time keeps the hash table small (10 M random ids: 8.8 s of
        # CPU at once, 2.3 s as seven dates)
        bounds = np.r_[0, np.cumsum([b.num_rows for b in batches])]
        labels = np.asarray(labels)
        keys = table.column("event_id")
        keep = np.ones(table.num_rows, dtype=bool)
        if len(labels) > 1 and (np.diff(labels) < 0).any():
            raise RuntimeError("parquet scan returned batches out of file order")
        lo, hi = np.searchsorted(labels, np.arange(len(parts)), "left"), \
            np.searchsorted(labels, np.arange(len(parts)), "right")
        for i, (_, fs) in enumerate(parts):
            if len(fs) < 2 or lo[i] == hi[i]:
                continue
            a, b = int(bounds[lo[i]]), int(bounds[hi[i]])
            firsts = first_positions(keys.slice(a, b - a).combine_chunks())
            if len(firsts) < b - a:
                keep[a:b] = False
                keep[a + firsts] = True
        if not keep.all():
            table = table.filter(pa.array(keep))
        return table.select(want)

    def count(self) -> int:
        return self.scan(columns=["event_id"]).num_rows

    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        ts = self.scan(columns=["ts"], dedupe=False).column("ts")
        if len(ts) == 0:
            return None
        mm = pc.min_max(ts)
        return mm["min"].as_py(), mm["max"].as_py()

    # --- maintenance ---------------------------------------------------------------------
    def compact(self, min_files: int = 2) -> CompactReport:
        """Merge each partition's files into one, dropping duplicate event_ids.

        The merged file is written (atomically) before the old ones are deleted; a crash in
        between leaves duplicates that every scan already removes.
        """
        rep = CompactReport(0, 0, 0, 0, 0)
        for part in self.partitions():
            files = self.files(part)
            rep.files_before += len(files)
            if len(files) < min_files:
                rep.files_after += len(files)
                n = sum(pq.ParquetFile(f, filesystem=self.fs).metadata.num_rows for f in files)
                rep.rows_before += n
                rep.rows_after += n
                continue
            table = ds.dataset(files, schema=EVENT_SCHEMA, format="parquet",
                               filesystem=self.fs).to_table()
            rep.rows_before += table.num_rows
            table = dedupe_first(table)
            rep.rows_after += table.num_rows
            self._write_file(table, dt.date.fromisoformat(part.split("=", 1)[1]))
            for f in files:
                self.fs.delete_file(f)
            rep.partitions += 1
            rep.files_after += 1
            log.info("partition compacted", partition=part, files=len(files), rows=table.num_rows)
        return rep

    def stats(self) -> dict:
        """Counts by type and by date (deduplicated), and file count."""
        t = self.scan(columns=["type", "ts"])
        by_type = t.group_by("type").aggregate([("type", "count")]).to_pylist()
        days = pc.cast(t.column("ts"), pa.date32())
        by_date = pa.table({"d": days}).group_by("d").aggregate([("d", "count")]).to_pylist()
        return {
            "events": t.num_rows,
            "files": len(self.files()),
            "by_type": dict(sorted((r["type"], r["type_count"]) for r in by_type)),
            "by_date": dict(sorted((r["d"].isoformat(), r["d_count"]) for r in by_date)),
        }


def _fsync_local(fs: pafs.FileSystem, path: str) -> None:
    """fsync a file or directory on a local filesystem; object stores are durable once a write
    completes, so there is nothing to do for them."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_lake(url: str | Path) -> ParquetLake:
    """Open a lake from a URL: ``file:///abs/path``, a bare path, or a pyarrow filesystem URI.

    Raises:
        InvalidInput: the URL cannot be opened by any filesystem.
    """
    url = str(url)
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else url).resolve()
        return ParquetLake(pafs.LocalFileSystem(), path.as_posix(), path.as_uri())
    try:
        fs, root = pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InvalidInput(f"cannot open lake {url!r}: {exc}", field="lake_url") from None
    return ParquetLake(fs, root, url)
