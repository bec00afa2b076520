"""The aggregator: bus -> lake in micro-batches (DESIGN.md, "Aggregator" under the EventBus).

One loop, run by ``reelrec worker aggregate --bus URL --data DIR``:

1. poll messages until ``max_batch`` are in hand or ``max_wait_s`` has passed since the first;
2. validate them again (``revalidate.check_messages``: the catalog may have changed since the
   API accepted them); invalid ones go to the dead-letter topic with the reason;
3. append the valid ones to the lake as Parquet, fsync'd (``ParquetLake.append(sync=True)``);
4. only then commit the batch's offsets.

A crash anywhere before 4 redelivers the batch to the group's next consumer; the lake dedupes
on ``event_id`` at every scan (and ``compact`` removes the copies), so delivery is at least once
and counting is exactly once. A lake write that fails (a full disk) commits nothing: the worker
logs the error and retries the same batch with a growing pause until it succeeds or is stopped.

In embedded mode (``memory://``) the API writes the lake itself and no aggregator runs; the
class works on any ``EventBus`` all the same (the tests drive it on the in-process bus).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from reelrec.domain.catalog import Catalog
from reelrec.errors import Conflict, NotFound, Unavailable
from reelrec.log import get_logger
from reelrec.storage.bus import EventBus, Message
from reelrec.storage.lake import ParquetLake
from reelrec.workers.revalidate import check_messages

log = get_logger(__name__)

DEFAULT_GROUP = "reelrec-aggregate"


class CatalogWatch:
    """The catalog file of a data directory, reloaded when it changes (the API rewrites it on
    every title upsert). ``None`` while there is no catalog: title ids are then not checked."""

    def __init__(self, data_dir: Path | str):
        self.path = Path(data_dir) / "catalog" / "titles.parquet"
        self._stamp: tuple[int, int] | None = None
        self._catalog: Catalog | None = None

    def get(self) -> Catalog | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:
                log.warning("catalog disappeared; title ids not checked", path=str(self.path))
            self._stamp, self._catalog = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._catalog = Catalog.load(self.path.parent.parent)
                self._stamp = stamp
                log.info("catalog loaded", titles=len(self._catalog), path=str(self.path))
            except (NotFound, OSError) as exc:  # replaced between stat and read: next batch
                log.warning("catalog unreadable; keeping the previous one", error=str(exc))
        return self._catalog


@dataclasses.dataclass
class AggregateStats:
    batches: int = 0
    messages: int = 0
    written: int = 0  # rows appended (after in-batch dedupe)
    dead_lettered: int = 0
    fast: int = 0  # rows accepted by the vectorised validation
    write_failures: int = 0
    conflicts: int = 0  # commits refused after a rebalance (the batch is redelivered)
    lag_s: float = 0.0  # now minus the newest message's bus timestamp, at the last commit


class Aggregator:
    """Consume ``bus`` in ``group`` and append to ``lake``; see the module docstring."""

    def __init__(self, bus: EventBus, lake: ParquetLake, *, catalog: CatalogWatch | None = None,
                 group: str = DEFAULT_GROUP, max_batch: int = 10_000, max_wait_s: float = 1.0,
                 future_tolerance_s: float = 300.0, progress_every_s: float = 10.0,
                 retry_max_s: float = 30.0):
        self.bus, self.lake, self.catalog = bus, lake, catalog
        self.group, self.max_batch, self.max_wait_s = group, max_batch, max_wait_s
        self.future_tolerance_s = future_tolerance_s
        self.progress_every_s, self.retry_max_s = progress_every_s, retry_max_s
        self.stats = AggregateStats()
        self._consumer = None

    @property
    def consumer(self):
        if self._consumer is None:
            self._consumer = self.bus.consumer(self.group)
        return self._consumer

    # -- one batch ------------------------------------------------------------------------------
    def collect(self, stop: threading.Event | None = None) -> list[Message]:
        """Poll until ``max_batch`` messages or ``max_wait_s`` after the first one arrived
        (or one idle poll of ``max_wait_s`` when nothing comes)."""
        batch: list[Message] = []
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch and not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                got = self.consumer.poll(max_messages=self.max_batch - len(batch),
                                         timeout=min(left, 0.5))
            except Unavailable as exc:  # the broker is away; the client reconnects by itself
                log.warning("bus unavailable; polling again", error=str(exc))
                if stop is not None:
                    stop.wait(min(left, 1.0))
                else:
                    time.sleep(min(left, 1.0))
                continue
            if got and not batch:
                deadline = time.monotonic() + self.max_wait_s
            batch.extend(got)
        return batch

    def write(self, batch: list[Message], stop: threading.Event | None = None) -> bool:
        """Validate, append to the lake, dead-letter, then commit. Each stage that fails with
        ``Unavailable`` is retried alone (a growing pause) until it succeeds or ``stop`` is set,
        so a committed offset always follows a durable file and a retry never writes the lake
        twice. Returns True once committed.

        Raises:
            Unavailable: a stage failed and there is no ``stop`` to wait on; nothing committed.
        """
        catalog = self.catalog.get() if self.catalog is not None else None
        checked = check_messages(batch, titles=catalog, future_tolerance_s=self.future_tolerance_s)
        written = [0]
        # A batch holds each partition's messages in offset order, so committing the last one
        # of each partition commits them all, at a fraction of the cost of walking the batch.
        # (Should a rebalance ever refetch older offsets into the same batch, the last one is
        # the lower: the commit errs towards redelivery, never past an unwritten message.)
        tails = list({(m.topic, m.partition): m for m in batch}.values())

        def store():
            if checked.table.num_rows:
                written[0] = self.lake.append(checked.table, sync=True)

        def dead_letter():
            if checked.rejected:
                self.bus.dead_letter([m for m, _ in checked.rejected],
                                     [r for _, r in checked.rejected])

        for what, stage in (("lake write", store), ("dead-letter publish", dead_letter),
                            ("commit", lambda: self.consumer.commit(tails))):
            pause = 0.5
            while True:
                try:
                    stage()
                    break
                except Conflict as exc:
                    self.stats.conflicts += 1
                    log.warning("commit refused after a rebalance; the batch will be redelivered",
                                messages=len(batch), error=str(exc))
                    return False
                except Unavailable as exc:
                    self.stats.write_failures += 1
                    log.error(f"{what} failed; offsets not committed", messages=len(batch),
                              first_offset=batch[0].offset, error=str(exc), retry_in_s=pause)
                    if stop is None:
                        raise
                    if stop.wait(pause):
                        return False
                    pause = min(pause * 2, self.retry_max_s)
        s = self.stats
        s.batches += 1
        s.messages += len(batch)
        s.written += written[0]
        s.dead_lettered += len(checked.rejected)
        s.fast += checked.fast
        stamps = [m.timestamp_ms for m in tails if m.timestamp_ms]
        if stamps:
            s.lag_s = max(0.0, time.time() - max(stamps) / 1000)
        log.debug("batch committed", messages=len(batch), written=written[0],
                  dead_lettered=len(checked.rejected), fast=checked.fast)
        return True

    def step(self, stop: threading.Event | None = None) -> int:
        """Collect one batch and write it. Returns the messages committed (0 when none came,
        on a rebalance, or when stopped while retrying)."""
        batch = self.collect(stop)
        return len(batch) if batch and self.write(batch, stop) else 0

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, max_idle_s: float | None = None) -> AggregateStats:
        """Run until ``stop`` is set (or, with ``max_idle_s``, until nothing came for that
        long). The batch in hand is finished before returning; the consumer is closed."""
        start = last_report = last_data = time.monotonic()
        last_messages = 0
        log.info("aggregator started", group=self.group, topic=self.bus.topic, lake=self.lake.url,
                 max_batch=self.max_batch, max_wait_s=self.max_wait_s)
        try:
            while not stop.is_set():
                if self.step(stop):
                    last_data = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - last_data >= max_idle_s:
                    break
                now = time.monotonic()
                if now - last_report >= self.progress_every_s:
                    s = self.stats
                    log.info("aggregate progress", messages=s.messages, written=s.written,
                             dead_lettered=s.dead_lettered, batches=s.batches,
                             rate_per_s=round((s.messages - last_messages) / (now - last_report)),
                             lag_s=round(s.lag_s, 3), write_failures=s.write_failures)
                    last_report, last_messages = now, s.messages
        finally:
            self.close()
            s = self.stats
            log.info("aggregator stopped", messages=s.messages, written=s.written,
                     dead_lettered=s.dead_lettered, batches=s.batches,
                     seconds=round(time.monotonic() - start, 3))
        return self.stats

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

