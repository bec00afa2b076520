"""Progress reporting for long batch steps: rich bars on a terminal, nothing in library calls.

Library code takes a ``Progress``-like object (``step(name, total)`` returning an ``advance``
callable); ``NullProgress`` is the default, ``RichProgress`` is what ``reelrec train`` and the
benchmark pass in.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator


class NullProgress:
    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        t0 = time.perf_counter()
        try:
            yield lambda n=1: None
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


class RichProgress(NullProgress):
    """One bar per step on stderr; timings are kept for the manifest and the benchmark."""

    def __init__(self):
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self._p = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=False)

    def __enter__(self):
        self._p.start()
        return self

    def __exit__(self, *exc):
        self._p.stop()

    @contextmanager
    def step(self, name: str, total: int | None = None):
        task = self._p.add_task(name, total=total or 1)
        t0 = time.perf_counter()
        try:
            yield lambda n=1: self._p.advance(task, n)
        finally:
            self._p.update(task, completed=total or 1)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
