"""``reelrec worker speed``: consume the event bus in a group, apply micro-batches, commit after.

Offsets are committed only after the batch's pages are in the cache, so a crash re-delivers the
batch; ``seen_many`` in the online state makes the second application a no-op.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from reelrec.log import get_logger
from reelrec.speed.layer import SpeedLayer

log = get_logger(__name__)
GROUP = "speed"


@dataclass
class SpeedStats:
    batches: int = 0
    events: int = 0
    pages: int = 0
    lag_s: list[float] = field(default_factory=list)


def run_speed(layer: SpeedLayer, bus, stop: threading.Event, *, group: str = GROUP,
              max_batch: int = 500, poll_s: float = 0.05, on_batch=None) -> SpeedStats:
    """Poll, apply, commit until ``stop`` is set. ``on_batch(result)`` sees every batch applied."""
    stats = SpeedStats()
    consumer = bus.consumer(group)
    try:
        while not stop.is_set():
            msgs = consumer.poll(max_messages=max_batch, timeout=poll_s)
            if not msgs:
                continue
            events = []
            for m in msgs:
                try:
                    events.append(m.json())
                except ValueError:
                    bus.dead_letter([m], "speed layer: message is not JSON")
            try:
                res = layer.apply(events)
            except Exception as exc:  # keep the worker alive; the batch is re-delivered
                log.error("speed batch failed; not committed", error=f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)
                continue
            consumer.commit(msgs)
            stats.batches += 1
            stats.events += len(events)
            stats.pages += len(res.recomputed)
            stats.lag_s.extend(res.lag_s)
            if on_batch:
                on_batch(res)
    finally:
        consumer.close()
    return stats
