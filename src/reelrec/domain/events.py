"""Behavioural events: the public JSON form, validation, and the Arrow schema of the lake.

The JSON names are public API: ``event_id, user_id, title_id, type, ts, device, region,
session_id`` and the payload fields ``position_s, watched_s, rating, query, genres, shelf_id,
position, slot_kind`` (plus ``language`` on ``profile`` events). JSON Lines is the file form.

``validate_records`` checks a batch and keeps every valid event: the invalid ones come back as
``FieldError`` objects carrying their index, the field and the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

import pyarrow as pa

from reelrec.domain.users import DEVICES
from reelrec.errors import FieldError, InvalidInput

UTC = dt.timezone.utc

# type -> payload fields it requires; every type except search/onboarding/profile needs title_id
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "impression": ("shelf_id", "position", "slot_kind"),
    "play_start": (),
    "progress": ("position_s", "watched_s"),
    "complete": (),
    "thumbs_up": (),
    "thumbs_down": (),
    "rating": ("rating",),
    "watchlist_add": (),
    "watchlist_remove": (),
    "search": ("query",),
    "skip_intro": (),
    "skip_recap": (),
    "onboarding": ("genres",),
    "profile": (),
}
NO_TITLE_TYPES = frozenset({"search", "onboarding", "profile"})
SLOT_KINDS = ("exploit", "explore", "novel")
MAX_QUERY_LEN = 500
MAX_ID_LEN = 200
MAX_POSITION = 2**31 - 1  # the lake stores int32

EVENT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("title_id", pa.string()),
    pa.field("type", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("device", pa.string()),
    pa.field("region", pa.string()),
    pa.field("session_id", pa.string()),
    pa.field("position_s", pa.float32()),
    pa.field("watched_s", pa.float32()),
    pa.field("rating", pa.float32()),
    pa.field("query", pa.string()),
    pa.field("genres", pa.list_(pa.string())),
    pa.field("shelf_id", pa.string()),
    pa.field("position", pa.int32()),
    pa.field("slot_kind", pa.string()),
    pa.field("language", pa.string()),
])
EVENT_FIELDS = tuple(EVENT_SCHEMA.names)


class TitleLookup(Protocol):
    """What validation needs from a catalog: membership and the runtime of one viewing unit."""

    def __contains__(self, title_id: object) -> bool: ...

    def runtime_s_of(self, title_id: str) -> float | None: ...


@dataclass(slots=True)
class Event:
    event_id: str
    user_id: str
    type: str
    ts: dt.datetime
    title_id: str | None = None
    device: str | None = None
    region: str | None = None
    session_id: str | None = None
    position_s: float | None = None
    watched_s: float | None = None
    rating: float | None = None
    query: str | None = None
    genres: list[str] | None = None
    shelf_id: str | None = None
    position: int | None = None
    slot_kind: str | None = None
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in EVENT_FIELDS if getattr(self, k) is not None}
        d["ts"] = self.ts.isoformat().replace("+00:00", "Z")
        return d


def parse_ts(value: Any) -> dt.datetime:
    """ISO 8601 (naive means UTC) or epoch seconds → aware UTC datetime. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("must be ISO 8601 text or epoch seconds, got a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of epoch seconds")
        return dt.datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.datetime.fromtimestamp(float(text), tz=UTC)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"is not ISO 8601 or epoch seconds: {value[:40]!r}") from None
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"must be ISO 8601 text or epoch seconds, got {type(value).__name__}")


def _str(rec: dict, name: str, errs: list[FieldError], *, required: bool = False,
         max_len: int = MAX_ID_LEN) -> str | None:
    v = rec.get(name)
    if v is None or v == "":
        if required:
            errs.append(FieldError(name, "is required"))
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        errs.append(FieldError(name, f"must be a string, got {type(v).__name__}"))
        return None
    v = str(v)
    if len(v) > max_len:
        errs.append(FieldError(name, f"is longer than {max_len} characters"))
        return None
    return v


def _num(rec: dict, name: str, errs: list[FieldError]) -> float | None:
    v = rec.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        errs.append(FieldError(name, f"must be a number, got {type(v).__name__}"))
        return None
    if not math.isfinite(v):
        errs.append(FieldError(name, "must be finite"))
        return None
    return float(v)


