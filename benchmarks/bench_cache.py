"""Benchmark: reading a homepage from the cache, and what a page and a user vector cost in Redis.

A homepage read is one ``get_many`` of the user's page plus the shared shelves it shows
(DESIGN.md: "a request is a cache read (one MGET)"). This measures, in process:

* p50 / p99 of that read for ``memory://``, ``redis://`` (a private redis-server started here
  unless ``--redis URL`` is given) and ``redis+cluster://`` (a private three-node Redis Cluster
  started here unless ``--redis-cluster URL`` is given), each next to a baseline in the same
  process: a bare redis-py ``MGET`` (on the cluster, redis-py's ``mget_nonatomic``) of the same
  keys, with no version pointer;
* Redis ``MEMORY USAGE`` of one user page (a ~250-byte value under its versioned key) and of one
  128 x float32 user vector, and the ``INFO memory`` growth per user, which also counts the
  key's hash-table entry and its TTL.

    python benchmarks/bench_cache.py            # 100,000 users, 20,000 reads per backend
    python benchmarks/bench_cache.py --quick    # 2,000 users, 2,000 reads (CI smoke test)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # fixtures_servers.local_redis_cluster

from reelrec.storage.cache import open_cache, page_key, shelf_key  # noqa: E402
from reelrec.storage.state import open_state  # noqa: E402

VERSION = "v20261101T0300"
REGIONS = ["US", "GB", "IN", "BR", "DE", "JP"]


def say(*a):
    print(*a, flush=True)


def start_redis() -> tuple[str, subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; pass --redis URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", proc, workdir


def make_pages(n_users: int, rng: np.random.Generator, page_bytes: int) -> dict[str, bytes]:
    items = {page_key(str(100_000 + u)): rng.bytes(page_bytes) for u in range(n_users)}
    for r in REGIONS:  # shared shelves: 20-40 title ids with reasons, ~1 KB each
        items[shelf_key(f"trending:{r}")] = rng.bytes(1024)
        items[shelf_key(f"top10:{r}")] = rng.bytes(512)
    items[shelf_key("top10:global")] = rng.bytes(512)
    items[shelf_key("new")] = rng.bytes(1024)
    return items


def read_keys(n_users: int, n_reads: int, rng: np.random.Generator) -> list[list[str]]:
    users = rng.integers(0, n_users, n_reads)
    regions = rng.integers(0, len(REGIONS), n_reads)
    return [[page_key(str(100_000 + int(u))), shelf_key(f"trending:{REGIONS[r]}"),
             shelf_key(f"top10:{REGIONS[r]}"), shelf_key("top10:global"), shelf_key("new")]
            for u, r in zip(users, regions)]


def timed(fn, reads: list[list[str]]) -> np.ndarray:
    for keys in reads[:200]:  # warm connections and caches
        fn(keys)
    out = np.empty(len(reads))
    clock = time.perf_counter_ns
    for i, keys in enumerate(reads):
        t = clock()
        fn(keys)
        out[i] = clock() - t
    return out / 1e6  # ms


def timed_interleaved(fns, reads: list[list[str]]) -> list[np.ndarray]:
    """Like ``timed`` for several read paths taking turns read by read, so that the load of a
    shared machine falls on each of them alike."""
    for keys in reads[:200]:
        for fn in fns:
            fn(keys)
    out = np.empty((len(fns), len(reads)))
    clock = time.perf_counter_ns
    for i, keys in enumerate(reads):
        for j, fn in enumerate(fns):
            t = clock()
            fn(keys)
            out[j, i] = clock() - t
    return list(out / 1e6)


MEASURED: list[tuple[str, np.ndarray]] = []  # every latency row, for the --json result file


def row(name: str, ms: np.ndarray) -> str:
    MEASURED.append((name, ms))
    p50, p99 = np.percentile(ms, [50, 99])
    return f"| {name} | {len(ms):,} | {p50:.3f} | {p99:.3f} | {ms.mean():.3f} |"


def bench_cluster(url: str | None, items: dict[str, bytes], reads: list[list[str]],
                  single) -> tuple[list[str], int | None, float, str]:
    """The same pages and reads on a Redis Cluster (started here unless ``url`` is given), then
    the cluster and the single node ``single`` read in turns."""
    from contextlib import nullcontext

    from redis.cluster import RedisCluster

    from fixtures_servers import local_redis_cluster

    started = local_redis_cluster(3) if url is None else nullcontext(None)
    with started as ports:
        if url is None:
            url = f"redis+cluster://127.0.0.1:{ports[0]}"
            say(f"started a three-node Redis Cluster at {url}")
        raw = RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1))
        raw.flushall(target_nodes=RedisCluster.PRIMARIES)

        def used() -> int:
            return sum(v["used_memory"] for v in
                       raw.info("memory", target_nodes=RedisCluster.PRIMARIES).values())
        base_mem = used()
        say("redis+cluster:// - writing pages (pipelined, grouped by node)")
        clu = open_cache(url)
        t = time.perf_counter()
        clu.put(items, version=VERSION)
        clu.publish(VERSION)
        dt_put = time.perf_counter() - t
        say(f"  put {len(items):,} pages in {dt_put:.2f} s ({len(items) / dt_put:,.0f}/s); reading")
        per_page_info = (used() - base_mem) / len(items)
        assert all(v is not None for v in clu.get_many(reads[0]).values)
        rows = [row("redis+cluster:// get_many (page + 4 shelves)", timed(clu.get_many, reads))]
        names = {k: clu._k(VERSION, k) for k in {k for keys in reads for k in keys}}
        rows.append(row("baseline: bare redis-py cluster mget_nonatomic, same keys",
                        timed(lambda keys: raw.mget_nonatomic([names[k] for k in keys]), reads)))
        say("redis:// and redis+cluster:// reading in turns")
        one, many = timed_interleaved([single.get_many, clu.get_many], reads)
        rows.append(row("in turns: redis:// get_many", one))
        rows.append(row("in turns: redis+cluster:// get_many", many))
        usage = clu.memory_usage(page_key("100000"))
        key = names.get(page_key("100000"), clu._k(VERSION, page_key("100000")))
        clu.close(), raw.close()
    return rows, usage, per_page_info, key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--reads", type=int, default=None)
    ap.add_argument("--page-bytes", type=int, default=250)
    ap.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    ap.add_argument("--redis-cluster", default=None,
                    help="use this redis+cluster:// URL instead of starting a three-node cluster")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (make bench)")
    a = ap.parse_args()
    n_users = a.users or (2_000 if a.quick else 100_000)
    n_reads = a.reads or (2_000 if a.quick else 20_000)
    rng = np.random.default_rng(42)
    say(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    say(f"users={n_users:,} reads={n_reads:,} page_bytes={a.page_bytes}")

    proc = workdir = None
    url = a.redis
    if url is None:
        url, proc, workdir = start_redis()
        say(f"started redis-server at {url}")
    try:
        items = make_pages(n_users, rng, a.page_bytes)
        reads = read_keys(n_users, n_reads, rng)
        rows = []

        say("memory:// - writing pages")
        mem = open_cache("memory://")
        t = time.perf_counter()
        mem.put(items, version=VERSION)
        mem.publish(VERSION)
        say(f"  put {len(items):,} pages in {time.perf_counter() - t:.2f} s; reading")
        assert all(v is not None for v in mem.get_many(reads[0]).values)
        rows.append(row("memory:// get_many (page + 4 shelves)", timed(mem.get_many, reads)))

        say("redis:// - writing pages (pipelined)")
        import redis

        raw = redis.Redis.from_url(url)
        raw.flushdb()
        base_mem = raw.info("memory")["used_memory"]
        red = open_cache(url)
        t = time.perf_counter()
        red.put(items, version=VERSION)
        red.publish(VERSION)
        dt_put = time.perf_counter() - t
        say(f"  put {len(items):,} pages in {dt_put:.2f} s ({len(items) / dt_put:,.0f}/s); reading")
        per_user_info = (raw.info("memory")["used_memory"] - base_mem) / n_users
        assert all(v is not None for v in red.get_many(reads[0]).values)
        rows.append(row("redis:// get_many (page + 4 shelves)", timed(red.get_many, reads)))
        prefix = f"rr:c:{VERSION}:"
        rows.append(row("baseline: bare redis-py MGET, same keys",
                        timed(lambda keys: raw.mget([prefix + k for k in keys]), reads)))
        page_usage = red.memory_usage(page_key("100000"))
        full_key = prefix + page_key("100000")

        cluster_rows, cluster_usage, cluster_info, cluster_key = bench_cluster(
            a.redis_cluster, items, reads, red)
        rows += cluster_rows

        say("redis:// state - user vectors (128 x float32)")
        raw.flushdb()
        base_mem = raw.info("memory")["used_memory"]
        st = open_state(url)
        n_vec = min(n_users, 20_000)
        vecs = rng.standard_normal((n_vec, 128)).astype(np.float32)
        pipe = raw.pipeline(transaction=False)
        for i in range(n_vec):  # what set_vector writes, pipelined for the measurement
            pipe.set(f"rr:s:{{{100_000 + i}}}:v", vecs[i].tobytes())
        pipe.execute()
        np.testing.assert_array_equal(st.vectors([str(100_000)])[0], vecs[0])
        per_vec_info = (raw.info("memory")["used_memory"] - base_mem) / n_vec
        vec_usage = st.memory_usage(str(100_000), "v")
        say("")
        say("| read | reads | p50 ms | p99 ms | mean ms |")
        say("|---|---|---|---|---|")
        for r in rows:
            say(r)
        say("")
        say("| Redis memory | MEMORY USAGE (bytes) | INFO used_memory growth per user (bytes) |")
        say("|---|---|---|")
        say(f"| user page, {a.page_bytes}-byte value, key `{full_key}`, with TTL | {page_usage} "
            f"| {per_user_info:.0f} |")
        say(f"| the same page on the cluster, key `{cluster_key}` | {cluster_usage} "
            f"| {cluster_info:.0f} (sum over primaries) |")
        say(f"| user vector, 128 x float32 (512 bytes), key `rr:s:{{100000}}:v` | {vec_usage} "
            f"| {per_vec_info:.0f} |")
        red.close(), st.close(), raw.close()
        if a.json:
            from _report import Report
            rep = Report("bench_cache", "Cache and state: a homepage read as one get_many; Redis "
                         "bytes per page and vector", quick=a.quick)
            for name, ms in MEASURED:
                rep.samples(f"{name}, {n_users:,} users", ms, "ms")
            rep.value(f"Redis MEMORY USAGE, user page of {a.page_bytes} random bytes", page_usage,
                      "bytes")
            rep.value("INFO used_memory growth per user page", per_user_info, "bytes")
            rep.value("Redis MEMORY USAGE, the same page on the cluster", cluster_usage, "bytes")
            rep.value("Redis MEMORY USAGE, user vector 128 x float32 (random)", vec_usage, "bytes")
            rep.value("INFO used_memory growth per user vector", per_vec_info, "bytes")
            rep.write(a.json)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
