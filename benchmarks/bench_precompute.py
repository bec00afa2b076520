"""Benchmark: ``reelrec precompute`` on one process (engine local) against Ray (engine ray).

    python benchmarks/bench_precompute.py --data DIR --workers 2 --repeats 3
    python benchmarks/bench_precompute.py --users 20000 --titles 5000 --days 7 --workers 2
    python benchmarks/bench_precompute.py --quick      # tiny world, 1 repeat: CI smoke test

``--data`` names a trained world (``reelrec simulate`` + ``reelrec train``); without it a world
is simulated and trained into a temporary directory first. Local Ray is started once (its
start-up is timed and printed, not counted in the runs), then the two engines run in turns,
``--repeats`` times each, into fresh memory caches (the Ray workers send their pages back to the
driver, which writes them). Every run prints users/s end to end (model load, lake scan, profiles,
composition, cache writes) and for the compose phase alone (first shard to last page written),
which is the part the workers share; and the 1-minute load average, since the machine is shared.
The pages of the two engines are compared byte for byte on the first repeat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil


def _world(args) -> Path:
    from reelrec.batch.train import train
    from reelrec.config import load_settings
    from reelrec.sim.world import SimConfig, simulate
    data = Path(tempfile.mkdtemp(prefix="reelrec-bench-precompute-"))
    s = load_settings(data_dir=data)
    t0 = time.perf_counter()
    simulate(SimConfig(users=args.users, titles=args.titles, days=args.days, seed=args.seed,
                       progress=False), s)
    print(f"simulated {args.users:,} x {args.titles:,} x {args.days} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    t0 = time.perf_counter()
    train(s)
    print(f"trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return data


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="a trained world (default: build one)")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--titles", type=int, default=5_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny world (300 x 150 x 3), one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.titles, args.days, args.repeats, args.data = 300, 150, 3, 1, None

    from reelrec.batch.precompute import precompute
    from reelrec.batch.precompute_ray import connect
    from reelrec.config import load_settings
    from reelrec.storage.cache import open_cache

    data = args.data or _world(args)
    s = load_settings(data_dir=data)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    t0 = time.perf_counter()
    connect(workers=args.workers)
    ray_start = time.perf_counter() - t0
    print(f"local Ray with {args.workers} CPUs started in {ray_start:.1f} s", file=sys.stderr)

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    pages: dict[str, dict] = {}
    for i in range(args.repeats):
        for engine in ("local", "ray"):
            c = open_cache("memory://")
            load = os.getloadavg()[0]
            rep = precompute(s, c, engine=engine, workers=args.workers, now=now)
            r = {"seconds": rep.seconds, "users_per_s": rep.users_per_s,
                 "compose_seconds": rep.compose_seconds, "compose_users_per_s": rep.compose_users_per_s,
                 "prepare_seconds": rep.prepare_seconds, "driver_cpu_seconds": rep.cpu_seconds,
                 "shard_cpu_seconds": rep.shard_cpu_seconds,
                 "users_per_shard_cpu_s": rep.users / max(rep.shard_cpu_seconds, 1e-9),
                 "users": rep.users, "shards": rep.shards, "workers": rep.workers,
                 "load_1min_before": load, "load_1min_after": os.getloadavg()[0]}
            runs[engine].append(r)
            print(f"repeat {i + 1} {engine:5}: {rep.users:,} users in {rep.seconds:.1f} s = "
                  f"{rep.users_per_s:,.0f} users/s; compose {rep.compose_seconds:.1f} s = "
                  f"{rep.compose_users_per_s:,.0f} users/s; shards' CPU {rep.shard_cpu_seconds:.1f} s; "
                  f"driver CPU {rep.cpu_seconds:.1f} s; load {load:.1f}", file=sys.stderr)
            if i == 0:
                pages[engine] = {k: v for (ver, k), (v, _) in c._data.items()}
    same = pages["local"] == pages["ray"]

    def med(engine, key):
        return statistics.median(r[key] for r in runs[engine])

    result = {
        "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                   f"{platform.machine()}, Python {platform.python_version()}",
        "data": str(data), "workers": args.workers, "repeats": args.repeats,
        "ray_start_seconds": round(ray_start, 1), "pages_identical": same,
        "median": {e: {k: round(med(e, k), 2) for k in ("seconds", "users_per_s", "compose_seconds",
                                                          "compose_users_per_s", "prepare_seconds",
                                                          "driver_cpu_seconds", "shard_cpu_seconds",
                                                          "users_per_shard_cpu_s")}
                   for e in runs},
        "speedup_end_to_end": round(med("ray", "users_per_s") / med("local", "users_per_s"), 2),
        "speedup_compose": round(med("ray", "compose_users_per_s") / med("local", "compose_users_per_s"), 2),
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if not same:
        print("the two engines wrote different pages", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
