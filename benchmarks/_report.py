"""The result file every benchmark script writes with ``--json PATH``, for ``make bench``.

``benchmarks/run.py`` runs each ``bench_*.py`` script and renders these files into
docs/benchmarks.md, so a figure in the docs always comes from a run, with its command and machine.
A script builds a ``Report``, adds one ``row`` per figure and writes it::

    rep = Report("bench_x", "What it measures", argv)
    rep.runs("events/s, lake.append", [810_000, 790_000, 805_000], "events/s")
    rep.runs("baseline: bare write_table", [...], "events/s", baseline=True)
    rep.samples("read latency, redis://", latencies_ms, "ms")   # median p50, spread p1-p99
    rep.value("peak RSS", 1.9, "GiB")                           # measured once
    rep.note("bar: >= 500 K events/s; met")
    rep.write(path)

A row carries its median and its spread: the lowest and highest of repeated runs (``runs``), or
the 1st and 99th percentiles of a distribution of samples (``samples``), saying which.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    """What the figures were measured on: CPU model and count, memory, OS, Python, load."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))  # what `nproc` prints: the CPUs this process may use
    except AttributeError:
        nproc = os.cpu_count()
    return {"cpu": model, "nproc": nproc, "memory_gib": mem_gib,
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def describe_machine(m: dict) -> str:
    mem = f", {m['memory_gib']:g} GiB" if m.get("memory_gib") else ""
    return f"{m['cpu']}, {m['nproc']} CPUs (nproc){mem}, {m['os']}, Python {m['python']}"


class Report:
    def __init__(self, script: str, title: str, argv: list[str] | None = None, *, quick: bool = False):
        argv = sys.argv[1:] if argv is None else argv
        shown = [a for i, a in enumerate(argv) if a != "--json" and (i == 0 or argv[i - 1] != "--json")]
        self.data: dict = {
            "script": script, "title": title,
            "command": shlex.join(["python", f"benchmarks/{script}.py", *shown]),
            "quick": quick, "machine": machine(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": [], "notes": [], "details": {},
        }
        self._t0 = time.perf_counter()

    def _add(self, measure: str, unit: str, median: float, lo: float, hi: float, n: int,
             spread: str, baseline: bool) -> None:
        self.data["rows"].append({"measure": measure, "unit": unit, "median": float(median),
                                  "lo": float(lo), "hi": float(hi), "n": int(n), "spread": spread,
                                  "baseline": bool(baseline or measure.startswith("baseline"))})

    def runs(self, measure: str, values, unit: str, *, baseline: bool = False) -> None:
        """A figure measured in each of several runs: median, lowest and highest."""
        v = np.asarray(list(values), dtype=float)
        self._add(measure, unit, np.median(v), v.min(), v.max(), len(v),
                  f"min-max of {len(v)} runs" if len(v) > 1 else "one run", baseline)
        self.data["rows"][-1]["values"] = [float(x) for x in v]

    def samples(self, measure: str, values, unit: str, *, baseline: bool = False) -> None:
        """A distribution (e.g. per-request latency): the median, and p1 to p99 as the spread;
        p99 is also kept on the row."""
        v = np.asarray(values, dtype=float)
        p1, p50, p99 = np.percentile(v, [1, 50, 99])
        self._add(measure, unit, p50, p1, p99, len(v), f"p1-p99 of {len(v):,} samples", baseline)

    def value(self, measure: str, value: float, unit: str, *, baseline: bool = False) -> None:
        """A figure measured once (a size, a count)."""
        self._add(measure, unit, value, value, value, 1, "one measurement", baseline)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def detail(self, key: str, value) -> None:
        self.data["details"][key] = value

    def write(self, path: str | Path | None) -> None:
        self.data["seconds"] = round(time.perf_counter() - self._t0, 1)
        self.data["machine"]["load_avg_end"] = (
            [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None)
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
