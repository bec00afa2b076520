"""Benchmark: ``reelrec precompute`` on one process (engine local) against Ray (engine ray).

    python benchmarks/bench_precompute.py --data DIR --workers 2 --repeats 3
    python benchmarks/bench_precompute.py --users 20000 --titles 5000 --days 7 --workers 2
    python benchmarks/bench_precompute.py --quick      # tiny world, 1 repeat: CI smoke test

By default the world is issue 4's: 20,000 users, 100,000 titles, one simulated day (seed 3),
trained with one ALS setting (``--no-tune``'s 128-wide vectors), where the bar is 1,000 users
per CPU-second on one core, end to end. ``--json PATH`` writes the result for ``make bench``
(benchmarks/_report.py): per repeat, the local engine's users per CPU-second end to end (model
load, lake scan, profiles, pages, cache writes: the process's CPU time) and for the pages alone,
and both engines' users per second of wall time, the local engine being the baseline.

``--data`` names a trained world (``reelrec simulate`` + ``reelrec train``); without it a world
is simulated and trained into a temporary directory first. Local Ray is started once (its
start-up is timed and printed, not counted in the runs), then the two engines run in turns,
``--repeats`` times each, into fresh memory caches (the Ray workers send their pages back to the
driver, which writes them). Every run prints users/s end to end (model load, lake scan, profiles,
composition, cache writes) and for the compose phase alone (first shard to last page written),
which is the part the workers share; and the 1-minute load average, since the machine is shared.
The pages of the two engines are compared byte for byte on the first repeat.

``--stages`` measures instead where one core's time goes, per user, on a trained world:

    python benchmarks/bench_precompute.py --stages --data DIR --stage-users 2048 --repeats 3 \
        --baseline-rev 26e1f6f --baseline-users 256

For the first ``--stage-users`` users with history and as many without, in batches of
256 as ``compose_shard`` runs them: recall (every source and the merge), the ranker's features,
LightGBM's predict, the ranked candidates handed to composition, composition (personal and
cold-start pages), encoding and the page checks, and the cache write; then ``reelrec
precompute`` end to end over every user (model load, lake scan, profiles, shared shelves, pages,
cache writes). Every figure is CPU time of this process (``time.process_time``), one thread
(BLAS/OpenMP pinned to 1), the median of ``--repeats``; the 1-minute load average is printed
since the machine is shared. ``--baseline-rev`` runs the same stage measurement with the source
tree of that git revision in a child process (``git archive``), on ``--baseline-users`` users
(the old path can be slow), and compares the encoded pages of the users both measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import psutil  # noqa: E402

STAGES = ("recall", "features", "predict", "to candidates", "compose personal", "compose cold start",
          "encode + checks", "cache write")
NOW = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)


def _world(args) -> Path:
    from reelrec.batch.pipeline import PipelineConfig, als_choice
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
    train(s, PipelineConfig(**als_choice(1)))  # one ALS setting, 128-wide vectors: as earlier runs
    print(f"trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return data


def stage_times(data: Path, users: int, pages_out: Path | None = None) -> dict:
    """CPU seconds per stage for ``users`` users with history and ``users`` without (see the
    module docstring); written with public calls only, so an older source tree can run it too."""
    import numpy as np

    from reelrec.batch.precompute import PrecomputeReport, page_checks, plan, user_rng
    from reelrec.compose.bandit import ThompsonBandit
    from reelrec.config import load_settings
    from reelrec.storage.cache import open_cache, page_key

    p = plan(load_settings(data_dir=data))
    model, pipe = p.model, p.model.pipeline
    hist, cold = p.with_history[:users], p.without[:users]
    rows = np.asarray([model.user_row[u] for u in hist], np.int64)
    t = dict.fromkeys(STAGES, 0.0)
    bandit = ThompsonBandit(model.features.cluster_names)
    cache = open_cache("memory://")
    blobs: dict[str, bytes] = {}
    counts = PrecomputeReport(model.version)

    def clock(name, c0):
        c1 = time.process_time()
        t[name] += c1 - c0
        return c1

    batch = 256
    for lo in range(0, len(hist), batch):
        state = pipe.users.take(rows[lo: lo + batch])
        c = time.process_time()
        cands, dense = pipe.candidates(state)
        c = clock("recall", c)
        x = pipe.features(state, cands, dense)
        c = clock("features", c)
        b, n = cands.cols.shape
        pipe.ranker.predict(x.reshape(b * n, -1), num_threads=1)
        c = clock("predict", c)
        # the whole of candidates -> ranker -> composition's input, as compose_shard calls it
        # (recall, features and predict above are its parts, timed apart)
        ranked = model.candidates_for_state(state)
        c = clock("to candidates", c)
        pages = []
        for u, c_u in zip(hist[lo: lo + batch], ranked):
            pages.append((u, model.compose(p.profiles.get(u), c_u, bandit=bandit, rng=user_rng(0, u), now=NOW)))
        c = clock("compose personal", c)
        items = {}
        for u, page in pages:
            items[page_key(u)] = model.encode(page)
            page_checks(model, page, p.profiles.get(u), counts)
        c = clock("encode + checks", c)
        cache.put(items, version=model.version)
        clock("cache write", c)
        blobs.update(items)
    import reelrec.batch.precompute as pre
    shared = getattr(pre, "shared_cold_page", None)  # absent from older trees
    memo: dict = {}
    for lo in range(0, len(cold), batch):
        c = time.process_time()
        # users without anything of their own share a segment's pages, already encoded (their
        # encoding is timed with composition); the others are composed and encoded one by one
        blobs_c = {u: shared(model, p.profiles.get(u), 0, bandit, NOW, memo) if shared else None
                   for u in cold[lo: lo + batch]}
        pages = [(u, model.compose(p.profiles.get(u), None, bandit=bandit, rng=user_rng(0, u), now=NOW))
                 for u in cold[lo: lo + batch] if blobs_c[u] is None]
        c = clock("compose cold start", c)
        items = {page_key(u): model.encode(page) for u, page in pages}
        items.update({page_key(u): b for u, b in blobs_c.items() if b is not None})
        c = clock("encode + checks", c)
        cache.put(items, version=model.version)
        clock("cache write", c)
        blobs.update(items)
    if pages_out is not None:
        pages_out.write_text(json.dumps({k: v.hex() for k, v in blobs.items()}))
    return {"seconds": t, "personal": len(hist), "cold_start": len(cold)}


def _stage_report(times: list[dict]) -> dict:
    """Median ms per user of each stage over repeats (personal stages per personal user, cold
    start per cold-start user), and users per CPU-second for each kind of page."""
    n_p, n_c = times[0]["personal"], times[0]["cold_start"]
    out = {}
    for name in STAGES:
        per = n_c if name == "compose cold start" else n_p
        if name in ("encode + checks", "cache write"):
            per = n_p + n_c
        out[name] = statistics.median(r["seconds"][name] for r in times) / max(per, 1) * 1e3
    # "to candidates" is the whole candidates_for_state call; recall, features and predict are
    # its parts (timed apart), so a personal page costs it + compose + encode + write
    personal_ms = (out["to candidates"] + out["compose personal"] + out["encode + checks"]
                   + out["cache write"])
    cold_ms = out["compose cold start"] + out["encode + checks"] + out["cache write"]
    out["personal page, all stages"] = personal_ms
    out["cold-start page, all stages"] = cold_ms
    return out


def _baseline(rev: str, data: Path, users: int, pages_out: Path) -> dict:
    """The stage measurement with the source tree of git revision ``rev`` (child process)."""
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="reelrec-bench-baseline-"))
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": str(tmp / "src")}
    out = tmp / "stages.json"
    subprocess.run([sys.executable, __file__, "--stages-child", "--data", str(data), "--stage-users", str(users),
                    "--json-out", str(out), "--pages-out", str(pages_out)], check=True, env=env)
    return json.loads(out.read_text())


def stages_main(args) -> dict:
    from reelrec.batch.precompute import precompute
    from reelrec.config import load_settings
    from reelrec.storage.cache import open_cache

    data = args.data or _world(args)
    load0 = os.getloadavg()[0]
    times = []
    tmp = Path(tempfile.mkdtemp(prefix="reelrec-bench-stages-"))
    for i in range(args.repeats):
        times.append(stage_times(data, args.stage_users, tmp / "pages-new.json" if i == 0 else None))
        print(f"stages repeat {i + 1}: {json.dumps({k: round(v, 2) for k, v in times[-1]['seconds'].items()})}",
              file=sys.stderr)
    new = _stage_report(times)
    ends = []
    s = load_settings(data_dir=data)
    for i in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        rep = precompute(s, open_cache("memory://"), now=NOW)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        ends.append({"users": rep.users, "personal": rep.personal, "cold_start": rep.cold_start,
                     "cpu_seconds": cpu, "wall_seconds": wall, "users_per_cpu_s": rep.users / cpu,
                     "load_1min": os.getloadavg()[0]})
        print(f"end to end repeat {i + 1}: {rep.users:,} users, {cpu:.1f} CPU-s, {wall:.1f} s wall = "
              f"{rep.users / cpu:,.0f} users/CPU-s; load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "data": str(data), "users_per_kind": args.stage_users, "repeats": args.repeats,
        "load_1min_start": load0,
        "ms_per_user": {k: round(v, 3) for k, v in new.items()},
        "end_to_end": {"users": ends[0]["users"], "personal": ends[0]["personal"],
                       "cold_start": ends[0]["cold_start"],
                       "users_per_cpu_s_median": round(statistics.median(e["users_per_cpu_s"] for e in ends), 1),
                       "cpu_seconds_median": round(statistics.median(e["cpu_seconds"] for e in ends), 2),
                       "runs": ends},
    }
    if args.baseline_rev:
        print(f"baseline: revision {args.baseline_rev} on {args.baseline_users} users per kind", file=sys.stderr)
        base = _stage_report([_baseline(args.baseline_rev, data, args.baseline_users, tmp / "pages-old.json")])
        old_pages = json.loads((tmp / "pages-old.json").read_text())
        new_pages = json.loads((tmp / "pages-new.json").read_text())
        both = [k for k in old_pages if k in new_pages]
        result["baseline"] = {"rev": args.baseline_rev, "users_per_kind": args.baseline_users,
                              "ms_per_user": {k: round(v, 3) for k, v in base.items()},
                              "pages_compared": len(both),
                              "pages_identical": sum(old_pages[k] == new_pages[k] for k in both)}
    result["load_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    print("\n| stage | " + (f"baseline ({args.baseline_rev}) ms/user | " if args.baseline_rev else "")
          + "ms/user | users/CPU-s |")
    print("|---|" + ("---:|" if args.baseline_rev else "") + "---:|---:|")
    for k, v in new.items():
        b = f"{result['baseline']['ms_per_user'][k]:.3f} | " if args.baseline_rev else ""
        print(f"| {k} | {b}{v:.3f} | {1e3 / v if v else float('inf'):,.0f} |")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="a trained world (default: build one)")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--titles", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny world (300 x 150 x 3), one repeat")
    ap.add_argument("--json", type=Path, default=None, help="write the result for make bench here")
    ap.add_argument("--stages", action="store_true", help="CPU time per stage and end to end (local engine)")
    ap.add_argument("--baseline-rev", default=None, help="with --stages: also measure this git revision")
    ap.add_argument("--stage-users", type=int, default=2048,
                    help="with --stages: users with history (and as many without) to time")
    ap.add_argument("--baseline-users", type=int, default=256)
    ap.add_argument("--stages-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pages-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stages_child:
        r = stage_times(args.data, args.stage_users, args.pages_out)
        args.json_out.write_text(json.dumps(r))
        return r
    if args.stages:
        return stages_main(args)
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
                 "users_per_cpu_s": rep.users / max(rep.cpu_seconds, 1e-9),
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
    if args.json:
        from reelrec.domain.catalog import Catalog
        _write_report(args, runs, result, len(Catalog.load(s.data_dir)))
    if not same:
        print("the two engines wrote different pages", file=sys.stderr)
        sys.exit(1)
    return result


BAR_USERS_PER_CPU_S = 1_000  # issue 4: users per second per core, end to end, 100 K titles


def _write_report(args, runs: dict, result: dict, n_titles: int) -> None:
    """The ``make bench`` rows (benchmarks/_report.py) of an engine comparison on a world of
    ``n_titles`` titles."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import Report
    loc, ray = runs["local"], runs["ray"]
    n = loc[0]["users"]
    rep = Report("bench_precompute", f"Precompute: {n:,} users, {n_titles:,} titles; local engine and Ray",
                 quick=args.quick)
    rep.runs("precompute end to end, local engine: users per CPU-second (one core)",
             [r["users_per_cpu_s"] for r in loc], "users/CPU-s")
    rep.runs("the pages alone (compose_shard), local engine: users per CPU-second",
             [r["users_per_shard_cpu_s"] for r in loc], "users/CPU-s")
    rep.runs("baseline: precompute end to end, one process (engine local): users/s",
             [r["users_per_s"] for r in loc], "users/s", baseline=True)
    rep.runs(f"precompute end to end, Ray with {args.workers} workers: users/s",
             [r["users_per_s"] for r in ray], "users/s")
    rep.value("users (pages written per run)", n, "users")
    med = statistics.median(r["users_per_cpu_s"] for r in loc)
    verdict = ("met" if med >= BAR_USERS_PER_CPU_S else "NOT met") if n_titles >= 100_000 else \
        f"no verdict, the bar is for a 100,000-title catalog and this one has {n_titles:,}"
    rep.note(f"end to end on one core: {med:,.0f} users per CPU-second (median of {len(loc)}; "
             f"bar >= {BAR_USERS_PER_CPU_S:,}): {verdict}.")
    rep.note(f"Ray against one process, wall time: x{result['speedup_end_to_end']} end to end, "
             f"x{result['speedup_compose']} for the compose phase; the two engines' pages are "
             f"{'byte-identical' if result['pages_identical'] else 'DIFFERENT'}. Local Ray started in "
             f"{result['ray_start_seconds']} s (not counted).")
    rep.detail("result", result)
    rep.write(args.json)


if __name__ == "__main__":
    main()
