"""Shared pieces of the importers: reading delimited files with line-numbered errors, typed
column conversion, list columns built from (row, value) pairs, and merging into the catalog and
user table of a data directory.

Every error names ``<file>:<column>`` (or ``<file>`` for a row that does not parse) and the
1-based line number in the file, so a person can open the file at the bad line.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from reelrec.domain.catalog import TITLE_SCHEMA
from reelrec.domain.users import USER_SCHEMA
from reelrec.errors import FieldError, InvalidInput

TS_MS = pa.timestamp("ms", tz="UTC")
_NUMERIC = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"
_ZONED = r"[Tt ]\d\d:\d\d(:\d\d(\.\d*)?)?\s*(Z|z|[+-]\d\d(:?\d\d)?)$"


class Delimited:
    """A delimited text file read entirely as strings, with the line number of each row.

    Rows are kept as strings and converted column by column (``ints``, ``floats``...), so a
    conversion error can be traced back to its line by bisection instead of a Python loop.
    """

    def __init__(self, path: Path, table: pa.Table, first_line: int):
        self.path, self.table, self.first_line = path, table, first_line

    @property
    def name(self) -> str:
        return self.path.name

    def line_of(self, index: int) -> int:
        return self.first_line + int(index)

    def error(self, column: str | None, reason: str, index: int | None) -> InvalidInput:
        field = f"{self.name}:{column}" if column else self.name
        return InvalidInput(FieldError(field, reason, line=None if index is None else self.line_of(index)))

    def required(self, column: str) -> pa.ChunkedArray:
        """The column as strings; an empty (null) cell is an error with its line."""
        col = self.table.column(column)
        if col.null_count:
            raise self.error(column, "is empty", _first_true(pc.is_null(col)))
        return col

    def convert(self, column: str, to: pa.DataType, *, nullable: bool = False,
                what: str | None = None) -> pa.ChunkedArray:
        """Cast a string column to ``to``; the first cell that does not convert is reported."""
        col = self.table.column(column)
        if not nullable and col.null_count:
            raise self.error(column, "is empty", _first_true(pc.is_null(col)))
        col = pc.utf8_trim_whitespace(col)
        return cast_or_locate(col, to, lambda i, v: self.error(
            column, f"{v!r} is not {what or _describe(to)}", i))


def _describe(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "an integer"
    if pa.types.is_floating(t):
        return "a number"
    return f"a {t}"


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def cast_or_locate(col: pa.ChunkedArray | pa.Array, to: pa.DataType,
                   on_error: Callable[[int, object], InvalidInput]) -> pa.ChunkedArray:
    """``col.cast(to)``; when it fails, the first failing cell is reported through ``on_error``."""
    return convert_or_locate(col, lambda a: a.cast(to), on_error)


def convert_or_locate(col: pa.ChunkedArray | pa.Array, fn: Callable[[pa.Array], pa.Array],
                      on_error: Callable[[int, object], InvalidInput]) -> pa.ChunkedArray:
    """``fn(col)``; when it fails, bisect to the first failing cell and raise ``on_error``.

    Bisection costs about two conversions of the column, so locating an error stays vectorised.
    """
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    try:
        out = fn(col)
        return out if isinstance(out, pa.ChunkedArray) else pa.chunked_array([out])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    arr = col.combine_chunks()
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            fn(arr.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    raise on_error(lo, arr[lo].as_py())


def read_delimited(path: Path, *, delimiter: str, column_names: Sequence[str] | None = None,
                   encoding: str = "utf8", quoting: bool = True,
                   include: Sequence[str] | None = None) -> Delimited:
    """Read a CSV/TSV-like file as strings.

    ``column_names`` given: the file has no header. ``include`` limits the columns read; a name
    that is not in the header is an error listing the columns that exist. Blank lines are kept
    (as empty rows) so that row ``i`` is always line ``first_line + i``.

    Raises:
        InvalidInput: the file cannot be decoded, a row has the wrong number of fields, or a
            requested column does not exist.
    """
    path = Path(path)
    header = column_names is None
    ropts = pacsv.ReadOptions(use_threads=False, encoding=encoding,
                              column_names=list(column_names) if column_names else None,
                              block_size=1 << 22)
    bad: list = []

    def on_invalid(row) -> str:
        if not bad:
            bad.append(row)
        return "skip"

    popts = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                               ignore_empty_lines=False, invalid_row_handler=on_invalid)
    if header:
        names = _header(path, encoding=encoding, delimiter=delimiter, quoting=quoting)
        if include:
            missing = [c for c in include if c not in names]
            if missing:
                raise InvalidInput(FieldError(
                    f"{path.name}:{missing[0]}",
                    f"no such column; the file has {', '.join(map(repr, names))}", line=1))
    else:
        names = list(column_names)
    wanted = list(include) if include else names
    copts = pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                 include_columns=wanted, strings_can_be_null=True,
                                 # only an empty cell is missing: "NA" or "null" can be an id
                                 null_values=[""], quoted_strings_can_be_null=False)
    try:
        table = pacsv.read_csv(path, read_options=ropts, parse_options=popts, convert_options=copts)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InvalidInput(FieldError(path.name, f"cannot be read: {exc}")) from None
    if bad:
        row = bad[0]
        raise InvalidInput(FieldError(path.name, f"expected {row.expected_columns} fields, got "
                                                 f"{row.actual_columns}: {row.text[:60]!r}",
                                      line=row.number))
    return Delimited(path, table, 2 if header else 1)


def _header(path: Path, *, encoding: str, delimiter: str, quoting: bool) -> list[str]:
    """The names on the first line, read with the csv module.

    Not with ``pyarrow.csv.open_csv``: its read-ahead keeps running after ``close()``, and a
    process that exits right after it (a CLI reporting a missing column) aborts with
    "terminate called without an active exception".
    """
    try:
        with open(path, encoding=encoding, newline="") as f:
            lines = iter(f)
            # a UTF-8 byte order mark is not part of the first name (Arrow skips it too)
            first = next(lines, "").removeprefix("\ufeff")
            row = next(csv.reader(itertools.chain([first], lines), delimiter=delimiter,
                                  quotechar='"' if quoting else None,
                                  quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE), None)
    except (UnicodeDecodeError, LookupError, csv.Error) as exc:
        raise InvalidInput(FieldError(path.name, f"cannot be read: {exc}")) from None
    if not row:
        raise InvalidInput(FieldError(path.name, "cannot be read: the first line holds no column names",
                                      line=1))
    return row


def parse_times(col: pa.ChunkedArray | pa.Array,
                on_error: Callable[[int, object], InvalidInput]) -> pa.ChunkedArray:
    """Epoch seconds or ISO 8601 (a time without a zone is UTC) -> ``timestamp[ms, UTC]``.

    Accepts a string column mixing both forms, a numeric column (epoch seconds), or a
    timestamp / date column (naive means UTC).
    """
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    t = col.type
    if pa.types.is_timestamp(t):
        return col.cast(pa.timestamp("ms", tz=t.tz)).cast(TS_MS) if t.tz else col.cast(
            pa.timestamp("ms")).cast(TS_MS)
    if pa.types.is_date(t):
        return col.cast(pa.timestamp("ms")).cast(TS_MS)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _epoch_seconds(col.cast(pa.float64()), on_error)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise on_error(0, f"a column of type {t}")
    col = pc.utf8_trim_whitespace(col.cast(pa.string()))
    n = len(col)
    numeric = np.asarray(pc.match_substring_regex(col, _NUMERIC).to_numpy(zero_copy_only=False), dtype=bool)
    zoned = np.asarray(pc.match_substring_regex(col, _ZONED).to_numpy(zero_copy_only=False), dtype=bool)
    out = np.zeros(n, dtype=np.int64)

    def part(mask: np.ndarray, convert) -> None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        sub = col.take(pa.array(idx))
        vals = convert(sub, lambda i, v: on_error(int(idx[i]), v))
        out[idx] = vals.cast(pa.int64()).to_numpy()

    part(numeric, lambda s, err: _epoch_seconds(s.cast(pa.float64()), err))
    part(zoned & ~numeric, lambda s, err: cast_or_locate(
        pc.replace_substring_regex(s, r"^(\d{4}-\d\d-\d\d) ", r"\1T"), TS_MS, err))
    part(~zoned & ~numeric, lambda s, err: cast_or_locate(s, pa.timestamp("ms"), err))
    return pa.chunked_array([pa.array(out, pa.int64()).cast(TS_MS)])


def _epoch_seconds(col: pa.ChunkedArray, on_error) -> pa.ChunkedArray:
    secs = col.to_numpy()
    # 32503680000 s is the year 3000: a larger number is milliseconds or garbage, not seconds
    bad = ~np.isfinite(secs) | (np.abs(secs) > 32503680000)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise on_error(i, col[i].as_py())
    return pa.chunked_array([pa.array(np.round(secs * 1000).astype(np.int64)).cast(TS_MS)])


def lists_from_pairs(rows: np.ndarray, values: pa.Array, n: int) -> pa.ListArray:
    """A list column of ``n`` rows where row ``rows[k]`` holds ``values[k]`` (rows sorted)."""
    counts = np.bincount(rows, minlength=n) if len(rows) else np.zeros(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def first_ts_by(keys: pa.ChunkedArray, ts: pa.ChunkedArray) -> pa.Table:
    """The earliest timestamp of each key: columns ``key``, ``first``."""
    g = pa.table({"key": keys, "ts": ts}).group_by("key", use_threads=False).aggregate([("ts", "min")])
    return g.rename_columns(["key", "first"])


def lookup(keys: pa.ChunkedArray | pa.Array, table: pa.Table, column: str) -> pa.Array:
    """``table[column]`` aligned to ``keys`` via ``table["key"]`` (null where absent)."""
    idx = pc.index_in(keys, value_set=table.column("key"))
    return pc.take(table.column(column), idx)


def merge_rows(existing: pa.Table | None, new: pa.Table, key: str, *, replace: bool) -> pa.Table:
    """Union of two tables with the same schema, one row per ``key``.

    ``replace``: rows of ``new`` win over existing rows with the same key (a re-import of the
    same source refreshes it); otherwise existing rows win and only unknown keys are added.
    """
    if existing is None or existing.num_rows == 0:
        return new
    existing = existing.cast(new.schema)
    if replace:
        keep = pc.invert(pc.is_in(existing.column(key), value_set=new.column(key)))
        return pa.concat_tables([existing.filter(keep), new])
    add = pc.invert(pc.is_in(new.column(key), value_set=existing.column(key)))
    return pa.concat_tables([existing, new.filter(add)])


def empty_column(n: int, field: pa.Field) -> pa.Array:
    if pa.types.is_list(field.type):  # empty lists, never null: "no genres", "everywhere"
        return lists_from_pairs(np.zeros(0, dtype=np.int64), pa.array([], field.type.value_type), n)
    return pa.nulls(n, field.type)


def build(schema: pa.Schema, n: int, **columns) -> pa.Table:
    """A table of ``schema`` with the given columns and every other one empty."""
    cols = []
    for f in schema:
        if f.name in columns:
            c = columns[f.name]
            cols.append(c.cast(f.type) if hasattr(c, "cast") else pa.array(c, f.type))
        else:
            cols.append(empty_column(n, f))
    return pa.Table.from_arrays(cols, schema=schema)


def titles_table(n: int, **columns) -> pa.Table:
    return build(TITLE_SCHEMA, n, **columns)


def users_table(n: int, **columns) -> pa.Table:
    return build(USER_SCHEMA, n, **columns)


def write_import(settings, titles: pa.Table, users: pa.Table, events: pa.Table, *,
                 replace: bool, times_are_real: bool = True) -> int:
    """Merge titles and users into the data directory and append the events that are new.

    Events whose ``event_id`` is already in the lake (a re-import of the same file) are left
    out before the append, so a re-import neither double-counts nor adds files. Returns the
    number of events appended. ``times_are_real=False`` (events stamped with the import time)
    compares against every event_id in the lake, since earlier copies carry other times.
    """
    import datetime as dt

    from reelrec.domain.catalog import Catalog
    from reelrec.domain.users import load_users, save_users
    from reelrec.errors import NotFound
    from reelrec.storage.lake import open_lake

    try:
        existing_titles = Catalog.load(settings.data_dir).table
    except NotFound:
        existing_titles = None
    Catalog(merge_rows(existing_titles, titles, "title_id", replace=replace)).save(settings.data_dir)
    try:
        existing_users = load_users(settings.data_dir)
    except NotFound:
        existing_users = None
    save_users(merge_rows(existing_users, users, "user_id", replace=replace), settings.data_dir)

    if events.num_rows == 0:
        return 0
    lake = open_lake(settings.lake)
    if times_are_real:
        mm = pc.min_max(events.column("ts"))
        start, end = mm["min"].as_py(), mm["max"].as_py() + dt.timedelta(milliseconds=1)
    else:
        start = end = None
    seen = lake.scan(start=start, end=end, columns=["event_id"]).column("event_id")
    if len(seen):
        events = events.filter(pc.invert(pc.is_in(events.column("event_id"), value_set=seen)))
    return lake.append(events) if events.num_rows else 0
