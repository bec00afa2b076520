"""The event-bus contract, run against every backend: memory and a real Kafka-protocol broker
(tansu, one per test session). Each test uses its own topic and groups."""

from __future__ import annotations

import time
import uuid

import pytest

from fixtures_servers import free_port
from reelrec.errors import InvalidInput, Unavailable
from reelrec.storage.bus import Message, open_bus

PARTITIONS = 4


@pytest.fixture(params=["memory", "kafka"])
def bus(request):
    topic = f"ev-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        b = open_bus(f"memory://?topic={topic}&partitions={PARTITIONS}")
    else:
        server = request.getfixturevalue("kafka_server")
        # A short session timeout: tansu waits about half of it for members to join a group.
        b = open_bus(f"kafka://{server}?topic={topic}&partitions={PARTITIONS}"
                     "&session_timeout_ms=2000&timeout_s=10")
    yield b
    b.close()


def events(n: int, users: int) -> list[dict]:
    return [{"event_id": f"e{i}", "user_id": f"u{i % users}", "seq": i, "type": "play"}
            for i in range(n)]


def drain(consumer, want: int, deadline_s: float = 20.0, commit: bool = False) -> list[Message]:
    got: list[Message] = []
    end = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < end:
        batch = consumer.poll(max_messages=want - len(got), timeout=0.3)
        got.extend(batch)
        if commit and batch:
            consumer.commit(batch)
    return got


def seqs(messages: list[Message]) -> list[int]:
    return [m.json()["seq"] for m in messages]


def test_one_users_events_stay_in_order(bus):
    bus.ping()
    sent = events(120, users=7)
    assert bus.publish(sent[:50]) == 50
    assert bus.publish(sent[50:]) == 70
    with bus.consumer(f"g-{uuid.uuid4().hex[:6]}") as c:
        got = drain(c, 120)
    assert sorted(seqs(got)) == list(range(120))
    by_user: dict[str, list[int]] = {}
    for m in got:
        assert m.key == m.json()["user_id"]
        by_user.setdefault(m.key, []).append(m.json()["seq"])
    assert len(by_user) == 7
    for user, s in by_user.items():
        assert s == sorted(s), user
    # one user, one partition
    parts: dict[str, set[int]] = {}
    for m in got:
        parts.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in parts.values())


def test_members_of_a_group_share_the_partitions(bus):
    group = f"g-{uuid.uuid4().hex[:6]}"
    c1, c2 = bus.consumer(group), bus.consumer(group)
    end = time.monotonic() + 20
    while time.monotonic() < end:  # let both join before anything is published
        c1.poll(timeout=0.1), c2.poll(timeout=0.1)
        a1, a2 = c1.assignment(), c2.assignment()
        if a1 and a2 and sorted(a1 + a2) == list(range(PARTITIONS)):
            break
    assert sorted(c1.assignment() + c2.assignment()) == list(range(PARTITIONS))
    bus.publish(events(200, users=40))
    got1: list[Message] = []
    got2: list[Message] = []
    end = time.monotonic() + 20
    while len(got1) + len(got2) < 200 and time.monotonic() < end:
        for c, got in ((c1, got1), (c2, got2)):
            batch = c.poll(max_messages=50, timeout=0.1)
            got.extend(batch)
            if batch:
                c.commit(batch)
    assert got1 and got2
    assert {m.partition for m in got1} <= set(c1.assignment())
    assert {m.partition for m in got2} <= set(c2.assignment())
    assert sorted(seqs(got1) + seqs(got2)) == list(range(200))  # each exactly once
    c1.close(), c2.close()


def test_a_restarted_group_resumes_after_its_commit(bus):
    group = f"g-{uuid.uuid4().hex[:6]}"
    bus.publish(events(60, users=9))
    first = bus.consumer(group)
    got = drain(first, 25)
    processed = got[:25]
    first.commit(processed)
    first.close()
    second = bus.consumer(group)
    rest = drain(second, 35)
    extra = second.poll(timeout=0.5)
    second.close()
    assert extra == []
    assert sorted(seqs(processed) + seqs(rest)) == list(range(60))


def test_uncommitted_messages_are_redelivered_to_the_next_consumer(bus):
    group = f"g-{uuid.uuid4().hex[:6]}"
    bus.publish(events(30, users=5))
    crashed = bus.consumer(group)
    assert len(drain(crashed, 30)) == 30
    crashed.close()  # processed, never committed
    again = bus.consumer(group)
    redelivered = drain(again, 30, commit=True)
    again.close()
    assert sorted(seqs(redelivered)) == list(range(30))
    # ...and once committed, a third consumer gets nothing.
    third = bus.consumer(group)
    assert third.poll(timeout=1.5 if "Kafka" in type(bus).__name__ else 0.1) == []
    third.close()


