"""Behavioural lake benchmark: append throughput, scan throughput, compaction.

Appends ``--events`` synthetic events (every event type, realistic payload columns, random
128-bit hex event ids) in batches of ``--batch``, the way the aggregator flushes the bus into the
lake; time moves forward through ``--days`` days, so most batches land in one date partition and
a few straddle midnight. Only the ``append`` calls are timed (the batches are generated between
them). A baseline in the same process writes the same batches with a bare
``pyarrow.parquet.write_table`` (no schema check, no dedupe, no partitioning, no rename), so
the lake's own overhead is visible.

Then: a full scan (all columns, deduplicated), a scan of the columns the batch layer reads, a
one-day time-range scan, a DuckDB ``count(*)`` over the glob; then ``compact`` and the same scans
again, with the file count before and after.

    python benchmarks/bench_lake.py            # 10 M events in batches of 100 K
    python benchmarks/bench_lake.py --quick    # 200 K events in batches of 20 K (CI smoke test)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reelrec.domain.events import EVENT_SCHEMA  # noqa: E402
from reelrec.storage.lake import open_lake  # noqa: E402

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
TYPES = np.array(["impression", "play_start", "progress", "complete", "thumbs_up", "thumbs_down",
                  "watchlist_add", "search", "skip_intro"], dtype=object)
TYPE_P = np.array([0.55, 0.1, 0.2, 0.05, 0.02, 0.01, 0.03, 0.02, 0.02])
DEVICES = np.array(["tv", "mobile", "tablet", "web"], dtype=object)
REGIONS = np.array(["US", "GB", "IN", "KR", "BR", "DE"], dtype=object)
SLOTS = np.array(["exploit", "explore", "novel"], dtype=object)
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 32-character hex ids, built as bytes (no per-row Python)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    chars = np.empty((n, 32), dtype=np.uint8)
    chars[:, 0::2] = HEX[raw >> 4]
    chars[:, 1::2] = HEX[raw & 15]
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def prefixed(prefix: str, ints: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc
    return pc.binary_join_element_wise(prefix, pa.array(ints).cast(pa.string()), "")


def make_batch(rng: np.random.Generator, n: int, start_s: float, span_s: float,
               users: int = 1_000_000, titles: int = 100_000) -> pa.Table:
    """One batch of n events with timestamps in [start_s, start_s + span_s) since T0."""
    types = TYPES[rng.choice(len(TYPES), size=n, p=TYPE_P)]
    is_imp, is_prog, is_search = types == "impression", types == "progress", types == "search"
    ts_ms = (T0.timestamp() + start_s + np.sort(rng.random(n)) * span_s) * 1000
    title = np.minimum(rng.zipf(1.3, size=n), titles) - 1
    pos = rng.random(n) * 5400
    title_ids = prefixed("t", title)
    return pa.table({
        "event_id": hex_ids(rng, n),
        "user_id": prefixed("u", rng.integers(0, users, size=n)),
        "title_id": pa.array(np.where(is_search, None, title_ids.to_numpy(zero_copy_only=False)), pa.string()),
        "type": pa.array(types, pa.string()),
        "ts": pa.array(ts_ms.astype(np.int64)).cast(EVENT_SCHEMA.field("ts").type),
        "device": pa.array(DEVICES[rng.integers(0, 4, size=n)], pa.string()),
        "region": pa.array(REGIONS[rng.integers(0, 6, size=n)], pa.string()),
        "session_id": prefixed("s", rng.integers(0, users * 4, size=n)),
        "position_s": pa.array(np.where(is_prog, pos, np.nan).astype(np.float32), from_pandas=True),
        "watched_s": pa.array(np.where(is_prog, pos * 0.9, np.nan).astype(np.float32), from_pandas=True),
        "query": pa.array(np.where(is_search, "space documentaries", None), pa.string()),
        "shelf_id": pa.array(np.where(is_imp, "trending", None), pa.string()),
        "position": pa.array(np.where(is_imp, rng.integers(0, 20, size=n), 0).astype(np.int32),
                             mask=~is_imp),
        "slot_kind": pa.array(np.where(is_imp, SLOTS[rng.integers(0, 3, size=n)], None), pa.string()),
    })


def timed(fn, repeat: int = 3) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``repeat`` runs of fn(), and the rows it returned."""
    walls, cpus, rows = [], [], 0
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        rows = getattr(out, "num_rows", 0)
        del out
    return statistics.median(walls), statistics.median(cpus), rows


