"""Process helpers the server-spawning benchmarks share (bench_ingest, bench_serving)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def say(*a) -> None:
    print(*a, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, deadline_s: float = 60) -> None:
    """Wait until ``proc`` listens on ``port``; exit the benchmark if it dies or never does."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port} within {deadline_s} s")
