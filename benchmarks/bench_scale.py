"""Benchmark: the batch path end to end at issue 7's size, 100,000 users x 20,000 titles (one
simulated day): simulate, train (the nightly ``--no-tune`` pipeline), precompute every user's
page into a private redis-server, then serve homepages from it, each stage in its own process
under ``/usr/bin/time -v`` (``benchmarks/scale_run.py`` does the work; docs/scaling.md runs it at
a million users).

    python benchmarks/bench_scale.py --json OUT.json     # 100 K x 20 K x 1 day, every page
    python benchmarks/bench_scale.py --quick             # 2,000 x 500 x 1 day: smoke test

Per stage: wall time, CPU time, peak RSS; the precompute's users per CPU-second and Redis bytes
per page; the serve stage's requests/s, p99 and server CPU per request at 16 and 4 connections.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--titles", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per serve run")
    ap.add_argument("--quick", action="store_true", help="scale_run's smoke size (2,000 x 500 x 1)")
    ap.add_argument("--json", type=Path, default=None, help="write the result for make bench here")
    args = ap.parse_args(argv)
    if args.quick:
        scale_run.main(["--quick"] + (["--json", str(args.json)] if args.json else []))
        return
    tmp = Path(tempfile.mkdtemp(prefix="reelrec-bench-scale-"))
    try:
        scale_run.main(["--data", str(tmp / "world"), "--users", str(args.users), "--titles", str(args.titles),
                        "--days", str(args.days), "--log-prefix", str(tmp / "scale-"),
                        "--seconds", str(args.seconds), "--repeats", "1"]
                       + (["--json", str(args.json)] if args.json else []))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the world, its model and the stage logs


if __name__ == "__main__":
    main()
