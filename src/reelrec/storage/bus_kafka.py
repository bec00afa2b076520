"""The event bus on Kafka (``kafka://host:port``), through confluent-kafka (librdkafka).

Imported only when a ``kafka://`` URL is opened. Durability and order:

* the producer runs with ``acks=all`` and ``enable.idempotence=true`` (no duplicates or
  reordering on retry within a partition) and ``publish`` flushes and checks every delivery
  report before it returns, so a returned publish is on every in-sync replica;
* keys are partitioned with ``murmur2_random``, the Java client's partitioner, so other Kafka
  clients put a user's events in the same partition;
* consumers never auto-commit: ``commit`` writes the offsets of the messages processed,
  synchronously; a new group starts from the earliest message.

Topics (the events topic and its dead-letter topic) are created on first use if missing.
"""

from __future__ import annotations

import threading
import time

from reelrec.errors import Conflict, InvalidInput, Unavailable
from reelrec.log import get_logger
from reelrec.storage.bus import Consumer, EventBus, Message, dead_letter_topic_of, encode_events, \
    offsets_to_commit

try:
    from confluent_kafka import Consumer as _KConsumer
    from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as exc:  # pragma: no cover - only without the optional dependency
    raise Unavailable("kafka:// needs confluent-kafka: pip install 'reelrec[kafka]'") from exc

log = get_logger(__name__)

_REBALANCED = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
               KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST}


def _config_error(exc: Exception) -> InvalidInput:
    return InvalidInput(f"rejected by librdkafka: {exc}", field="bus_url")


