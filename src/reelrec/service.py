"""Service functions shared by the HTTP API and the CLI (STYLE.md point 9).

``Services`` holds the opened backends for one process; the functions below are what a handler
or a command calls, so the two can never disagree about what "ingest an event" means.

Ingest (DESIGN.md: client -> API -> EventBus -> aggregator -> lake, and -> speed layer). What a
202 promises depends on the bus (docs/operations.md, "What a 202 means"):

* ``kafka://`` (distributed): the events are published, keyed by ``user_id``, and the publish
  returned only once Kafka holds them durably. The API never writes the lake; the aggregate
  worker (``reelrec.workers.aggregate``) does. A publish that cannot complete within
  ``publish_timeout_s`` raises ``Unavailable`` (HTTP 503 with Retry-After); nothing is spooled.
* ``memory://`` (embedded): an in-process bus dies with the process, so the API appends the
  events to the lake (fsync'd) before answering, then publishes them on the in-process bus for
  the speed layer. No aggregator runs in this mode, so the lake is written exactly once.

Profile changes and onboarding picks are events too (types ``profile`` and ``onboarding``):
they take the same path, so the lake keeps them and the speed layer sees them on the bus.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from reelrec.config import Settings
from reelrec.domain.catalog import Catalog, Title
from reelrec.domain.events import Event, ValidationReport, events_to_table, validate_records
from reelrec.errors import FieldError, InvalidInput, NotFound
from reelrec.log import get_logger
from reelrec.storage.bus import EventBus, MemoryBus, open_bus
from reelrec.storage.lake import ParquetLake, open_lake

log = get_logger(__name__)

ONBOARDING_GENRES = (3, 5)  # how many genres a new user picks


def with_default_option(url: str, name: str, value: Any) -> str:
    """``url`` with ``?name=value`` added unless the URL already sets ``name``."""
    p = urlparse(url)
    query = parse_qsl(p.query, keep_blank_values=True)
    if any(k == name for k, _ in query):
        return url
    return urlunparse(p._replace(query=urlencode(query + [(name, str(value))])))


def bus_url_of(settings: Settings) -> str:
    """The bus URL with the publish timeout filled in from ``publish_timeout_s`` for Kafka."""
    url = settings.bus_url
    if urlparse(url).scheme.lower() == "kafka":
        url = with_default_option(url, "timeout_s", settings.publish_timeout_s)
    return url


class Services:
    """The backends of one process, opened from ``settings``. Nothing connects at import time.

    ``bus`` may be handed in (the embedded server shares one in-process bus between the API and
    its workers); otherwise it is opened from ``settings.bus_url``.
    """

    def __init__(self, settings: Settings, *, bus: EventBus | None = None):
        self.settings = settings
        self.lake: ParquetLake = open_lake(settings.lake)
        self.bus: EventBus = bus if bus is not None else open_bus(bus_url_of(settings))
        self._catalog_lock = threading.Lock()
        try:
            self._catalog = Catalog.load(settings.data_dir)
        except NotFound:
            self._catalog = Catalog.from_titles([])

    @property
    def embedded(self) -> bool:
        """True when the bus lives in this process, so the API itself makes events durable in
        the lake (see the module docstring)."""
        return isinstance(self.bus, MemoryBus)

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def replace_catalog(self, catalog: Catalog) -> None:
        with self._catalog_lock:
            catalog.save(self.settings.data_dir)
            self._catalog = catalog

    def close(self) -> None:
        self.bus.close()


@dataclass
class IngestResult:
    accepted: int
    rejected: list[FieldError] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)


def make_durable(services: Services, events: list[Event]) -> None:
    """Put events where a 202 promises they are: Kafka, or the lake in embedded mode.

    Raises:
        Unavailable: the bus (or, embedded, the lake's storage) could not make them durable
            in time; nothing may be acknowledged.
    """
    if not events:
        return
    records = [e.to_json() for e in events]
    if services.embedded:
        services.lake.append(events_to_table(events), sync=True)
    services.bus.publish(records)


def _ingest(services: Services, records: list[Any]) -> ValidationReport:
    if len(records) > services.settings.max_batch:
        raise InvalidInput(f"a batch holds at most {services.settings.max_batch} events, "
                           f"got {len(records)}", field="events")
    report = validate_records(records, titles=services.catalog,
                              future_tolerance_s=services.settings.future_tolerance_s)
    make_durable(services, report.events)
    log.debug("events ingested", accepted=report.accepted, rejected=report.rejected,
              embedded=services.embedded)
    return report


def ingest_events(services: Services, records: list[Any]) -> IngestResult:
    """Validate a batch, make every valid event durable, report the invalid ones by index.

    Raises:
        InvalidInput: the batch is larger than ``max_batch``.
        Unavailable: the events could not be made durable (nothing was acknowledged).
    """
    report = _ingest(services, records)
    return IngestResult(report.accepted, report.errors, [e.event_id for e in report.events])


def _ingest_one(services: Services, record: dict) -> Event:
    report = _ingest(services, [record])
    if not report.events:
        raise InvalidInput([FieldError(e.field, e.reason) for e in report.errors])
    return report.events[0]


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def update_profile(services: Services, user_id: str, *, region: str | None = None,
                   language: str | None = None, device: str | None = None,
                   ts: Any = None) -> Event:
    """Record a profile change as a ``profile`` event on the ingest path; returns the event.

    Raises:
        InvalidInput: no field to change, or a bad value (naming the field).
        Unavailable: the event could not be made durable.
    """
    changes = {k: v for k, v in (("region", region), ("language", language), ("device", device))
               if v is not None}
    if not changes:
        raise InvalidInput("give at least one of region, language, device", field="profile")
    return _ingest_one(services, {"event_id": uuid.uuid4().hex, "user_id": user_id,
                                  "type": "profile", "ts": ts or _now_iso(), **changes})


def record_onboarding(services: Services, user_id: str, genres: list[str], *,
                      device: str | None = None, region: str | None = None,
                      ts: Any = None) -> Event:
    """Record a new user's genre picks as an ``onboarding`` event; returns the event.

    Raises:
        InvalidInput: not 3 to 5 genres, a genre the catalog does not have, or a bad field.
        Unavailable: the event could not be made durable.
    """
    lo, hi = ONBOARDING_GENRES
    if not isinstance(genres, list) or not lo <= len(genres) <= hi:
        raise InvalidInput(f"pick {lo} to {hi} genres", field="genres")
    if len(services.catalog):
        known = set(services.catalog.genres())
        unknown = [g for g in genres if isinstance(g, str) and g.strip().lower() not in known]
        if unknown:
            raise InvalidInput(f"unknown genre(s) {', '.join(map(repr, unknown[:5]))}; the "
                               f"catalog has {', '.join(sorted(known)[:30])}", field="genres")
    rec = {"event_id": uuid.uuid4().hex, "user_id": user_id, "type": "onboarding",
           "ts": ts or _now_iso(), "genres": genres}
    rec.update({k: v for k, v in (("device", device), ("region", region)) if v is not None})
    return _ingest_one(services, rec)


def upsert_title(services: Services, title: Title) -> Title:
    """Add or replace a catalog title. Raises InvalidInput naming the bad field."""
    services.replace_catalog(services.catalog.upsert(title))
    return services.catalog.get(title.title_id)
