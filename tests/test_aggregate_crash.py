"""Crash tests with real processes: ``kill -9`` mid-stream, restart, and the lake holds every
acknowledged event exactly once.

* distributed: ``reelrec worker aggregate`` against a real tansu broker;
* embedded: ``reelrec serve`` on the in-process bus (the API writes the lake before its 202).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

from fixtures_servers import _wait_port, free_port
from reelrec.storage.bus import open_bus
from reelrec.storage.lake import open_lake

SRC = str(Path(__file__).resolve().parents[1] / "src")


def reelrec(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "REELREC_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "reelrec.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def event(i: int) -> dict:
    return {"event_id": f"e{i}", "user_id": f"u{i % 97}", "type": "search", "query": f"q{i}",
            "ts": "2026-01-01T00:00:00Z"}


def wait_for(pred, deadline_s: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def lake_ids(lake) -> list[str]:
    return lake.scan(columns=["event_id"]).column("event_id").to_pylist()


def test_kill_9_of_the_aggregate_worker_loses_and_doubles_nothing(kafka_server, tmp_path):
    n, per_batch = 8000, 200
    bus_url = f"kafka://{kafka_server}?topic=crash-{uuid.uuid4().hex[:8]}&partitions=3" \
              "&session_timeout_ms=2000&timeout_s=10"
    bus = open_bus(bus_url)
    lake = open_lake(tmp_path / "lake")
    log = tmp_path / "worker.log"
    cmd = ("worker", "aggregate", "--bus", bus_url, "--data", str(tmp_path), "--max-batch", "300",
           "--max-wait-s", "0.1", "--progress-every-s", "0.5")
    worker = reelrec(*cmd, log=log)

    def produce():  # acknowledged = returned from publish
        for start in range(0, n, per_batch):
            bus.publish([event(i) for i in range(start, start + per_batch)])
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(lake.files()) >= 3, 60, "the first files", worker)
        worker.send_signal(signal.SIGKILL)  # mid-stream: files written, more coming
        worker.wait(10)
        written_before = lake.count()
        assert 0 < written_before < n
        producer.join(120)
        worker = reelrec(*cmd, log=log)
        wait_for(lambda: lake.count() >= n, 90, "every event in the lake", worker)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0  # a graceful stop
    finally:
        if worker.poll() is None:
            worker.kill()
        producer.join(5)
        bus.close()
    ids = lake_ids(lake)
    assert len(ids) == n and len(set(ids)) == n
    text = log.read_text()
    assert "aggregate progress" in text and "aggregator stopped" in text


def test_kill_9_of_the_embedded_server_loses_no_acknowledged_event(tmp_path):
    n, per_batch = 6000, 200
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = ("serve", "--data", str(tmp_path), "--port", str(port))
    batches = [[event(i) for i in range(s, s + per_batch)] for s in range(0, n, per_batch)]
    acked: set[int] = set()
    attempted: set[int] = set()
    lake = open_lake(tmp_path / "lake")

    def post_all(client: httpx.Client, which: list[int], stop: threading.Event | None = None):
        for b in which:
            if stop is not None and stop.is_set():
                return
            attempted.add(b)
            try:
                r = client.post(f"http://127.0.0.1:{port}/v1/events", json=batches[b])
            except httpx.HTTPError:
                return  # the server died under this request: not acknowledged
            if r.status_code == 202:
                acked.add(b)

    server = reelrec(*cmd, log=log)
    try:
        _wait_port(port, server, "reelrec serve", deadline_s=60)
        with httpx.Client(timeout=30) as client:
            stop = threading.Event()
            sender = threading.Thread(target=post_all,
                                      args=(client, list(range(len(batches))), stop))
            sender.start()
            wait_for(lambda: len(acked) >= 5, 60, "some acknowledged batches", server)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            sender.join(30)
        assert 5 <= len(acked) < len(batches)
        ids = set(lake_ids(lake))
        for b in acked:  # every acknowledged event survived the kill
            assert {e["event_id"] for e in batches[b]} <= ids
        sent = {e["event_id"] for b in attempted for e in batches[b]}
        assert ids <= sent and len(lake_ids(lake)) == len(ids)

        # the client retries what was not acknowledged; re-sent ids are not counted twice
        server = reelrec(*cmd, log=log)
        _wait_port(port, server, "reelrec serve", deadline_s=60)
        with httpx.Client(timeout=30) as client:
            post_all(client, [b for b in range(len(batches)) if b not in acked])
            post_all(client, [0])  # and one batch sent again after its 202
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    ids = lake_ids(lake)
    assert len(acked) == len(batches)
    assert len(ids) == n and len(set(ids)) == n


def test_full_disk_under_the_worker_is_a_clear_error_and_nothing_is_committed(kafka_server,
                                                                               tmp_path):
    from confluent_kafka import Consumer, TopicPartition
    from test_aggregate import fill, tiny_filesystem

    n = 500
    topic = f"full-{uuid.uuid4().hex[:8]}"
    bus_url = f"kafka://{kafka_server}?topic={topic}&partitions=2&session_timeout_ms=2000"
    bus = open_bus(bus_url)
    bus.publish([event(i) for i in range(n)])
    log = tmp_path / "worker.log"
    with tiny_filesystem(tmp_path / "disk") as disk:
        lake = open_lake(disk / "lake")
        filler = fill(disk)
        worker = reelrec("worker", "aggregate", "--bus", bus_url, "--data", str(disk),
                         "--group", "agg", "--max-wait-s", "0.1", log=log)
        try:
            wait_for(lambda: "No space left on device" in log.read_text(), 60, "the error", worker)
            assert "lake write failed; offsets not committed" in log.read_text()
            probe = Consumer({"bootstrap.servers": kafka_server, "group.id": "agg"})
            committed = probe.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
            probe.close()
            assert all(tp.offset < 0 for tp in committed)  # nothing committed
            assert lake.files() == []
            filler.unlink()  # room again: the worker's retry gets through
            wait_for(lambda: lake.count() == n, 60, "the events after space was freed", worker)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(20) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            bus.close()
        assert lake.count() == n