def parse_event(rec: Any, *, titles: TitleLookup | None = None, now: dt.datetime | None = None,
                future_tolerance_s: float = 300.0) -> Event:
    """Validate one JSON-like record and build an ``Event``.

    Raises:
        InvalidInput: listing every problem found, each naming its field and reason.
    """
    if not isinstance(rec, dict):
        raise InvalidInput(FieldError("event", f"must be a JSON object, got {type(rec).__name__}"))
    errs: list[FieldError] = []
    unknown = set(rec) - set(EVENT_FIELDS)
    for name in sorted(unknown):
        errs.append(FieldError(name, "is not an event field"))

    etype = rec.get("type")
    if etype is None:
        errs.append(FieldError("type", "is required"))
    elif not isinstance(etype, str) or etype not in EVENT_TYPES:
        errs.append(FieldError("type", f"unknown type {str(etype)[:40]!r}; expected one of "
                                       + ", ".join(EVENT_TYPES)))
        etype = None

    event_id = _str(rec, "event_id", errs) or uuid.uuid4().hex
    user_id = _str(rec, "user_id", errs, required=True)
    title_id = _str(rec, "title_id", errs, required=etype is not None and etype not in NO_TITLE_TYPES)
    session_id = _str(rec, "session_id", errs)

    ts = None
    if rec.get("ts") is None:
        errs.append(FieldError("ts", "is required"))
    else:
        try:
            ts = parse_ts(rec["ts"])
        except (ValueError, OverflowError, OSError) as exc:
            errs.append(FieldError("ts", str(exc)))
    if ts is not None:
        now = now or dt.datetime.now(UTC)
        if (ts - now).total_seconds() > future_tolerance_s:
            errs.append(FieldError("ts", f"is more than {future_tolerance_s:.0f} s in the future"))

    device = _str(rec, "device", errs)
    if device is not None:
        device = device.lower()
        if device not in DEVICES:
            errs.append(FieldError("device", f"must be one of {', '.join(DEVICES)}, got {device[:20]!r}"))
    region = _str(rec, "region", errs, max_len=8)
    if region is not None:
        region = region.upper()
    language = _str(rec, "language", errs, max_len=16)

    position_s = _num(rec, "position_s", errs)
    watched_s = _num(rec, "watched_s", errs)
    rating = _num(rec, "rating", errs)
    for name, v in (("position_s", position_s), ("watched_s", watched_s)):
        if v is not None and v < 0:
            errs.append(FieldError(name, "must not be negative"))
    if rating is not None and not 0 <= rating <= 10:
        errs.append(FieldError("rating", "must be between 0 and 10"))

    query = rec.get("query")
    if query is not None:
        if not isinstance(query, str):
            errs.append(FieldError("query", f"must be a string, got {type(query).__name__}"))
            query = None
        elif not query.strip():
            errs.append(FieldError("query", "must not be blank"))
            query = None
        elif len(query) > MAX_QUERY_LEN:
            errs.append(FieldError("query", f"is longer than {MAX_QUERY_LEN} characters"))
            query = None

    genres = rec.get("genres")
    if genres is not None:
        if not isinstance(genres, list) or not all(isinstance(g, str) and g.strip() for g in genres):
            errs.append(FieldError("genres", "must be a list of non-empty strings"))
            genres = None
        elif not 1 <= len(genres) <= 10:
            errs.append(FieldError("genres", "must name 1 to 10 genres"))
            genres = None
        else:
            genres = [g.strip().lower() for g in genres]

    shelf_id = _str(rec, "shelf_id", errs)
    position = rec.get("position")
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int):
            errs.append(FieldError("position", f"must be an integer, got {type(position).__name__}"))
            position = None
        elif not 0 <= position <= MAX_POSITION:
            errs.append(FieldError("position", f"must be between 0 and {MAX_POSITION}"))
            position = None
    slot_kind = rec.get("slot_kind")
    if slot_kind is not None and (not isinstance(slot_kind, str) or slot_kind not in SLOT_KINDS):
        errs.append(FieldError("slot_kind", f"must be one of {', '.join(SLOT_KINDS)}"))
        slot_kind = None

    if etype is not None:
        for name in EVENT_TYPES[etype]:
            if rec.get(name) is None and not any(e.field == name for e in errs):
                errs.append(FieldError(name, f"is required for type {etype!r}"))
        if etype in NO_TITLE_TYPES and title_id is not None and etype != "profile":
            errs.append(FieldError("title_id", f"must be absent for type {etype!r}"))

    if title_id is not None and titles is not None:
        if title_id not in titles:
            errs.append(FieldError("title_id", f"unknown title {title_id[:40]!r}"))
        elif position_s is not None:
            runtime = titles.runtime_s_of(title_id)
            if runtime is not None and position_s > runtime:
                errs.append(FieldError("position_s", f"{position_s:.0f} s is past the runtime "
                                                     f"({runtime:.0f} s)"))
    if errs:
        raise InvalidInput(errs)
    return Event(event_id=event_id, user_id=user_id, type=etype, ts=ts, title_id=title_id,
                 device=device, region=region, session_id=session_id, position_s=position_s,
                 watched_s=watched_s, rating=rating, query=query, genres=genres, shelf_id=shelf_id,
                 position=position, slot_kind=slot_kind, language=language)


