"""Workers: long-running consumers of the event bus (DESIGN.md, right of the EventBus box).

``aggregate`` moves events from the bus to the lake; the speed layer is the other consumer.
Every worker runs the same way: a loop that polls a batch, processes it, commits it, and checks
a ``threading.Event`` that SIGTERM / SIGINT set (``stop_on_signals``), so a supervisor's stop
finishes the batch in hand instead of losing it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from reelrec.log import get_logger

log = get_logger(__name__)


def stop_on_signals(stop: threading.Event | None = None,
                    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> threading.Event:
    """Return an event that SIGTERM and SIGINT set (a second signal exits at once).

    Call it from the main thread, as Python delivers signals only there.
    """
    stop = stop or threading.Event()

    def handler(signum, _frame):
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("stop requested; finishing the current batch", signal=signal.Signals(signum).name)
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)
    return stop


def progress_logging() -> None:
    """Let a worker's INFO progress lines through unless REELREC_LOG_LEVEL says otherwise."""
    if "REELREC_LOG_LEVEL" not in os.environ:
        logging.getLogger("reelrec").setLevel(logging.INFO)
