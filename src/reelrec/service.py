"""Service functions shared by the HTTP API and the CLI (STYLE.md point 9).

``Services`` holds the opened backends for one process; the functions below are what a handler
or a command calls, so the two can never disagree about what "ingest an event" means.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from reelrec.config import Settings
from reelrec.domain.catalog import Catalog, Title
from reelrec.domain.events import Event, events_to_table, validate_records
from reelrec.errors import FieldError, InvalidInput, NotFound
from reelrec.log import get_logger
from reelrec.storage.lake import ParquetLake, open_lake

log = get_logger(__name__)


class Services:
    """The backends of one process, opened from ``settings``. Nothing connects at import time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lake: ParquetLake = open_lake(settings.lake)
        self._catalog_lock = threading.Lock()
        try:
            self._catalog = Catalog.load(settings.data_dir)
        except NotFound:
            self._catalog = Catalog.from_titles([])

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def replace_catalog(self, catalog: Catalog) -> None:
        with self._catalog_lock:
            catalog.save(self.settings.data_dir)
            self._catalog = catalog


@dataclass
class IngestResult:
    accepted: int
    rejected: list[FieldError] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)


def make_durable(services: Services, events: list[Event]) -> None:
    """Write events where a 202 promises they are: the lake in embedded mode."""
    if events:
        services.lake.append(events_to_table(events))


def ingest_events(services: Services, records: list[Any]) -> IngestResult:
    """Validate a batch, make every valid event durable, report the invalid ones by index.

    Raises:
        InvalidInput: the batch is larger than ``max_batch``.
        Unavailable: the events could not be made durable (nothing was acknowledged).
    """
    if len(records) > services.settings.max_batch:
        raise InvalidInput(f"a batch holds at most {services.settings.max_batch} events, "
                           f"got {len(records)}", field="events")
    report = validate_records(records, titles=services.catalog,
                              future_tolerance_s=services.settings.future_tolerance_s)
    make_durable(services, report.events)
    log.info("events ingested", accepted=report.accepted, rejected=report.rejected)
    return IngestResult(report.accepted, report.errors, [e.event_id for e in report.events])


def upsert_title(services: Services, title: Title) -> Title:
    """Add or replace a catalog title. Raises InvalidInput naming the bad field."""
    services.replace_catalog(services.catalog.upsert(title))
    return services.catalog.get(title.title_id)
