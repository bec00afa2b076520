"""``reelrec worker speed``: consume the event bus in a group, apply micro-batches, commit after.

Offsets are committed only after the batch's pages are in the cache, so a crash re-delivers the
batch; the speed layer skips what it applied before (``seen_check``) and re-applies the rest
idempotently (``SpeedLayer.apply``), so nothing is lost and nothing counts twice.

Failures, and what the loop does about them:

* the state, cache or bus is unreachable (``Unavailable``): the same batch is applied again after
  a growing pause, until it succeeds or the worker is stopped; nothing is committed meanwhile;
* a batch fails for another reason: it is split in halves until the failing events are alone;
  those go to the dead-letter topic with the error, the rest are applied, and the batch is
  committed (one bad event never blocks its partition);
* a commit refused after a rebalance (``Conflict``): the partition now belongs to another worker
  of the group, which receives the batch again; its effects are idempotent, so that is harmless.

Several workers in one consumer group share the topic's partitions (events are keyed by user,
so one user's events stay with one worker and in order); a worker that stops hands its
partitions to the others at its last commit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from reelrec.errors import Conflict, Unavailable
from reelrec.log import get_logger
from reelrec.speed.layer import ApplyResult, SpeedLayer

log = get_logger(__name__)
GROUP = "speed"


@dataclass
class SpeedStats:
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    pages: int = 0
    dead_lettered: int = 0
    conflicts: int = 0
    lag_s: list[float] = field(default_factory=list)


def _merge(results: list[ApplyResult]) -> ApplyResult:
    out = ApplyResult()
    for r in results:
        out.events += r.events
        out.duplicates += r.duplicates
        out.recomputed += r.recomputed
        out.lag_s += r.lag_s
        out.seconds += r.seconds
    return out


def apply_isolating(layer: SpeedLayer, pairs: list[tuple[object, dict]]
                    ) -> tuple[list[ApplyResult], list[tuple[object, str]]]:
    """Apply ``(message, event)`` pairs; a batch that fails is split until its bad events are
    alone. Returns the results and the ``(message, reason)`` of the events that failed alone.

    Raises:
        Unavailable: a backend is unreachable (the caller retries the whole batch).
    """
    try:
        return [layer.apply([e for _, e in pairs])], []
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure is isolated, then dead-lettered
        if len(pairs) == 1:
            return [], [(pairs[0][0], f"speed layer: {type(exc).__name__}: {exc}"[:500])]
        mid = len(pairs) // 2
        ra, fa = apply_isolating(layer, pairs[:mid])
        rb, fb = apply_isolating(layer, pairs[mid:])
        return ra + rb, fa + fb


def run_speed(layer: SpeedLayer, bus, stop: threading.Event, *, group: str = GROUP,
              max_batch: int = 500, poll_s: float = 0.05, on_batch=None,
              retry_max_s: float = 10.0, progress_every_s: float = 10.0) -> SpeedStats:
    """Poll, apply, commit until ``stop`` is set. ``on_batch(result)`` sees every batch applied."""
    stats = SpeedStats()
    layer.warm()
    consumer = bus.consumer(group)
    last_report = time.monotonic()
    log.info("speed worker started", group=group, max_batch=max_batch)
    try:
        while not stop.is_set():
            try:
                msgs = consumer.poll(max_messages=max_batch, timeout=poll_s)
            except Unavailable as exc:  # the broker is away; the client reconnects by itself
                log.warning("bus unavailable; polling again", error=str(exc))
                stop.wait(1.0)
                continue
            if not msgs:
                continue
            pairs, bad = [], []
            for m in msgs:
                try:
                    pairs.append((m, m.json()))
                except Exception:  # noqa: BLE001 - not JSON: dead-letter, keep the partition moving
                    bad.append((m, "speed layer: message is not JSON"))
            pause, res = 0.5, None
            while not stop.is_set():
                try:
                    results, failed = apply_isolating(layer, pairs) if pairs else ([], [])
                    bad += failed
                    res = _merge(results)
                    if bad:
                        log.error("events the speed layer cannot apply; dead-lettered",
                                  events=len(bad), first_reason=bad[0][1])
                        bus.dead_letter([m for m, _ in bad], [r for _, r in bad])
                    break
                except Unavailable as exc:
                    log.error("speed batch failed; not committed, retrying", messages=len(msgs),
                              error=str(exc), retry_in_s=pause)
                    stop.wait(pause)
                    pause = min(pause * 2, retry_max_s)
            if res is None:  # stopped while retrying: the batch stays uncommitted
                break
            try:
                consumer.commit(msgs)
            except Conflict as exc:
                stats.conflicts += 1
                log.warning("commit refused after a rebalance; the new owner re-applies the batch "
                            "idempotently", messages=len(msgs), error=str(exc))
            except Unavailable as exc:
                log.warning("commit failed; the batch will be redelivered and skipped as applied",
                            messages=len(msgs), error=str(exc))
            stats.batches += 1
            stats.events += len(msgs)
            stats.duplicates += res.duplicates
            stats.pages += len(res.recomputed)
            stats.dead_lettered += len(bad)
            stats.lag_s.extend(res.lag_s)
            if on_batch:
                on_batch(res)
            now = time.monotonic()
            if now - last_report >= progress_every_s:
                recent = stats.lag_s[-1000:]
                log.info("speed progress", events=stats.events, pages=stats.pages,
                         duplicates=stats.duplicates, dead_lettered=stats.dead_lettered,
                         lag_s_max=round(max(recent), 3) if recent else None)
                last_report = now
                del stats.lag_s[:-1000]
    finally:
        consumer.close()
        log.info("speed worker stopped", events=stats.events, pages=stats.pages,
                 duplicates=stats.duplicates)
    return stats
