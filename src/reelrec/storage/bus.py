"""The event bus: the API publishes events, the aggregator and the speed layer consume them.

Place in DESIGN.md: ``POST /v1/events`` -> bus (key = user_id) -> aggregator (lake) and speed
layer (user state, pages). Contract:

* ``publish`` returns only once the events are durable (Kafka: acks=all from every in-sync
  replica, idempotent producer), so the API's 202 means "will not be lost".
* One topic, keyed by ``user_id``: one user's events land in one partition and stay in order.
* Consumers in a group share the partitions; each polls a batch, processes it, then ``commit``s
  it. Delivery is at-least-once: messages not committed when a consumer goes away are delivered
  again to the group's next consumer, so every consumer is idempotent on ``event_id``
  (``OnlineState.seen``, the lake's dedupe).
* A message that fails validation downstream goes to the dead-letter topic with the reason, and
  is committed like any other, so one bad event never blocks a partition.

Backends: ``memory://`` (in process; groups, offsets and commits behave as Kafka's do) and
``kafka://host:port`` (confluent-kafka, ``bus_kafka``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import threading
import time
import zlib
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

from reelrec.errors import Conflict, FieldError, InvalidInput
from reelrec.log import get_logger
from reelrec.storage._url import option, parse_url, unknown_options

log = get_logger(__name__)

DEFAULT_TOPIC = "reelrec.events"


def dead_letter_topic_of(topic: str) -> str:
    return f"{topic}.dead-letter"


@dataclasses.dataclass(frozen=True)
class Message:
    """One consumed message. ``offset`` is its position in ``partition`` of ``topic``."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    timestamp_ms: int | None = None

    def json(self) -> Any:
        """The value decoded as JSON; ``InvalidInput`` (field ``value``) when it is not JSON."""
        try:
            return json.loads(self.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"not JSON: {exc}", field="value") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode_events(events: Sequence[Mapping | bytes], keys: Sequence[str] | None,
                  key_field: str = "user_id") -> list[tuple[str, bytes]]:
    """(key, value) per event: dicts become compact JSON keyed by ``key_field`` unless keys are
    given; bytes need keys. Errors name the event's index."""
    if isinstance(events, (bytes, str, Mapping)):
        raise InvalidInput("must be a list of events", field="events")
    if keys is not None and len(keys) != len(events):
        raise InvalidInput(f"has {len(keys)} keys for {len(events)} events", field="keys")
    out: list[tuple[str, bytes]] = []
    errors: list[FieldError] = []
    for i, e in enumerate(events):
        key = None if keys is None else keys[i]
        if isinstance(e, Mapping):
            if key is None:
                key = e.get(key_field)
            try:
                value = json.dumps(e, separators=(",", ":"), default=_json_default).encode()
            except (TypeError, ValueError) as exc:
                errors.append(FieldError("event", f"cannot be encoded as JSON: {exc}", index=i))
                continue
        elif isinstance(e, (bytes, bytearray, memoryview)):
            value = bytes(e)
        else:
            errors.append(FieldError("event", f"must be a dict or bytes, got {type(e).__name__}", index=i))
            continue
        if key is None or key == "":
            errors.append(FieldError(key_field if keys is None else "keys", "is required as the key", index=i))
            continue
        out.append((str(key), value))
    if errors:
        raise InvalidInput(errors)
    return out


