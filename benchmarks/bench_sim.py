"""Benchmark: how fast ``reelrec simulate`` writes a world, and its peak memory.

    python benchmarks/bench_sim.py --users 2000 --titles 1000 --days 7
    python benchmarks/bench_sim.py --users 1000000 --titles 100000 --days 1
    python benchmarks/bench_sim.py --quick          # a tiny world, for CI smoke tests

Prints events, seconds, events/s and peak RSS (the process's high-water mark from
``getrusage``, which includes the interpreter and imported libraries), plus the lake's size on
disk. The world is written to a temporary directory (or ``--data``) and removed afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--titles", type=int, default=1000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk-users", type=int, default=20_000)
    ap.add_argument("--data", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the world afterwards")
    ap.add_argument("--quick", action="store_true", help="tiny world (300 x 200 x 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (make bench)")
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.titles, args.days = 300, 200, 1

    from reelrec.config import load_settings
    from reelrec.sim import SimConfig, simulate

    data = args.data or Path(tempfile.mkdtemp(prefix="reelrec-bench-sim-"))
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    try:
        settings = load_settings(data_dir=data)
        summary = simulate(SimConfig(users=args.users, titles=args.titles, days=args.days,
                                     seed=args.seed, chunk_users=args.chunk_users, progress=True),
                           settings)
        wall = time.perf_counter() - t0
        lake_bytes = _dir_bytes(data / "lake")
    finally:
        if not args.keep and args.data is None:
            shutil.rmtree(data, ignore_errors=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "users": summary.users, "titles": summary.titles, "days": args.days,
        "events": summary.events, "sessions": summary.sessions, "seconds": round(wall, 2),
        "events_per_s": round(summary.events / wall),
        "peak_rss_gib": round(peak_kb / 2**20, 2), "rss_at_start_gib": round(rss_before / 2**30, 2),
        "lake_mib": round(lake_bytes / 2**20, 1),
        "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                   f"{platform.machine()}, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    from _report import Report
    rep = Report("bench_sim", "Synthetic world: reelrec simulate", argv, quick=args.quick)
    rep.value(f"events/s (wall), {args.users:,} users x {args.titles:,} titles x {args.days} days",
              result["events_per_s"], "events/s")
    rep.value("events written", summary.events, "events")
    rep.value("wall time", result["seconds"], "s")
    rep.value("peak RSS (interpreter and libraries included)", result["peak_rss_gib"], "GiB")
    rep.value("lake on disk", result["lake_mib"], "MiB")
    rep.note("No baseline: the simulator is the only writer of its world.")
    rep.write(args.json)
    print(f"| {args.users:,} x {args.titles:,} x {args.days} | {summary.users:,} "
          f"| {summary.events:,} | {wall:.1f} s | {result['events_per_s']:,} "
          f"| {result['peak_rss_gib']} GiB | {result['lake_mib']} MiB |", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