def test_other_groups_read_independently(bus):
    bus.publish(events(10, users=3))
    a, b = bus.consumer("lake-writer-" + uuid.uuid4().hex[:4]), bus.consumer("speed-" + uuid.uuid4().hex[:4])
    got_a = drain(a, 10, commit=True)
    got_b = drain(b, 10)
    a.close(), b.close()
    assert sorted(seqs(got_a)) == sorted(seqs(got_b)) == list(range(10))


def test_invalid_events_go_to_the_dead_letter_topic(bus):
    group = f"g-{uuid.uuid4().hex[:6]}"
    bus.publish(events(3, users=2))
    bus.publish([b"{not json", b'{"user_id": "u1"}'], keys=["u9", "u1"])
    c = bus.consumer(group)
    got = drain(c, 5)
    good, bad, reasons = [], [], []
    for m in got:
        try:
            e = m.json()
            if "event_id" not in e:
                raise InvalidInput("is required", field="event_id")
            good.append(m)
        except InvalidInput as exc:
            bad.append(m)
            reasons.append(str(exc))
    assert len(bad) == 2 and bus.dead_letter(bad, reasons) == 2
    c.commit(got)
    c.close()
    dlq = bus.consumer(f"dlq-{group}", topic=bus.dead_letter_topic)
    dead = drain(dlq, 2)
    dlq.close()
    assert sorted(m.value for m in dead) == sorted(m.value for m in bad)
    for m in dead:
        assert m.topic == bus.dead_letter_topic
        assert m.headers["source_topic"] == bus.topic
        src = next(b for b in bad if b.value == m.value)
        assert m.headers["source_offset"] == str(src.offset)
        assert m.headers["source_partition"] == str(src.partition)
    assert {m.headers["reason"] for m in dead} == set(reasons)
    assert any("event_id" in r for r in reasons) and any("not JSON" in r for r in reasons)


def test_bad_events_are_refused_by_index_and_nothing_is_published(bus):
    with pytest.raises(InvalidInput) as e:
        bus.publish([{"user_id": "u1", "event_id": "a"}, {"event_id": "b"}, 42])
    assert [(f.field, f.index) for f in e.value.errors] == [("user_id", 1), ("event", 2)]
    with pytest.raises(InvalidInput) as e:
        bus.publish([b"raw"])
    assert e.value.errors[0].field == "user_id"
    with bus.consumer("g-" + uuid.uuid4().hex[:6]) as c:
        assert c.poll(timeout=1.5 if "Kafka" in type(bus).__name__ else 0.1) == []


def test_named_memory_bus_is_shared_within_the_process():
    name = "shared-" + uuid.uuid4().hex[:6]
    api, worker = open_bus(f"memory://{name}"), open_bus(f"memory://{name}")
    api.publish([{"user_id": "u1", "seq": 0}])
    with worker.consumer("g") as c:
        assert [m.json()["seq"] for m in c.poll(timeout=0.1)] == [0]
    assert open_bus("memory://") is not open_bus("memory://")


def test_unreachable_kafka_is_unavailable():
    b = open_bus(f"kafka://127.0.0.1:{free_port()}?timeout_s=1")
    t = time.monotonic()
    with pytest.raises(Unavailable):
        b.publish([{"user_id": "u1"}])
    with pytest.raises(Unavailable):
        b.consumer("g")
    with pytest.raises(Unavailable):
        b.ping()
    assert time.monotonic() - t < 15


@pytest.mark.parametrize("url, field", [
    ("amqp://x", "bus_url"), ("memory://?partitions=0", "bus_url.partitions"),
    ("memory://?colour=1", "bus_url"), ("kafka://h:9092?nope=1", "bus_url"),
    ("kafka://", "bus_url"), ("memory://?topic=a b", "bus_url.topic"),
])
def test_bad_urls_are_invalid_input(url, field):
    with pytest.raises(InvalidInput) as e:
        open_bus(url)
    assert e.value.errors[0].field == field


def test_memory_bus_serves_every_partition_and_drops_what_every_group_committed():
    bus = open_bus("memory://?partitions=4")
    bus.publish(events(10_000, users=40))
    a, b = bus.consumer("lake"), bus.consumer("speed", topic=bus.topic)
    first = a.poll(max_messages=8)
    assert len(first) == 8 and {m.partition for m in first} == {0, 1, 2, 3}
    a.commit(first)
    while batch := a.poll(max_messages=1_000, timeout=0):
        a.commit(batch)
    assert bus.retained() == 10_000  # "speed" has committed nothing yet
    while batch := b.poll(max_messages=1_000, timeout=0):
        b.commit(batch)
    assert bus.retained() < 10_000 - 4 * 1024
    a.close(), b.close()
    bus.publish(events(5, users=5))
    with bus.consumer("lake") as again:  # resumes after its commit, in the trimmed log
        assert len(drain(again, 5)) == 5 and again.poll(timeout=0) == []
