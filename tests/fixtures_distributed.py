"""Helpers for the distributed-mode tests: the tiny world served from a real Redis, real
``reelrec worker`` processes on a real Kafka-protocol broker (tansu), and event streams whose
right outcome is known.

Used by tests/test_distributed.py, tests/test_speed_crash.py and tests/test_speed_group.py.
The trained model of the session's ``tiny_world`` is reused read-only: pages are precomputed
into a private Redis database per test, and the aggregator writes a private lake
(``REELREC_LAKE_URL``), so no test changes what another one reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

from reelrec.batch.precompute import precompute
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.storage.cache import open_cache
from reelrec.storage.state import open_state

SRC = str(Path(__file__).resolve().parents[1] / "src")


def redis_world(tiny_world: Settings, redis_server: str, db: int) -> Settings:
    """The tiny world's settings with cache and state on Redis database ``db`` (emptied), every
    page precomputed there and the version published."""
    url = f"{redis_server}/{db}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.close()
    s = tiny_world.model_copy(update={"cache_url": url, "state_url": url})
    with open_cache(url) as cache:
        precompute(s, cache)
    return s


def kafka_url(server: str, name: str, partitions: int = 3) -> str:
    return (f"kafka://{server}?topic={name}-{uuid.uuid4().hex[:8]}&partitions={partitions}"
            "&session_timeout_ms=2000&timeout_s=10")


def reelrec(*args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``python -m reelrec.cli ARGS`` with this checkout's sources; INFO logs go to ``log``."""
    full = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "REELREC_LOG_LEVEL": "INFO", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "reelrec.cli", *args], env=full,
                            stdout=open(log.with_suffix(".out"), "ab"), stderr=open(log, "ab"))


def speed_worker(s: Settings, bus_url: str, log: Path, group: str = "speed") -> subprocess.Popen:
    return reelrec("worker", "speed", "--bus", bus_url, "--cache", s.cache_url, "--state",
                   s.state_url, "--data", str(s.data_dir), "--group", group, "--max-batch", "200",
                   "--progress-every-s", "0.5", log=log)


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM and wait: the worker finishes its batch, commits and leaves its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def wait_for(pred, deadline_s: float, what: str, *procs: subprocess.Popen, every: float = 0.1):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a worker exited with {p.returncode} "
                                     f"while waiting for {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


def titles(s: Settings) -> list[dict]:
    return Catalog.load(s.data_dir).table.to_pylist()


def watch(user: str, title: dict, ts: float) -> list[dict]:
    """play_start, progress to 95 %, complete: a finished title (a strong positive)."""
    runtime_s = (title["runtime_min"] or title["episode_runtime_min"] or 45) * 60
    base = {"user_id": user, "title_id": title["title_id"], "device": "tv"}
    return [dict(base, event_id=uuid.uuid4().hex, type="play_start", ts=ts),
            dict(base, event_id=uuid.uuid4().hex, type="progress", ts=ts + 60,
                 position_s=runtime_s * 0.95, watched_s=runtime_s * 0.95),
            dict(base, event_id=uuid.uuid4().hex, type="complete", ts=ts + 61)]


class Stream:
    """A stream of events over ``users`` whose right effect on the online state is known:
    every user gets watches (logged, counted as plays) and impressions, some of them explore
    impressions (bandit trials) followed by a play of the shown title (a bandit success)."""

    def __init__(self, users: list[str], catalog: list[dict], per_user: int = 2, seed: int = 0):
        import random
        rnd = random.Random(seed)
        now = time.time() - 3600
        self.events: list[dict] = []
        for k in range(per_user):
            for i, u in enumerate(users):
                t = catalog[rnd.randrange(len(catalog))]
                ts = now + k * 300 + i * 0.01
                explore = (i + k) % 3 == 0
                self.events.append({"event_id": uuid.uuid4().hex, "user_id": u,
                                    "title_id": t["title_id"], "type": "impression", "ts": ts,
                                    "device": "tv", "shelf_id": "top", "position": 3,
                                    "slot_kind": "explore" if explore else "exploit"})
                self.events += watch(u, t, ts + 1)
        self.events.sort(key=lambda e: e["ts"])
        self.logged = Counter(e["user_id"] for e in self.events if e["type"] != "impression")
        self.plays = sum(e["type"] == "play_start" for e in self.events)
        self.trials = sum(e.get("slot_kind") == "explore" for e in self.events)
        # the events that carry a seen marker once applied: plays and explore impressions
        self.counted = [e["event_id"] for e in self.events
                        if e["type"] == "play_start" or e.get("slot_kind") == "explore"]
        self.users = users

    def batches(self, size: int) -> list[list[dict]]:
        return [self.events[i:i + size] for i in range(0, len(self.events), size)]


def applied(s: Settings, stream: Stream) -> dict:
    """What the online state holds for ``stream``: the counted events marked applied, each
    user's online log (length and distinct event ids), total plays counted, bandit trials and
    successes; ``done`` once every event shows as applied (all marked, every log complete)."""
    import json

    from reelrec.speed.layer import LOG_FIELD
    with open_state(s.state_url) as st:
        marked = sum(st.seen_check(stream.counted))
        fields = st.fields_many(stream.users)
        logs = {u: json.loads(f.get(LOG_FIELD) or "[]") for u, f in fields.items()}
        plays = sum(v for _, v in st.top("plays:GLOBAL", 10_000, at=time.time(),
                                         window_s=2 * 86400))
    r = redis.Redis.from_url(s.state_url)
    bandit = r.hgetall("rr:s:b")
    r.close()
    global_arms = {k.decode(): float(v) for k, v in bandit.items() if k.startswith(b"GLOBAL|")}
    log_len = {u: len(v) for u, v in logs.items()}
    return {
        "marked": marked,
        "done": marked == len(stream.counted) and all(
            log_len[u] >= n for u, n in stream.logged.items()),
        "log_len": log_len,
        "log_distinct": {u: len({r["event_id"] for r in v}) for u, v in logs.items()},
        "plays": plays,
        "trials": sum(v for k, v in global_arms.items() if k.endswith("\tb")),
        "successes": sum(v for k, v in global_arms.items() if k.endswith("\ta")),
    }
