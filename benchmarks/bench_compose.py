"""Composition benchmark: pages composed per second on one core, page size in the cache, and the
latency of assembling a Page document from its cached bytes.

    PYTHONPATH=src python benchmarks/bench_compose.py            # 100 K titles, 2 000 users
    PYTHONPATH=src python benchmarks/bench_compose.py --quick    # smoke test, a few seconds

Baseline in the same process: "ranker order" = the top 20 by score after exclusions, with none
of the composition rules (what the page would be without this layer).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from reelrec.compose import ColdStartPriors, ThompsonBandit, UserProfile, build_shared_shelves, compose_page  # noqa: E402
from reelrec.compose.features import Marks  # noqa: E402
from reelrec.compose.page import Assembler, encode_page, encode_shared  # noqa: E402
from reelrec.compose.testing import random_candidates, random_features, random_profile  # noqa: E402

TODAY = dt.date(2026, 11, 1)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ranker_order(f, p, c):
    """Baseline: exclusions, then the 20 best scores."""
    p = p.validated(f)
    c = c.validated(len(f))
    m = Marks(f, p)
    m.claim(p.in_progress)
    o = np.argsort(-c.scores, kind="stable")
    t = c.titles[o]
    t = t[m.eligible(t)]
    _, first = np.unique(t, return_index=True)
    return t[np.sort(first)][:20]


def timed(fn, repeats: int) -> list[float]:
    """CPU seconds of ``fn`` per repeat (process time: the machine is shared)."""
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a small catalog and few users (CI smoke test)")
    ap.add_argument("--titles", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here (make bench)")
    args = ap.parse_args()
    if args.quick:
        args.titles, args.users, args.repeats = 5_000, 100, 1
    rng = np.random.default_rng(2026)
    say(f"building a catalog of {args.titles} titles")
    t0 = time.perf_counter()
    f = random_features(args.titles, rng, n_genres=20)
    build_s = time.perf_counter() - t0
    shared = {}
    for region in ("IN", "US", "GB", "KR", "BR"):
        shared.update(build_shared_shelves(f, region, today=TODAY))
    cold = ColdStartPriors(f)
    bandit = ThompsonBandit(f.cluster_names)
    say(f"generating {args.users} users with {args.candidates} candidates each")
    regions = ["IN", "US", "GB", "KR", "BR"]
    users = []
    for i in range(args.users):
        p = random_profile(f, rng, user_id=f"u{i}", n_history=int(rng.integers(10, 120)),
                           region=regions[i % len(regions)])
        c = random_candidates(f, rng, k=args.candidates, anchors=p.recent_positives)
        nb = {int(a): rng.choice(len(f), 40, replace=False) for a in p.recent_positives}
        users.append((p, c, nb))
    new_users = [UserProfile(f"n{i}", region=regions[i % 5], device=("mobile", "tv", "web")[i % 3],
                             hour=int(rng.integers(0, 24)), onboarding_genres=list(rng.choice(f.genre_names, 3)))
                 for i in range(max(20, args.users // 10))]

    pages = []

    def compose_all():
        pages.clear()
        r = np.random.default_rng(0)
        for p, c, nb in users:
            pages.append(compose_page(f, p, c, neighbours=nb, shared=shared, cold=cold, bandit=bandit, rng=r))

    def compose_cold():
        r = np.random.default_rng(0)
        for u in new_users:
            compose_page(f, u, None, shared=shared, cold=cold, bandit=bandit, rng=r)

    say("warm-up")
    compose_all()
    compose_cold()
    say(f"baseline: ranker order x{args.repeats}")
    base = timed(lambda: [ranker_order(f, p, c) for p, c, _ in users], args.repeats)
    say(f"composing {args.users} personal pages x{args.repeats}")
    comp = timed(compose_all, args.repeats)
    say(f"composing {len(new_users)} cold-start pages x{args.repeats}")
    cold_t = timed(compose_cold, args.repeats)
    exact = sum(p.exact for p in pages)
    say("encoding")
    t0 = time.process_time()
    blobs = [encode_page(p, f) for p in pages]
    enc_s = time.process_time() - t0
    sizes = np.asarray([len(b) for b in blobs])
    shared_blobs = {k: encode_shared(v, f) for k, v in shared.items()}
    asm = Assembler(f)
    say("assembling documents from bytes")
    for b, p in zip(blobs[:50], pages[:50]):
        asm.decode(b, p.user_id, "v1", shared_blobs)
    lat, cpu = [], []
    for b, p in zip(blobs, pages):
        t0, c0 = time.perf_counter(), time.process_time()
        asm.decode(b, p.user_id, "v1", shared_blobs)
        cpu.append(time.process_time() - c0)
        lat.append(time.perf_counter() - t0)
    lat_ms, cpu_ms = np.asarray(lat) * 1e3, np.asarray(cpu) * 1e3
    items = np.mean([sum(len(s.titles) for s in p.shelves if not s.shared) for p in pages])

    med = statistics.median
    n = len(users)
    print(f"## Composition ({'quick' if args.quick else 'full'} run)\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores\n")
    print(f"catalog {args.titles} titles, 20 genres; {n} users x {args.candidates} candidates; "
          f"catalog features built in {build_s:.2f} s\n")
    print("| measure | value |\n|---|---|")
    print(f"| baseline: ranker order (exclusions + top 20), users/s/core | {n / med(base):,.0f} |")
    print(f"| compose personal page (all shelves), users/s/core | {n / med(comp):,.0f} |")
    print(f"| compose personal page, ms/user (CPU) | {med(comp) / n * 1e3:.2f} |")
    print(f"| compose cold-start page, users/s/core | {len(new_users) / med(cold_t):,.0f} |")
    print(f"| pages that needed the exact solver | {exact} of {n} |")
    print(f"| personal-shelf items per page (mean) | {items:.0f} |")
    print(f"| encode page, us/page | {enc_s / n * 1e6:.0f} |")
    print(f"| page blob bytes: mean / p50 / max | {sizes.mean():.0f} / {np.median(sizes):.0f} / {sizes.max()} |")
    print(f"| assemble document from bytes, wall ms: p50 / p99 | {np.percentile(lat_ms, 50):.3f} / "
          f"{np.percentile(lat_ms, 99):.3f} |")
    print(f"| assemble document from bytes, CPU ms: p50 / p99 | {np.percentile(cpu_ms, 50):.3f} / "
          f"{np.percentile(cpu_ms, 99):.3f} |")
    print(f"| repeats (median reported) | {args.repeats} |")
    if args.json:
        from _report import Report
        rep = Report("bench_compose", f"Composition: {args.titles:,} titles, {n:,} users x "
                     f"{args.candidates} candidates, one core", quick=args.quick)
        rep.runs("baseline: ranker order (exclusions + top 20), users/s/core",
                 [n / t for t in base], "users/CPU-s", baseline=True)
        rep.runs("compose personal page (all shelves), users/s/core", [n / t for t in comp],
                 "users/CPU-s")
        rep.runs("compose cold-start page, users/s/core", [len(new_users) / t for t in cold_t],
                 "users/CPU-s")
        rep.value("encode page", enc_s / n * 1e6, "us/page")
        rep.samples("page blob size", sizes, "bytes")
        rep.samples("assemble document from bytes, wall", lat_ms, "ms")
        rep.samples("assemble document from bytes, CPU", cpu_ms, "ms")
        rep.value("pages that needed the exact solver", exact, "pages")
        rep.write(args.json)


if __name__ == "__main__":
    main()
