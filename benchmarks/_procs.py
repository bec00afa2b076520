"""Process helpers the server-spawning benchmarks share (bench_ingest, bench_serving)."""

from __future__ import annotations

import subprocess
import sys

from reelrec import ports
from reelrec.ports import free_port  # noqa: F401  (the benchmarks import it from here)


def say(*a) -> None:
    print(*a, flush=True)


def wait_port(port: int, proc: subprocess.Popen, what: str, deadline_s: float = 60) -> None:
    """Wait until ``proc`` listens on ``port``; exit the benchmark if it dies or never does."""
    try:
        ports.wait_port(port, proc, what, deadline_s)
    except RuntimeError as exc:
        sys.exit(str(exc))