class KafkaBus(EventBus):
    def __init__(self, bootstrap: str, *, topic: str, partitions: int = 6, replication: int = 1,
                 session_timeout_ms: int = 10_000, timeout_s: float = 30.0,
                 extra: dict[str, str] | None = None):
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.dead_letter_topic = dead_letter_topic_of(topic)
        self.replication, self.timeout_s = replication, timeout_s
        self.session_timeout_ms = session_timeout_ms
        self._base = {"bootstrap.servers": bootstrap, **(extra or {})}
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._ready_topics: set[str] = set()
        self._lock = threading.Lock()

    # -- topics ---------------------------------------------------------------------------------
    def _get_admin(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                try:
                    self._admin = AdminClient({**self._base,
                                               "socket.timeout.ms": int(self.timeout_s * 1000)})
                except KafkaException as exc:
                    raise _config_error(exc) from None
            return self._admin

    def _list_topics(self, timeout: float) -> dict:
        try:
            return self._get_admin().list_topics(timeout=timeout).topics
        except KafkaException as exc:
            raise Unavailable(f"kafka at {self.bootstrap} unreachable: {exc}") from exc

    def _ensure_topics(self, *topics: str) -> None:
        missing = [t for t in topics if t not in self._ready_topics]
        if not missing:
            return
        admin = self._get_admin()
        existing = self._list_topics(self.timeout_s)
        new = [NewTopic(t, self.partitions if t == self.topic else 1, self.replication)
               for t in missing if t not in existing]
        for t, fut in admin.create_topics(new, request_timeout=self.timeout_s).items() if new else []:
            try:
                fut.result(timeout=self.timeout_s)
                log.info("kafka topic created", topic=t, bootstrap=self.bootstrap)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise Unavailable(f"cannot create kafka topic {t}: {exc}") from exc
        self._ready_topics.update(missing)

    # -- producing ------------------------------------------------------------------------------
    def _get_producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = Producer({
                        **self._base,
                        "acks": "all",
                        "enable.idempotence": True,
                        "partitioner": "murmur2_random",
                        "linger.ms": 5,
                        "message.timeout.ms": int(self.timeout_s * 1000),
                        "error_cb": self._on_producer_error,
                    })
                except KafkaException as exc:
                    raise _config_error(exc) from None
            return self._producer

    def _on_producer_error(self, err) -> None:
        if err.fatal():
            log.error("kafka producer failed fatally; the next publish starts a new one",
                      error=str(err))

    def _retire(self, producer: Producer, topic: str) -> None:
        """After a failed publish, start the next one afresh: a new producer (an idempotent
        producer whose id or epoch the broker no longer knows, e.g. after a restart or a
        timed-out batch, never delivers again) and a new look at the topic (a broker that lost
        it gets it back with our partition count). What the old producer still holds is purged:
        those events were answered as not durable."""
        with self._lock:
            if self._producer is producer:
                self._producer = None
            self._ready_topics.discard(topic)
        try:
            producer.purge()
            producer.flush(0)
        except (KafkaException, SystemError, RuntimeError):
            pass

    def publish(self, events, *, keys=None, topic=None, headers=None):
        topic = topic or self.topic
        encoded = encode_events(events, keys)
        if not encoded:
            return 0
        self._ensure_topics(topic)
        producer = self._get_producer()
        hdrs = list((headers or {}).items()) or None
        failures: list[str] = []

        def on_delivery(err, _msg):
            if err is not None:
                failures.append(str(err))

        try:
            for key, value in encoded:
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, headers=hdrs,
                                         on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: let deliveries drain, then retry
                        producer.poll(0.05)
            left = producer.flush(self.timeout_s)
        # confluent-kafka surfaces an error raised inside a callback as SystemError
        except (KafkaException, SystemError) as exc:
            cause = exc.__cause__ if isinstance(exc, SystemError) and exc.__cause__ else exc
            self._retire(producer, topic)
            raise Unavailable(f"kafka producer at {self.bootstrap} failed: {cause}; "
                              f"{len(encoded)} events not durable") from cause
        if left or failures:
            self._retire(producer, topic)
        if left:
            raise Unavailable(f"{left} of {len(encoded)} events not acknowledged by kafka at "
                              f"{self.bootstrap} within {self.timeout_s} s")
        if failures:
            raise Unavailable(f"{len(failures)} of {len(encoded)} events not durable in kafka: "
                              f"{failures[0]}")
        return len(encoded)

    # -- consuming ------------------------------------------------------------------------------
    def consumer(self, group, *, topic=None):
        if not isinstance(group, str) or not group:
            raise InvalidInput("must be a non-empty string", field="group")
        topic = topic or self.topic
        self._ensure_topics(topic)
        try:
            c = _KConsumer({
                **self._base,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self.session_timeout_ms,
                "heartbeat.interval.ms": max(100, self.session_timeout_ms // 4),
            })
        except KafkaException as exc:
            raise _config_error(exc) from None
        return KafkaConsumer(c, group, topic, self.timeout_s)

    def ping(self):
        # A metadata round trip every time: readiness must notice a broker that went away.
        self._list_topics(min(self.timeout_s, 5.0))

    def close(self):
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self.timeout_s)
                self._producer = None


class KafkaConsumer(Consumer):
    def __init__(self, c: "_KConsumer", group: str, topic: str, timeout_s: float):
        self._c, self.group, self.topic, self._timeout_s = c, group, topic, timeout_s
        self._assigned: set[int] = set()
        self._closed = False
        c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                     on_lost=self._on_revoke)

    def _on_assign(self, _c, parts):
        self._assigned = {p.partition for p in parts}
        log.info("kafka partitions assigned", group=self.group, partitions=sorted(self._assigned))

    def _on_revoke(self, _c, parts):
        self._assigned -= {p.partition for p in parts}

    @staticmethod
    def _convert(m) -> Message | None:
        err = m.error()
        if err is not None:
            if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
                raise Unavailable(f"kafka consumer failed: {err}")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka consumer error", error=str(err))
            return None
        raw_headers = m.headers()  # None for nearly every event: skip building a dict from it
        headers = {k: (v.decode() if isinstance(v, bytes) else str(v))
                   for k, v in raw_headers} if raw_headers else {}
        key = m.key()
        return Message(m.topic(), m.partition(), m.offset(),
                       None if key is None else key.decode(), m.value() or b"", headers,
                       m.timestamp()[1])

    def poll(self, max_messages=500, timeout=1.0):
        if self._closed:
            raise Conflict("consumer is closed")
        # poll() returns on the first message; consume(timeout=0) then drains what is already
        # fetched, so a batch never waits out the timeout once something has arrived.
        try:
            first = self._c.poll(max(timeout, 0.0))
            raw = [] if first is None else [first] + (
                self._c.consume(max_messages - 1, 0) if max_messages > 1 else [])
        except KafkaException as exc:
            raise Unavailable(f"kafka poll failed: {exc}") from exc
        return [m for m in map(self._convert, raw) if m is not None]

    def commit(self, messages):
        offsets = [TopicPartition(t, p, o) for (t, p), o in offsets_to_commit(messages).items()]
        if not offsets:
            return
        try:
            result = self._c.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in _REBALANCED:
                raise Conflict(f"commit refused after a rebalance: {err}") from exc
            raise Unavailable(f"kafka commit failed: {err}") from exc
        bad = [tp for tp in result or [] if tp.error is not None]
        if bad:
            if bad[0].error.code() in _REBALANCED:
                raise Conflict(f"commit refused after a rebalance: {bad[0].error}")
            raise Unavailable(f"kafka commit failed for partition {bad[0].partition}: {bad[0].error}")

    def assignment(self):
        return sorted(self._assigned)

    def close(self):
        if not self._closed:
            self._closed = True
            start = time.monotonic()
            self._c.close()
            log.info("kafka consumer closed", group=self.group, seconds=round(time.monotonic() - start, 3))