def scans(lake, day: dt.date, repeat: int) -> dict:
    import duckdb
    import pyarrow.dataset as ds
    start = dt.datetime.combine(day, dt.time(), UTC)
    q = f"SELECT count(*) FROM read_parquet('{lake.glob}', hive_partitioning=true)"
    runs = {
        "full": lambda: lake.scan(),
        "baseline_full": lambda: ds.dataset(lake.files(), format="parquet").to_table(),
        "batch_cols": lambda: lake.scan(columns=["user_id", "title_id", "type", "ts"]),
        "one_day": lambda: lake.scan(start=start, end=start + dt.timedelta(days=1)),
        "duckdb_count": lambda: duckdb.sql(q).fetchall(),
    }
    res = {"files": len(lake.files())}
    # interleaved rounds, so page-cache writeback or allocator warm-up does not land on one row
    rounds = [{key: timed(fn, 1) for key, fn in runs.items()} for _ in range(repeat)]
    for key in runs:
        res[key] = statistics.median(r[key][0] for r in rounds)
        res[key + "_cpu"] = statistics.median(r[key][1] for r in rounds)
        res[key + "_rows"] = rounds[-1][key][2]
        res[key + "_runs"] = [r[key][0] for r in rounds]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="runs per scan (median reported)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the lake (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="200 K events in batches of 20 K")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--compare-lake", type=Path, default=None, metavar="LAKE_PY",
                    help="another version of storage/lake.py (e.g. main's) run on the same batches "
                         "in the same process")
    args = ap.parse_args()
    if args.quick:
        args.events, args.batch, args.repeat = 200_000, 20_000, 1

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-lake-"))
    lake_dir, base_dir = root / "lake", root / "baseline"
    for d in (lake_dir, base_dir):
        shutil.rmtree(d, ignore_errors=True)
    base_dir.mkdir(parents=True)
    lake = open_lake(lake_dir)
    other = None
    if args.compare_lake:
        import importlib.util
        spec = importlib.util.spec_from_file_location("compare_lake", args.compare_lake)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["compare_lake"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        shutil.rmtree(root / "compare", ignore_errors=True)
        other = mod.open_lake(root / "compare")
    other_times, other_cpu = [], 0.0
    rng = np.random.default_rng(args.seed)
    nbatches = -(-args.events // args.batch)
    span = args.days * 86400 / nbatches
    progress(f"appending {args.events:,} events in {nbatches} batches of {args.batch:,} "
             f"over {args.days} days into {lake_dir}  (cpus: {os.cpu_count()})")
    lake_times, base_times, lake_cpu, base_cpu, total = [], [], 0.0, 0.0, 0
    load_before = os.getloadavg()[0]
    for b in range(nbatches):
        n = min(args.batch, args.events - total)
        batch = make_batch(rng, n, b * span, span)
        t, c = time.perf_counter(), time.process_time()
        lake.append(batch)
        lake_times.append(time.perf_counter() - t)
        lake_cpu += time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        pq.write_table(batch, base_dir / f"{b}.parquet", compression="zstd")
        base_times.append(time.perf_counter() - t)
        base_cpu += time.process_time() - c
        if other is not None:
            t, c = time.perf_counter(), time.process_time()
            other.append(batch)
            other_times.append(time.perf_counter() - t)
            other_cpu += time.process_time() - c
        total += n
        if (b + 1) % max(1, nbatches // 10) == 0 or b + 1 == nbatches:
            progress(f"  {total:>12,} events  lake {total / sum(lake_times):>12,.0f} ev/s  "
                     f"bare write_table {total / sum(base_times):>12,.0f} ev/s")
    append = {
        "events": total, "batches": nbatches, "batch": args.batch,
        "lake_events_per_s": total / sum(lake_times),
        "lake_events_per_cpu_s": total / lake_cpu,
        "baseline_events_per_cpu_s": total / base_cpu,
        "load_avg_1m": [load_before, os.getloadavg()[0]],
        "lake_median_batch_ms": statistics.median(lake_times) * 1e3,
        "baseline_events_per_s": total / sum(base_times),
        "baseline_median_batch_ms": statistics.median(base_times) * 1e3,
        "lake_bytes": sum(f.stat().st_size for f in lake_dir.rglob("*.parquet")),
    }
    if other is not None:
        append.update(other_events_per_s=total / sum(other_times),
                      other_events_per_cpu_s=total / other_cpu,
                      other_median_batch_ms=statistics.median(other_times) * 1e3)
    day = (T0 + dt.timedelta(days=args.days // 2)).date()
    progress("scanning before compaction")
    before = scans(lake, day, args.repeat)
    progress("compacting")
    t = time.perf_counter()
    rep = lake.compact()
    compact_s = time.perf_counter() - t
    progress("scanning after compaction")
    after = scans(lake, day, args.repeat)
    result = {"append": append, "before": before, "compact_s": compact_s,
              "compact": rep.__dict__, "after": after}
    if other is not None:
        progress(f"scanning with {args.compare_lake}")
        o_before = timed(lambda: other.scan(), args.repeat)
        other.compact()
        o_after = timed(lambda: other.scan(), args.repeat)
        result["other_scan"] = {"before": o_before, "after": o_after}
    print_markdown(result, args)
    if args.json:
        report(result, lake_times, base_times, args).write(args.json)
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


def report(r: dict, lake_times: list[float], base_times: list[float], args):
    """The figures as a ``make bench`` result file (benchmarks/_report.py)."""
    from _report import Report
    a, b, c = r["append"], r["before"], r["after"]
    rep = Report("bench_lake", "Behavioural lake: append, scan, compaction", quick=args.quick)
    rep.value(f"lake.append, {a['events']:,} events in batches of {a['batch']:,}: events/s (wall)",
              a["lake_events_per_s"], "events/s")
    rep.value("baseline: bare pq.write_table of the same batches, events/s (wall)",
              a["baseline_events_per_s"], "events/s", baseline=True)
    rep.value("lake.append, events per CPU-second", a["lake_events_per_cpu_s"], "events/CPU-s")
    rep.value("baseline: bare pq.write_table, events per CPU-second",
              a["baseline_events_per_cpu_s"], "events/CPU-s", baseline=True)
    rep.samples("lake.append, ms per batch", [t * 1e3 for t in lake_times], "ms")
    rep.samples("baseline: bare pq.write_table, ms per batch", [t * 1e3 for t in base_times], "ms",
                baseline=True)
    for when, d in (("before compaction", b), ("after compaction", c)):
        rep.value(f"files {when}", d["files"], "files")
        for key, label in (("full", f"lake.scan(), all columns ({d['full_rows']:,} rows)"),
                           ("baseline_full", "baseline: bare pyarrow dataset, same files, no dedupe"),
                           ("batch_cols", "lake.scan(user_id, title_id, type, ts)"),
                           ("one_day", f"lake.scan(one day) ({d['one_day_rows']:,} rows)"),
                           ("duckdb_count", "DuckDB count(*) over the glob")):
            rep.runs(f"{label}, {when}", d[key + "_runs"], "s wall")
    rep.value("compaction", r["compact_s"], "s")
    rep.detail("raw", r)
    return rep


def print_markdown(r: dict, args) -> None:
    a, b, c = r["append"], r["before"], r["after"]
    print(f"\nappend: {a['events']:,} events, {a['batches']} batches of {a['batch']:,}, {args.days} days")
    print(f"(1-minute load average {a['load_avg_1m'][0]:.1f} before, {a['load_avg_1m'][1]:.1f} after "
          f"appending, on {os.cpu_count()} cpus)")
    print("| write path | events/s (wall) | events per CPU-second | median ms per batch |")
    print("|---|---:|---:|---:|")
    print(f"| lake.append | {a['lake_events_per_s']:,.0f} | {a['lake_events_per_cpu_s']:,.0f} | "
          f"{a['lake_median_batch_ms']:.1f} |")
    if "other_events_per_s" in a:
        print(f"| {args.compare_lake} append | {a['other_events_per_s']:,.0f} | "
              f"{a['other_events_per_cpu_s']:,.0f} | {a['other_median_batch_ms']:.1f} |")
    print(f"| bare pq.write_table (baseline) | {a['baseline_events_per_s']:,.0f} | "
          f"{a['baseline_events_per_cpu_s']:,.0f} | {a['baseline_median_batch_ms']:.1f} |")
    print(f"\nlake size {a['lake_bytes'] / 1e6:,.0f} MB; compaction {r['compact_s']:.1f} s "
          f"({r['compact']['partitions']} partitions)")
    print("| scan: median wall s (CPU s) | before compaction | after compaction |")
    print("|---|---:|---:|")
    print(f"| files | {b['files']:,} | {c['files']:,} |")
    for key, label in (("full", f"lake.scan(), all columns ({b['full_rows']:,} rows)"),
                       ("baseline_full", "baseline: bare pyarrow dataset, same files, no dedupe"),
                       ("batch_cols", "lake.scan(user_id, title_id, type, ts)"),
                       ("one_day", f"lake.scan(one day), all columns ({b['one_day_rows']:,} rows)"),
                       ("duckdb_count", "DuckDB count(*) over the glob")):
        print(f"| {label} | {b[key]:.2f} ({b[key + '_cpu']:.2f}) | {c[key]:.2f} ({c[key + '_cpu']:.2f}) |")
    if "other_scan" in r:
        ob, oa = r["other_scan"]["before"], r["other_scan"]["after"]
        print(f"| {args.compare_lake} scan(), all columns | {ob[0]:.2f} ({ob[1]:.2f}) | "
              f"{oa[0]:.2f} ({oa[1]:.2f}) |")
    print(f"| lake.scan() events/s, wall | {b['full_rows'] / b['full']:,.0f} | "
          f"{c['full_rows'] / c['full']:,.0f} |")
    print(f"| lake.scan() events per CPU-second | {b['full_rows'] / b['full_cpu']:,.0f} | "
          f"{c['full_rows'] / c['full_cpu']:,.0f} |")


if __name__ == "__main__":
    main()