@dataclass
class ValidationReport:
    """Outcome of validating a batch: every valid event kept, every invalid one reported."""

    events: list[Event] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    rejected: int = 0

    @property
    def accepted(self) -> int:
        return len(self.events)


def validate_records(records: Iterable[Any], *, titles: TitleLookup | None = None,
                     now: dt.datetime | None = None, future_tolerance_s: float = 300.0,
                     lines: bool = False) -> ValidationReport:
    """Validate a batch. Errors carry ``index`` (0-based) or, with ``lines``, ``line`` (1-based)."""
    now = now or dt.datetime.now(UTC)
    report = ValidationReport()
    for i, rec in enumerate(records):
        if isinstance(rec, FieldError):  # a line that was not even JSON
            report.errors.append(rec)
            report.rejected += 1
            continue
        try:
            report.events.append(parse_event(rec, titles=titles, now=now,
                                             future_tolerance_s=future_tolerance_s))
        except InvalidInput as exc:
            report.rejected += 1
            for e in exc.errors:
                report.errors.append(FieldError(e.field, e.reason, index=None if lines else i,
                                                line=i + 1 if lines else None))
    return report


def read_jsonl(path) -> Iterator[Any]:
    """Yield each line's parsed JSON, or a ``FieldError`` naming the line when it is not JSON."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                yield FieldError("line", "is empty", line=n)
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield FieldError("json", f"malformed JSON: {exc.msg} at column {exc.colno}", line=n)


def events_to_table(events: list[Event]) -> pa.Table:
    """Events → an Arrow table in the lake's schema."""
    cols = {name: [getattr(e, name) for e in events] for name in EVENT_FIELDS}
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)


def table_to_events(table: pa.Table) -> list[Event]:
    return [Event(**row) for row in table.to_pylist()]


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of one event as clients send it (for the OpenAPI document). The per-type
    payload rules, the catalog checks and the clock check are enforced by ``parse_event``."""
    text = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}
    num = {"type": "number", "minimum": 0}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["user_id", "type", "ts"],
        "properties": {
            "event_id": {**text, "description": "idempotency key; generated when absent"},
            "user_id": text,
            "title_id": {**text, "description": "absent for search, onboarding and profile"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "ts": {"description": "ISO 8601 (UTC when naive) or epoch seconds",
                   "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
            "device": {"type": "string", "enum": list(DEVICES)},
            "region": {"type": "string", "minLength": 1, "maxLength": 8},
            "session_id": text,
            "position_s": {**num, "description": "position in the film or episode, seconds"},
            "watched_s": {**num, "description": "seconds watched since the previous progress event"},
            "rating": {"type": "number", "minimum": 0, "maximum": 10},
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LEN},
            "genres": {"type": "array", "minItems": 1, "maxItems": 10,
                       "items": {"type": "string", "minLength": 1}},
            "shelf_id": text,
            "position": {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
            "slot_kind": {"type": "string", "enum": list(SLOT_KINDS)},
            "language": {"type": "string", "minLength": 1, "maxLength": 16},
        },
    }
