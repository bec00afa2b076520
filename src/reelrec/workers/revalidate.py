"""Validate events again as they leave the bus, on their way to the lake (the aggregator).

Why again: between the API's check and the aggregator the catalog may have changed (a title
withdrawn, a runtime corrected), and the topic may hold messages that another producer wrote.

``parse_event`` (reelrec.domain.events) stays the one definition of a valid event. Calling it per
event costs ~10-30 us, which alone would cap the aggregator below its 100 K events/s goal, so a
batch first goes through a vectorised pass (Arrow's JSON reader plus compute kernels) that
*accepts* only rows already in the normalised form the API publishes (``Event.to_json``) and
passing every rule; every other row goes to ``parse_event``, which decides and gives the reason.
The fast pass can therefore make a batch cheaper but never more lenient; tests/test_aggregate.py
checks with hypothesis that every row it accepts is one ``parse_event`` accepts, giving the same
lake row.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from reelrec.domain.catalog import Catalog
from reelrec.domain.events import (EVENT_SCHEMA, EVENT_TYPES, MAX_ID_LEN, MAX_POSITION,
                                   MAX_QUERY_LEN, NO_TITLE_TYPES, SLOT_KINDS, Event,
                                   events_to_table, parse_event)
from reelrec.domain.users import DEVICES
from reelrec.errors import InvalidInput
from reelrec.storage.bus import Message

UTC = dt.timezone.utc

# The wire form as the API writes it; numbers are read as float64 / int64 and compared in that
# precision, as parse_event compares Python floats and ints.
WIRE_SCHEMA = pa.schema([
    pa.field(f.name, pa.string() if f.name == "ts" else
             pa.float64() if pa.types.is_floating(f.type) else
             pa.int64() if pa.types.is_integer(f.type) else f.type)
    for f in EVENT_SCHEMA
])
# Shapes the fast pass vouches for; anything else is left to parse_event.
TS_RE = (r"^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}"
         r"T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3}|\.[0-9]{6})?Z$")
REGION_RE = r"^[A-Z0-9][A-Z0-9-]{0,7}$"
GENRE_RE = r"^[a-z0-9]([a-z0-9 &'-]*[a-z0-9])?$"
QUERY_RE = r"[A-Za-z0-9]"  # certainly not blank, whatever each library calls whitespace
MAX_SECONDS = 1e9  # float32 in the lake holds these exactly enough; larger go the slow way
_TS_FALLBACK = "2000-01-01T00:00:00Z"


@dataclass
class Checked:
    """A batch after validation: the valid events as a lake table (in message order) and each
    rejected message with its reason."""

    table: pa.Table
    rejected: list[tuple[Message, str]] = field(default_factory=list)
    fast: int = 0  # rows the vectorised pass accepted
    slow: int = 0  # rows parse_event looked at


def _valid(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.is_valid(col).to_numpy(zero_copy_only=False)


def _np(mask) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _len_between(col, lo: int, hi: int) -> np.ndarray:
    n = pc.utf8_length(col)
    return _np(pc.and_(pc.greater_equal(n, lo), pc.less_equal(n, hi)))


def _optional(col, ok_if_present: np.ndarray) -> np.ndarray:
    return ~_valid(col) | ok_if_present


def _ts_us(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(shape ok, microseconds since the epoch) of ISO 'YYYY-MM-DDTHH:MM:SS[.fff[fff]]Z' text."""
    shaped = _np(pc.match_substring_regex(col, TS_RE))
    text = pc.if_else(pa.array(shaped), col, _TS_FALLBACK)
    us = pc.cast(text, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return shaped, us.to_numpy(zero_copy_only=False)


def fast_mask(wire: pa.Table, *, titles: Catalog | None, now: dt.datetime,
              future_tolerance_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``wire`` (WIRE_SCHEMA) the vectorised pass accepts, and their ts in microseconds.

    Raises ``pa.ArrowInvalid`` when a value cannot be converted (e.g. 30 February): the caller
    then checks the whole batch the slow way.
    """
    c = wire.column
    ok = np.ones(wire.num_rows, dtype=bool)
    ok &= _len_between(c("event_id"), 1, MAX_ID_LEN)
    ok &= _len_between(c("user_id"), 1, MAX_ID_LEN)
    for name in ("session_id", "shelf_id"):
        ok &= _optional(c(name), _len_between(c(name), 1, MAX_ID_LEN))
    ok &= _optional(c("language"), _len_between(c("language"), 1, 16))

    etype = c("type")
    ok &= _np(pc.is_in(etype, value_set=pa.array(list(EVENT_TYPES))))
    for t, required in EVENT_TYPES.items():
        is_t = _np(pc.equal(etype, t))
        for name in required:
            ok &= ~is_t | _valid(c(name))
    title = c("title_id")
    has_title = _valid(title)
    needs_title = ~_np(pc.is_in(etype, value_set=pa.array(sorted(NO_TITLE_TYPES))))
    no_title = _np(pc.is_in(etype, value_set=pa.array(["search", "onboarding"])))
    ok &= ~needs_title | has_title
    ok &= ~no_title | ~has_title
    ok &= ~has_title | _len_between(title, 1, MAX_ID_LEN)

    shaped, ts_us = _ts_us(c("ts"))
    now_us = int(now.timestamp() * 1_000_000)
    # one millisecond of margin: the exact comparison at the edge is parse_event's to make
    ok &= shaped & (ts_us <= now_us + int(future_tolerance_s * 1_000_000) - 1000)

    ok &= _optional(c("device"), _np(pc.is_in(c("device"), value_set=pa.array(list(DEVICES)))))
    ok &= _optional(c("region"), _np(pc.match_substring_regex(c("region"), REGION_RE)))
    for name in ("position_s", "watched_s"):
        v = c(name)
        ok &= _optional(v, _np(pc.and_(pc.greater_equal(v, 0.0), pc.less_equal(v, MAX_SECONDS))))
    r = c("rating")
    ok &= _optional(r, _np(pc.and_(pc.greater_equal(r, 0.0), pc.less_equal(r, 10.0))))
    q = c("query")
    ok &= _optional(q, _np(pc.and_(pc.less_equal(pc.utf8_length(q), MAX_QUERY_LEN),
                                   pc.match_substring_regex(q, QUERY_RE))))
    g = c("genres")
    glen = pc.list_value_length(g)
    ok &= _optional(g, _np(pc.and_(pc.greater_equal(glen, 1), pc.less_equal(glen, 10))))
    flat = pc.list_flatten(g)
    if len(flat):
        bad_item = ~_np(pc.match_substring_regex(flat, GENRE_RE))  # null items are bad too
        parents = pc.list_parent_indices(g).to_numpy(zero_copy_only=False)
        ok[parents[bad_item]] = False
    p = c("position")
    ok &= _optional(p, _np(pc.and_(pc.greater_equal(p, 0), pc.less_equal(p, MAX_POSITION))))
    ok &= _optional(c("slot_kind"), _np(pc.is_in(c("slot_kind"), value_set=pa.array(SLOT_KINDS))))

    if titles is not None:
        idx = pc.index_in(title, value_set=titles.table.column("title_id"))
        known = _valid(idx)
        ok &= ~has_title | known
        runtime = np.full(wire.num_rows, np.nan)
        at = idx.to_numpy(zero_copy_only=False)[known].astype(np.int64)
        runtime[known] = titles.runtime_s[at]
        pos = c("position_s").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
        past_end = ~np.isnan(runtime) & ~np.isnan(pos) & (pos > runtime)
        ok &= ~past_end
    return ok, ts_us


def _lake_rows(wire: pa.Table, rows: np.ndarray, ts_us: np.ndarray) -> pa.Table:
    sub = wire.take(pa.array(rows))
    cols = []
    for f in EVENT_SCHEMA:
        if f.name == "ts":
            # floor to milliseconds, as the lake's timestamp[ms] stores a Python datetime
            cols.append(pa.array(ts_us[rows] // 1000, pa.int64()).cast(f.type))
        else:
            cols.append(sub.column(f.name).cast(f.type))
    return pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)


def _read_wire(messages: Sequence[Message]) -> pa.Table | None:
    values = [m.value for m in messages]
    buf = b"\n".join(values)
    # One JSON object per line: a value that is empty or spans lines would misalign the rows.
    if buf.count(b"\n") != len(values) - 1 or b"\r" in buf or 0 in map(len, values):
        return None
    try:
        wire = pj.read_json(
            io.BytesIO(buf),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(buf) + 1)),
            parse_options=pj.ParseOptions(explicit_schema=WIRE_SCHEMA,
                                          unexpected_field_behavior="error"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None  # a foreign or malformed message somewhere: the slow way decides per row
    return wire if wire.num_rows == len(values) else None


def _slow(messages: Sequence[Message], rows: np.ndarray, *, titles: Catalog | None,
          now: dt.datetime, future_tolerance_s: float,
          rejected: list[tuple[int, Message, str]]) -> tuple[list[int], list[Event]]:
    kept_rows: list[int] = []
    events: list[Event] = []
    for i in rows.tolist():
        m = messages[i]
        try:
            rec = json.loads(m.value)
        except ValueError as exc:  # includes bytes that are not UTF-8
            rejected.append((i, m, f"value: not JSON: {exc}"))
            continue
        if isinstance(rec, dict) and rec.get("event_id") in (None, ""):
            # parse_event would invent a random id; one derived from the message's place in
            # the log keeps a redelivered copy a duplicate
            rec["event_id"] = f"{m.topic}-{m.partition}-{m.offset}"
        try:
            events.append(parse_event(rec, titles=titles, now=now,
                                      future_tolerance_s=future_tolerance_s))
            kept_rows.append(i)
        except InvalidInput as exc:
            rejected.append((i, m, str(exc)))
    return kept_rows, events


def _storable(rows: list[int], events: list[Event], messages: Sequence[Message],
              rejected: list[tuple[int, Message, str]]) -> tuple[list[int], pa.Table]:
    """Events as a lake table; one that the lake schema cannot hold (a value out of its
    range) is rejected alone rather than failing the batch again on every redelivery."""
    try:
        return rows, events_to_table(events)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError):
        pass
    keep_rows, tables = [], []
    for i, e in zip(rows, events):
        try:
            tables.append(events_to_table([e]))
            keep_rows.append(i)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError) as exc:
            rejected.append((i, messages[i], f"event: cannot be stored in the lake: {exc}"))
    return keep_rows, (pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table())


def check_messages(messages: Sequence[Message], *, titles: Catalog | None,
                   now: dt.datetime | None = None, future_tolerance_s: float = 300.0) -> Checked:
    """Validate a batch of bus messages; ``titles=None`` skips the catalog checks."""
    now = now or dt.datetime.now(UTC)
    n = len(messages)
    if n == 0:
        return Checked(EVENT_SCHEMA.empty_table())
    ok = np.zeros(n, dtype=bool)
    fast_table = None
    wire = _read_wire(messages)
    if wire is not None:
        try:
            ok, ts_us = fast_mask(wire, titles=titles, now=now,
                                  future_tolerance_s=future_tolerance_s)
            fast_rows = np.flatnonzero(ok)
            fast_table = _lake_rows(wire, fast_rows, ts_us) if len(fast_rows) else None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok = np.zeros(n, dtype=bool)
            fast_table = None
    rejected: list[tuple[int, Message, str]] = []
    slow_rows, slow_events = _slow(messages, np.flatnonzero(~ok), titles=titles, now=now,
                                   future_tolerance_s=future_tolerance_s, rejected=rejected)
    slow_rows, slow_table = _storable(slow_rows, slow_events, messages, rejected)

    parts, order = [], []
    if fast_table is not None:
        parts.append(fast_table)
        order.append(np.flatnonzero(ok))
    if slow_rows:
        parts.append(slow_table)
        order.append(np.asarray(slow_rows, dtype=np.int64))
    if not parts:
        table = EVENT_SCHEMA.empty_table()
    elif len(parts) == 1:
        table = parts[0]
    else:  # back into message order, so "first write wins" means first in the log
        back = np.argsort(np.concatenate(order), kind="stable")
        table = pa.concat_tables(parts).take(pa.array(back))
    rejected.sort(key=lambda r: r[0])
    return Checked(table, [(m, reason) for _, m, reason in rejected],
                   fast=int(ok.sum()), slow=n - int(ok.sum()))
