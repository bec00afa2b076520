"""Parallel speed workers: two ``reelrec worker speed`` processes in one Kafka consumer group on
a four-partition topic (tansu) share the partitions; stopping one mid-stream hands its partitions
to the other, and every event is applied exactly once (online logs, play counters and bandit
evidence all exact).
"""

from __future__ import annotations

import re
import threading
import time

from fixtures_distributed import (Stream, applied, kafka_url, redis_world, speed_worker, stop,
                                  titles, wait_for)
from reelrec.storage.bus import open_bus

PARTITIONS = 4


def assignments(log_text: str) -> list[set[int]]:
    """Every assignment a worker logged, in order."""
    return [{int(p) for p in m.split(",") if p.strip()}
            for m in re.findall(r"kafka partitions assigned group=\S+ partitions=\[([\d, ]*)\]",
                                log_text)]


def applied_events(out_text: str) -> int:
    m = re.search(r"speed worker stopped: ([\d,]+) events", out_text)
    assert m, out_text
    return int(m.group(1).replace(",", ""))


def test_two_workers_share_partitions_and_hand_over_without_loss_or_doubles(
        tiny_world, redis_server, kafka_server, tmp_path):
    s = redis_world(tiny_world, redis_server, db=3)
    bus_url = kafka_url(kafka_server, "speedgroup", partitions=PARTITIONS)
    users = [f"u{i:06d}" for i in range(0, 80)]
    stream = Stream(users, titles(s), per_user=3, seed=13)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    bus = open_bus(bus_url)
    bus.publish(stream.events[:4], keys=[e["user_id"] for e in stream.events[:4]])  # the topic
    a = speed_worker(s, bus_url, logs[0])
    b = speed_worker(s, bus_url, logs[1])

    def shared() -> bool:
        got = [assignments(p.read_text()) for p in logs]
        if not all(got):
            return False
        last = [g[-1] for g in got]
        return bool(last[0]) and bool(last[1]) and not last[0] & last[1] \
            and last[0] | last[1] == set(range(PARTITIONS))

    def produce():
        rest = stream.events[4:]
        for i in range(0, len(rest), 40):
            batch = rest[i:i + 40]
            bus.publish(batch, keys=[e["user_id"] for e in batch])
            time.sleep(0.1)

    producer = threading.Thread(target=produce)
    try:
        wait_for(shared, 90, "both workers to hold partitions", a, b, every=0.2)
        first = [assignments(p.read_text())[-1] for p in logs]
        producer.start()
        wait_for(lambda: applied(s, stream)["marked"] >= len(stream.counted) // 3, 60,
                 "a third of the stream", a, b)
        assert stop(a) == 0  # a graceful stop: finish the batch, commit, leave the group
        wait_for(lambda: assignments(logs[1].read_text())[-1] == set(range(PARTITIONS)), 60,
                 "the other worker to take every partition", b)
        producer.join(60)
        wait_for(lambda: applied(s, stream)["done"], 90,
                 "the stream applied", b)
        assert stop(b) == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
        producer.join(5)
        bus.close()

    assert first[0] and first[1]  # both worked on a share of the partitions
    done = [applied_events(p.with_suffix(".out").read_text()) for p in logs]
    assert done[0] > 0 and done[1] > 0
    got = applied(s, stream)
    assert got["log_len"] == dict(stream.logged) == got["log_distinct"]
    assert got["plays"] == stream.plays
    assert got["trials"] == stream.trials == got["successes"]
