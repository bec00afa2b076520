"""Benchmark: ALS seconds per iteration on one node, at several matrix sizes, to extrapolate.

    python benchmarks/bench_als.py --sizes 50000x5000 200000x20000 500000x50000
    python benchmarks/bench_als.py --quick       # one tiny size: CI smoke test

Training stays on one node (``implicit``'s multithreaded CPU ALS, ``reelrec.recall.als.fit_als``);
docs/scaling.md uses these figures to say up to what size that holds. Each matrix is synthetic:
``--per-user`` positives per user on average (Poisson), titles drawn from a Zipf-like popularity
(exponent ``--zipf``), weights 1-5. Reports the median seconds of ``--iterations`` iterations at
``--factors`` factors, with the matrix's nnz, the process's peak RSS and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import psutil
import scipy.sparse as sp


def synthetic(users: int, titles: int, per_user: float, zipf: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    n = rng.poisson(per_user, users).clip(1, titles)
    p = 1.0 / np.arange(1, titles + 1) ** zipf
    p /= p.sum()
    rows = np.repeat(np.arange(users), n)
    cols = rng.choice(titles, size=int(n.sum()), p=p)
    w = rng.integers(1, 6, len(cols)).astype(np.float32)
    m = sp.csr_matrix((w, (rows, cols)), shape=(users, titles), dtype=np.float32)
    m.sum_duplicates()
    return m


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["50000x5000", "200000x20000", "500000x50000"],
                    help="USERSxTITLES ...")
    ap.add_argument("--per-user", type=float, default=20.0)
    ap.add_argument("--zipf", type=float, default=0.9)
    ap.add_argument("--factors", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one tiny size, 2 iterations")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.iterations = ["5000x1000"], 2

    from reelrec.recall.als import ALSParams, fit_als

    out = []
    for size in args.sizes:
        users, titles = (int(x) for x in size.lower().split("x"))
        t0 = time.perf_counter()
        m = synthetic(users, titles, args.per_user, args.zipf, args.seed)
        build = time.perf_counter() - t0
        times: list[float] = []
        load = os.getloadavg()[0]
        c0, t0 = time.process_time(), time.perf_counter()
        fit_als(m, ALSParams(factors=args.factors, iterations=args.iterations),
                on_iteration=lambda it, el: times.append(el))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        r = {"users": users, "titles": titles, "nnz": int(m.nnz), "build_s": round(build, 1),
             "s_per_iteration_median": round(statistics.median(times), 2),
             "s_per_iteration_all": [round(t, 2) for t in times],
             "cpu_s_per_iteration": round(cpu / args.iterations, 2),
             "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
             "load_1min": round(load, 1)}
        out.append(r)
        print(f"{users:,} x {titles:,} (nnz {m.nnz:,}): {r['s_per_iteration_median']} s/iteration "
              f"(CPU {r['cpu_s_per_iteration']} s), load {load:.1f}, wall {wall:.1f} s", file=sys.stderr)
        del m
    result = {"machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                         f"{platform.machine()}, Python {platform.python_version()}",
              "factors": args.factors, "per_user": args.per_user, "runs": out}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