def offsets_to_commit(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the next offset to read, i.e. one past the last message given."""
    nxt: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        nxt[tp] = max(nxt.get(tp, 0), m.offset + 1)
    return nxt


class Consumer(ABC):
    """One member of a consumer group on one topic: ``poll`` a batch, process it, ``commit`` it."""

    group: str
    topic: str

    @abstractmethod
    def poll(self, max_messages: int = 500, timeout: float = 1.0) -> list[Message]:
        """Up to ``max_messages`` messages from this member's partitions, in order within each.

        Waits at most ``timeout`` seconds for the first one, then returns what is ready.
        """

    @abstractmethod
    def commit(self, messages: Sequence[Message]) -> None:
        """Record that ``messages`` are processed: the group resumes after them.

        Synchronous; ``Conflict`` when a partition was reassigned meanwhile (its messages will
        be redelivered to its new owner), ``Unavailable`` when the broker cannot be reached.
        """

    @abstractmethod
    def assignment(self) -> list[int]:
        """Partitions this member owns now (empty until it has joined the group)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group. Uncommitted messages go to the group's next consumer."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EventBus(ABC):
    topic: str
    dead_letter_topic: str
    partitions: int

    @abstractmethod
    def publish(self, events: Sequence[Mapping | bytes], *, keys: Sequence[str] | None = None,
                topic: str | None = None, headers: Mapping[str, str] | None = None) -> int:
        """Append events (dicts as JSON, keyed by ``user_id``; bytes with ``keys``) and return
        their count once durable. ``InvalidInput`` names each bad event by index (and nothing is
        published); ``Unavailable`` when the bus cannot make them durable."""

    @abstractmethod
    def consumer(self, group: str, *, topic: str | None = None) -> Consumer:
        """Join ``group`` on ``topic`` (default: the events topic). A new group starts at the
        earliest message; a known group resumes after its committed offsets."""

    def dead_letter(self, messages: Sequence[Message], reason: str | Sequence[str]) -> int:
        """Send messages that failed validation to the dead-letter topic, with the reason and
        where they came from in headers. Returns once durable. The caller still commits them."""
        reasons = [reason] * len(messages) if isinstance(reason, str) else list(reason)
        if len(reasons) != len(messages):
            raise InvalidInput(f"has {len(reasons)} reasons for {len(messages)} messages", field="reason")
        n = 0
        for m, r in zip(messages, reasons):
            n += self.publish([m.value], keys=[m.key or "-"], topic=self.dead_letter_topic, headers={
                "reason": r, "source_topic": m.topic, "source_partition": str(m.partition),
                "source_offset": str(m.offset)})
        log.warning("dead-lettered", messages=n, topic=self.dead_letter_topic)
        return n

    @abstractmethod
    def ping(self) -> None:
        """Raise ``Unavailable`` unless the bus answers."""

    def close(self) -> None:
        """Release producer connections (consumers close on their own)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the in-process bus ------------------------------------------------------------------------
class _Partition:
    """One partition's log. ``base`` is the offset of ``msgs[0]``: committed history is trimmed."""

    __slots__ = ("base", "msgs")

    def __init__(self):
        self.base = 0
        self.msgs: list[Message] = []

    @property
    def end(self) -> int:
        return self.base + len(self.msgs)

    def read(self, pos: int, n: int) -> list[Message]:
        start = max(pos, self.base) - self.base  # below the trimmed history: earliest retained
        return self.msgs[start:start + n]


class _Group:
    def __init__(self):
        self.committed: dict[tuple[str, int], int] = {}
        self.members: dict[str, list[MemoryConsumer]] = collections.defaultdict(list)  # by topic
        self.generation = 0


class MemoryBus(EventBus):
    """Partitioned append-only logs in this process, with Kafka's group semantics:

    a group's members on a topic split its partitions round-robin in join order; joining or
    leaving starts a new generation, and a member's newly assigned partitions start from the
    group's committed offsets, so messages nobody committed are delivered again. Messages every
    group of a topic has committed are dropped (as Kafka's retention would), so a long-running
    embedded server does not grow without bound; a group that appears later starts at the
    earliest message kept. ``retention`` caps the messages kept per partition whether or not
    they were committed (Kafka's size-based retention): a bus that nobody consumes, such as the
    embedded API's before a speed layer runs, stays bounded; a consumer that falls behind the
    cap skips ahead to the earliest message kept.
    """

    _TRIM_EVERY = 1024  # trim a partition once this many committed messages are behind everyone

    def __init__(self, *, topic: str = DEFAULT_TOPIC, partitions: int = 4,
                 retention: int = 250_000):
        self.topic, self.partitions, self.retention = topic, partitions, retention
        self.dead_letter_topic = dead_letter_topic_of(topic)
        self._logs: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = collections.defaultdict(_Group)
        self._cond = threading.Condition()

    def _log(self, topic: str) -> list[_Partition]:
        if topic not in self._logs:
            n = self.partitions if topic == self.topic else 1
            self._logs[topic] = [_Partition() for _ in range(n)]
        return self._logs[topic]

    def _trim(self, topic: str, partition: int) -> None:
        groups = [g for g in self._groups.values()
                  if g.members.get(topic) or any(t == topic for t, _ in g.committed)]
        part = self._log(topic)[partition]
        low = min(g.committed.get((topic, partition), 0) for g in groups)
        if low - part.base >= self._TRIM_EVERY:
            del part.msgs[:low - part.base]
            part.base = low

    def retained(self, topic: str | None = None) -> int:
        """Messages held for ``topic`` (default: the events topic)."""
        with self._cond:
            return sum(len(p.msgs) for p in self._log(topic or self.topic))

    def publish(self, events, *, keys=None, topic=None, headers=None):
        topic = topic or self.topic
        encoded = encode_events(events, keys)
        hdrs = dict(headers or {})
        now = int(time.time() * 1000)
        with self._cond:
            log_ = self._log(topic)
            for key, value in encoded:
                idx = zlib.crc32(key.encode()) % len(log_)
                log_[idx].msgs.append(Message(topic, idx, log_[idx].end, key, value, hdrs, now))
            for part in log_:
                over = len(part.msgs) - self.retention
                if over >= self._TRIM_EVERY:  # drop in chunks: one list shift per 1,024 messages
                    del part.msgs[:over]
                    part.base += over
            self._cond.notify_all()
        return len(encoded)

    def consumer(self, group, *, topic=None):
        if not isinstance(group, str) or not group:
            raise InvalidInput("must be a non-empty string", field="group")
        c = MemoryConsumer(self, group, topic or self.topic)
        with self._cond:
            self._log(c.topic)
            g = self._groups[group]
            g.members[c.topic].append(c)
            g.generation += 1
            self._cond.notify_all()
        return c

    def ping(self):
        return None


class MemoryConsumer(Consumer):
    def __init__(self, bus: MemoryBus, group: str, topic: str):
        self.bus, self.group, self.topic = bus, group, topic
        self._generation = -1
        self._positions: dict[int, int] = {}
        self._closed = False

    def _rebalance(self, g: _Group) -> None:
        if self._generation == g.generation:
            return
        members = g.members[self.topic]
        me = members.index(self)
        n_parts = len(self.bus._log(self.topic))
        mine = [p for p in range(n_parts) if p % len(members) == me]
        # Kept partitions keep their position; new ones start where the group committed.
        self._positions = {p: self._positions[p] if p in self._positions
                           else g.committed.get((self.topic, p), 0) for p in mine}
        self._generation = g.generation

    def poll(self, max_messages=500, timeout=1.0):
        if self._closed:
            raise Conflict("consumer is closed")
        deadline = time.monotonic() + max(timeout, 0.0)
        with self.bus._cond:
            while True:
                self._rebalance(self.bus._groups[self.group])
                log_ = self.bus._log(self.topic)
                out: list[Message] = []
                # A fair share per partition first, then fill up: one partition's backlog never
                # starves the others.
                share = max(1, max_messages // max(len(self._positions), 1))
                for quota in (share, max_messages):
                    for p, pos in self._positions.items():
                        take = log_[p].read(pos, min(quota, max_messages - len(out)))
                        out.extend(take)
                        if take:
                            self._positions[p] = take[-1].offset + 1
                    if len(out) >= max_messages:
                        break
                left = deadline - time.monotonic()
                if out or left <= 0:
                    return out
                self.bus._cond.wait(left)

    def commit(self, messages):
        with self.bus._cond:
            g = self.bus._groups[self.group]
            self._rebalance(g)
            for (topic, p), off in offsets_to_commit(messages).items():
                if topic != self.topic or p not in self._positions:
                    raise Conflict(f"partition {p} of {topic} is not assigned to this consumer")
            for (topic, p), off in offsets_to_commit(messages).items():
                g.committed[(topic, p)] = off
                self.bus._trim(topic, p)

    def assignment(self):
        with self.bus._cond:
            self._rebalance(self.bus._groups[self.group])
            return sorted(self._positions)

    def close(self):
        if self._closed:
            return
        self._closed = True
        with self.bus._cond:
            g = self.bus._groups[self.group]
            g.members[self.topic].remove(self)
            g.generation += 1
            self.bus._cond.notify_all()


_NAMED: dict[str, MemoryBus] = {}
_NAMED_LOCK = threading.Lock()
_OPTIONS = {"topic", "partitions", "session_timeout_ms", "timeout_s", "replication", "retention"}


def open_bus(url: str = "memory://") -> EventBus:
    """Open the event bus named by ``url``.

    * ``memory://`` - a new in-process bus; ``memory://NAME`` - the process's bus of that name,
      shared by every opener (the API and the workers of ``reelrec serve``).
    * ``kafka://host:port[,host:port]`` - Kafka through confluent-kafka. Options: ``timeout_s``
      (30: how long publish waits to be durable), ``session_timeout_ms`` (10000),
      ``replication`` (1, for topics it creates); any option with a dot is passed to librdkafka
      (``security.protocol=SSL``).

    Both take ``topic`` (``reelrec.events``; the dead-letter topic is ``<topic>.dead-letter``)
    and ``partitions`` (memory 4, Kafka 6; used when the topic is created); ``memory://`` also
    takes ``retention`` (messages kept per partition, 250000).
    Raises ``InvalidInput`` for an unknown scheme or bad option; opening does not connect.
    """
    p = parse_url(url, _OPTIONS, role="bus")
    topic = p.options.get("topic", DEFAULT_TOPIC)
    if not topic or any(c in topic for c in " /\\"):
        raise InvalidInput(f"not a valid topic name: {topic!r}", field="bus_url.topic")
    pos = dict(check=lambda x: x > 0, rule="> 0", role="bus")
    if p.scheme == "memory":
        unknown_options({**p.options, **p.driver_options}, {"topic", "partitions", "retention"},
                        role="bus")
        parts = option(p.options, "partitions", int, 4, **pos)
        retention = option(p.options, "retention", int, 250_000, **pos)
        name = (p.netloc + p.path).strip("/")
        if not name:
            return MemoryBus(topic=topic, partitions=parts, retention=retention)
        with _NAMED_LOCK:
            bus = _NAMED.get(name)
            if bus is None:
                bus = _NAMED[name] = MemoryBus(topic=topic, partitions=parts, retention=retention)
            return bus
    if p.scheme == "kafka":
        from reelrec.storage.bus_kafka import KafkaBus

        extra = {k: v for k, v in p.driver_options.items() if "." in k}
        unknown_options({**p.options, **{k: v for k, v in p.driver_options.items() if "." not in k}},
                        _OPTIONS, role="bus")
        if not p.netloc:
            raise InvalidInput("needs host:port, e.g. kafka://localhost:9092", field="bus_url")
        return KafkaBus(
            p.netloc, topic=topic,
            partitions=option(p.options, "partitions", int, 6, **pos),
            replication=option(p.options, "replication", int, 1, **pos),
            session_timeout_ms=option(p.options, "session_timeout_ms", int, 10_000, **pos),
            timeout_s=option(p.options, "timeout_s", float, 30.0, **pos),
            extra=extra,
        )
    raise InvalidInput(f"unknown scheme {p.scheme!r}; use memory:// or kafka://", field="bus_url")
