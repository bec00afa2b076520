"""Import a user's own table of user-item interactions into the behavioural lake.

In DESIGN.md's picture this is, like the MovieLens importer, a batch source beside the event
bus: it turns rows of a CSV, TSV or Parquet file into lake events so the batch layer can train
on a service's own history.

How a row becomes an event:

* with ``weight_col``: a ``rating`` event whose ``rating`` is the weight. The lake's rating range
  is 0-10, and a weight outside it is an error naming its line: reelrec does not guess how play
  counts or scores should be rescaled, so rescale such a column before importing (for example to
  a 0-5 or 0-10 scale);
* without it: a ``complete`` event (the user finished the title), the usual meaning of a bare
  user-item pair in implicit-feedback data.
* ``time_col``: epoch seconds, or ISO 8601 text (a time without a zone is UTC); Parquet
  timestamp and date columns are read as such. Without it every event is stamped with the import
  time. A time more than ``settings.future_tolerance_s`` in the future is an error, as for any
  event.
* ``event_id`` is ``ix:<user>:<item>:<epoch ms>`` with a time column, else
  ``ix:<user>:<item>:n<k>`` for the k-th row of that pair in the file (``%`` and ``:`` in ids
  are percent-escaped). Importing the same file again therefore appends nothing; two rows with
  the same user, item and time are one event.

Catalog and users: items the data directory does not know become minimal titles (``kind``
movie, no genres, the id as the name, ``added_date`` = day of the first interaction); known
titles are left as they are. Unknown users are added with only their id and ``signup_ts`` (first
interaction); known users are left as they are.

Errors name the column and the line (text files, counting the header as line 1) or the row
index (Parquet, 0-based).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reelrec.domain.events import MAX_ID_LEN
from reelrec.errors import FieldError, InvalidInput
from reelrec.importers import ImportSummary
from reelrec.importers._tables import (
    TS_MS,
    cast_or_locate,
    first_ts_by,
    parse_times,
    read_delimited,
    titles_table,
    users_table,
    write_import,
)
from reelrec.log import get_logger

log = get_logger(__name__)
RATING_RANGE = (0.0, 10.0)
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET = (".parquet", ".pq")
_SEP_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


class _Source:
    """The requested columns of the file plus how to name a row in an error."""

    def __init__(self, file: Path, table: pa.Table, first_line: int | None):
        self.file, self.table, self.first_line = file, table, first_line

    def error(self, column: str, reason: str, i: int) -> InvalidInput:
        if self.first_line is None:
            return InvalidInput(FieldError(f"{self.file.name}:{column}", reason, index=int(i)))
        return InvalidInput(FieldError(f"{self.file.name}:{column}", reason, line=self.first_line + int(i)))


def import_interactions(file: Path, settings, *, user_col: str, item_col: str,
                        weight_col: str | None = None, time_col: str | None = None,
                        sep: str | None = None) -> ImportSummary:
    """Import interactions from a CSV/TSV (``sep`` or the extension) or Parquet file.

    Raises:
        InvalidInput: the format cannot be told, a column is missing (the error lists the
            columns that exist), or a row is malformed (empty id, a weight that is not a number
            or outside 0-10, a time that is neither epoch seconds nor ISO 8601), with its line.
        Unavailable: the lake refused the write.
    """
    file = Path(file)
    t0 = time.perf_counter()
    columns = list(dict.fromkeys(c for c in (user_col, item_col, weight_col, time_col) if c))
    src = _read(file, columns, sep)
    n = src.table.num_rows
    users = _ids(src, user_col)
    items = _ids(src, item_col)

    if weight_col:
        w = src.table.column(weight_col)
        if pa.types.is_string(w.type) or pa.types.is_large_string(w.type):
            w = pc.utf8_trim_whitespace(w)
        _no_nulls(src, weight_col, w)
        weight = cast_or_locate(w, pa.float64(), lambda i, v: src.error(weight_col, f"{v!r} is not a number", i))
        lo, hi = RATING_RANGE
        arr = weight.to_numpy()
        bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise src.error(weight_col, f"{arr[i]:g} is outside the rating range {lo:g}-{hi:g}; "
                                        "rescale the column before importing", i)
        etype, rating = "rating", weight.cast(pa.float32())
    else:
        etype, rating = "complete", pa.nulls(n, pa.float32())

    now = dt.datetime.now(dt.timezone.utc)
    if time_col:
        tcol = src.table.column(time_col)
        _no_nulls(src, time_col, tcol)
        ts = parse_times(tcol, lambda i, v: src.error(
            time_col, f"{v!r} is neither epoch seconds nor ISO 8601", i))
        limit = pa.scalar(now + dt.timedelta(seconds=settings.future_tolerance_s), TS_MS)
        future = pc.greater(ts, limit).to_numpy(zero_copy_only=False)
        if future.any():
            i = int(np.flatnonzero(future)[0])
            raise src.error(time_col, f"{ts[i].as_py().isoformat()} is more than "
                                      f"{settings.future_tolerance_s:.0f} s in the future", i)
        suffix = ts.cast(pa.int64()).cast(pa.string())
    else:
        ts = pa.chunked_array([pa.array(np.full(n, int(now.timestamp() * 1000), dtype=np.int64)).cast(TS_MS)])
        suffix = pc.binary_join_element_wise("n", _occurrence(users, items).cast(pa.string()), "")

    event_id = pc.binary_join_element_wise("ix", _escape(users), _escape(items), suffix, ":")
    events = pa.table({
        "event_id": event_id, "user_id": users, "title_id": items,
        "type": pa.array(np.full(n, etype, dtype=object), pa.string()), "ts": ts, "rating": rating,
    })
    firsts_t = first_ts_by(items, ts)
    titles = titles_table(firsts_t.num_rows, title_id=firsts_t.column("key"), name=firsts_t.column("key"),
                          kind=pa.array(np.full(firsts_t.num_rows, "movie", dtype=object), pa.string()),
                          added_date=firsts_t.column("first").cast(pa.date32()))
    firsts_u = first_ts_by(users, ts)
    user_table = users_table(firsts_u.num_rows, user_id=firsts_u.column("key"),
                             signup_ts=firsts_u.column("first"))
    appended = write_import(settings, titles, user_table, events, replace=False,
                            times_are_real=bool(time_col))
    log.info("interactions imported", file=str(file), events=n, appended=appended,
             users=user_table.num_rows, titles=titles.num_rows,
             seconds=round(time.perf_counter() - t0, 2))
    return ImportSummary(events=n, users=user_table.num_rows, titles=titles.num_rows, appended=appended)


def _read(file: Path, columns: list[str], sep: str | None) -> _Source:
    suffix = file.suffix.lower()
    if sep is None and suffix in PARQUET:
        try:
            names = pq.read_schema(file).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(FieldError(file.name, f"cannot be read as Parquet: {exc}")) from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise InvalidInput(FieldError(f"{file.name}:{missing[0]}",
                                          f"no such column; the file has {', '.join(map(repr, names))}"))
        return _Source(file, pq.read_table(file, columns=columns), None)
    if sep is None:
        sep = SEPARATORS.get(suffix)
        if sep is None:
            raise InvalidInput(FieldError("sep", f"cannot tell the format of {file.name!r} from its "
                                                 "extension (.csv, .tsv, .parquet); pass --sep"))
    sep = _SEP_NAMES.get(sep.lower(), sep)
    if len(sep) != 1:
        raise InvalidInput(FieldError("sep", f"must be a single character (or tab), got {sep!r}"))
    d = read_delimited(file, delimiter=sep, include=columns)
    return _Source(file, d.table, d.first_line)


def _no_nulls(src: _Source, column: str, col) -> None:
    if col.null_count:
        i = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
        raise src.error(column, "is empty", i)


def _ids(src: _Source, column: str) -> pa.ChunkedArray:
    col = src.table.column(column)
    if pa.types.is_floating(col.type):
        raise src.error(column, f"ids must be text or integers, got {col.type}", 0)
    col = pc.utf8_trim_whitespace(col.cast(pa.string()))
    _no_nulls(src, column, col)
    lengths = pc.utf8_length(col).to_numpy()
    bad = (lengths == 0) | (lengths > MAX_ID_LEN)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise src.error(column, "is empty" if lengths[i] == 0 else
                        f"is longer than {MAX_ID_LEN} characters", i)
    return col


def _escape(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.replace_substring(pc.replace_substring(col, "%", "%25"), ":", "%3A")


def _occurrence(users: pa.ChunkedArray, items: pa.ChunkedArray) -> pa.Array:
    """For each row, how many earlier rows have the same (user, item) pair."""
    pair = pc.binary_join_element_wise(users, items, "\x1f")
    codes = pc.dictionary_encode(pair).combine_chunks().indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    occ = np.empty(len(codes), dtype=np.int64)
    occ[order] = np.arange(len(codes)) - group_start
    return pa.array(occ)
