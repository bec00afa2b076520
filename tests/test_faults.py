"""Faults end to end through the API: the homepage cache's Redis hangs, dies and comes back.

A real redis-server of this test's own (so it can be paused with SIGSTOP and killed with SIGKILL
without touching the session's shared server) holds the tiny world's precomputed pages. While it
cannot answer, ``GET /v1/users/{id}/homepage`` must answer 200 with the non-personal fallback
page (the region's top 10 and trending, ``mode: fallback``), never a 5xx; when it answers again,
the same app, without a restart, serves the personal page again: the Redis client reconnects.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from fastapi.testclient import TestClient

from fixtures_servers import _wait_port, free_port

# a fallback page: top picks built from the region's top 10 and trending, then shared shelves only
SHARED_SHELVES = ("trending-", "top-10", "new-releases")


class RedisProcess:
    """A redis-server on a fixed port and folder, so it can be restarted with its data."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="reelrec-faults-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # no automatic snapshots; the test SAVEs before killing, as a persistent Redis would hold it
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")
        import redis
        r = redis.Redis(port=self.port)
        end = time.monotonic() + 10
        while True:  # listening is not loaded: wait until the dump is read
            try:
                r.ping()
                break
            except redis.exceptions.BusyLoadingError:
                assert time.monotonic() < end
                time.sleep(0.05)
        r.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a paused process dies only once resumed
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_proc():
    r = RedisProcess()
    r.start()
    yield r
    r.close()


@pytest.fixture(scope="module")
def app_on_redis(tiny_world, redis_proc):
    """The API of the tiny world with its homepage cache on ``redis_proc``, pages precomputed."""
    from reelrec.batch.precompute import precompute
    from reelrec.serve.api import create_app
    from reelrec.storage.cache import open_cache
    settings = tiny_world.model_copy(update={"cache_url": redis_proc.url})
    with open_cache(redis_proc.url) as c:
        rep = precompute(settings, c)
    assert rep.personal > 0
    app = create_app(settings, speed_layer=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def heavy_user(tiny_world):
    from reelrec.homepage import ServingModel
    m = ServingModel.load(tiny_world)
    return str(m.pipeline.user_ids[int(m.pipeline.users.positives.getnnz(axis=1).argmax())])


def homepage(client, user: str) -> tuple[int, dict]:
    r = client.get(f"/v1/users/{user}/homepage")
    return r.status_code, r.json()


def assert_fallback(status: int, doc: dict, user: str) -> None:
    assert status == 200, doc
    assert doc["mode"] == "fallback" and doc["user_id"] == user
    ids = [s["id"] for s in doc["shelves"]]
    assert ids[0] == "top-picks" and len(doc["shelves"][0]["items"]) > 0
    assert any(i.startswith("trending-") for i in ids) and "top-10" in ids
    # nothing personal: no continue-watching, because-you-watched, genre or kind rows
    assert all(i.startswith(SHARED_SHELVES) for i in ids[1:]), ids
    assert all(i["reason"] for i in doc["shelves"][0]["items"])


def cache_errors(client) -> float:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("reelrec_cache_reads_total") and 'result="error"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_redis_paused_then_killed_gives_fallback_pages_then_personal_ones_without_restart(
        app_on_redis, redis_proc, heavy_user):
    client = app_on_redis
    status, doc = homepage(client, heavy_user)
    assert status == 200 and doc["mode"] == "personal"
    personal_ids = [s["id"] for s in doc["shelves"]]
    errors_before = cache_errors(client)

    # 1. Redis hangs (SIGSTOP): the read times out, the page is the fallback, not a 5xx
    redis_proc.signal(signal.SIGSTOP)
    try:
        status, doc = homepage(client, heavy_user)  # waits out the client's socket timeout
        assert_fallback(status, doc, heavy_user)
    finally:
        redis_proc.signal(signal.SIGCONT)
    assert cache_errors(client) > errors_before

    # resumed: the same client gets the personal page again
    status, doc = homepage(client, heavy_user)
    assert status == 200 and doc["mode"] == "personal"

    # 2. Redis dies (SIGKILL) after persisting its data: every read falls back, none fails
    import redis
    r = redis.Redis(port=redis_proc.port)
    r.save()
    r.close()
    redis_proc.kill()
    for user in (heavy_user, "someone-new", heavy_user):
        status, doc = homepage(client, user)
        assert_fallback(status, doc, user)
    assert client.get("/healthz").status_code == 200

    # 3. Redis comes back on the same port with its data: personal pages, no restart of the app
    redis_proc.start()
    deadline = time.monotonic() + 20
    while True:
        status, doc = homepage(client, heavy_user)
        assert status == 200
        if doc["mode"] == "personal" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert doc["mode"] == "personal", "the API did not reconnect to Redis"
    assert [s["id"] for s in doc["shelves"]] == personal_ids
    status, doc = homepage(client, "someone-new")
    assert status == 200 and doc["mode"] == "cold_start"


def test_a_batch_with_impressions_and_plays_is_applied_not_retried_forever(tiny_world):
    """An impression (exposure) beside a play in one micro-batch once made every recompute fail
    (the exposure table's schema differed from the base history's), so the speed worker retried
    the same batch for ever. The batch must apply and rewrite the page."""
    import uuid

    from reelrec.domain.catalog import Catalog
    from reelrec.domain.users import load_users
    from reelrec.speed.layer import SpeedLayer
    from reelrec.storage.cache import open_cache, page_key
    from reelrec.storage.state import open_state
    titles = Catalog.load(tiny_world.data_dir).ids
    user = load_users(tiny_world.data_dir).column("user_id")[0].as_py()
    now = time.time()
    events = [{"event_id": uuid.uuid4().hex, "user_id": user, "title_id": titles[1], "type": "impression",
               "ts": now - 30, "shelf_id": "top-picks", "position": 0, "slot_kind": "exploit"},
              {"event_id": uuid.uuid4().hex, "user_id": user, "title_id": titles[2], "type": "play_start",
               "ts": now - 20, "device": "tv"}]
    with open_cache("memory://") as cache, open_state("memory://") as state:
        with open_cache(tiny_world.cache) as src:
            version = src.current_version()
        cache.put({"s:probe": b"x"}, version=version)
        cache.publish(version)
        res = SpeedLayer(tiny_world, cache, state).apply(events)
        assert res.recomputed == [user]
        assert cache.get_many([page_key(user)]).values[0] is not None
        assert state.exposure(user) == {titles[1]}
