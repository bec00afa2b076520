"""Online state on Redis (``redis://host:port/db``), through redis-py with pipelining.

Key layout (``prefix`` defaults to ``rr``; ``{user}`` is a Redis Cluster hash tag, so one user's
keys share a slot and can later be updated in one MULTI)::

    rr:s:{<user>}:r          LIST    recent titles, newest first, LTRIM to max_recent
    rr:s:{<user>}:f          HASH    small fields; HINCRBYFLOAT for folded aggregates
    rr:s:{<user>}:v          STRING  float32 little-endian vector (128 dims = 512 bytes)
    rr:s:{<user>}:x          SET     titles shown (exposure)
    rr:s:{<user>}:p          ZSET    in-progress titles scored by last play time
    rr:s:w:<counter>:<bucket> ZSET   window counter bucket (bucket = floor(t / bucket_s)), PEXPIRE
    rr:s:b                   HASH    bandit evidence: "<arm>\\ta" and "<arm>\\tb"
    rr:s:e:<event_id>        STRING  idempotency marker, SET NX EX seen_ttl_s

A window read is one ``ZUNION ... WEIGHTS ... WITHSCORES`` over the buckets of the window, the
weights carrying the exponential decay.
"""

from __future__ import annotations

import collections

import numpy as np

from reelrec.errors import InvalidInput
from reelrec.storage._redis import connect, redacted, translated
from reelrec.storage.state import (
    OnlineState, _ids, _ts, _user, _vector, _weights, top_n, window_buckets,
)


class RedisState(OnlineState):
    def __init__(self, url: str, *, prefix: str = "rr", max_recent: int = 50,
                 bucket_s: float = 300.0, retention_s: float = 2 * 86400.0,
                 seen_ttl_s: float = 7 * 86400.0, user_ttl_s: float = 0.0):
        if not prefix or " " in prefix:
            raise InvalidInput("must be a non-empty string without spaces", field="state_url.prefix")
        self.url = redacted(url)
        self._r = self._connect(url)
        self._p = f"{prefix}:s:"
        self.max_recent, self.bucket_s = max_recent, bucket_s
        self.retention_s, self.seen_ttl_s = retention_s, seen_ttl_s
        self.user_ttl_ms = int(user_ttl_s * 1000)

    def _connect(self, url: str):
        return connect(url)

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        return self._r.mget(keys)

    def _uk(self, user_id: str, kind: str) -> str:
        return f"{self._p}{{{_user(user_id)}}}:{kind}"

    def _touch(self, pipe, key: str) -> None:
        if self.user_ttl_ms:
            pipe.pexpire(key, self.user_ttl_ms)

    # -- per user -------------------------------------------------------------------------------
    def push_recent(self, user_id, title_ids):
        ids = _ids(title_ids, "title_ids")
        if not ids:
            return
        k = self._uk(user_id, "r")
        with translated("push recent", self.url):
            pipe = self._r.pipeline(transaction=False)
            pipe.lpush(k, *ids)
            pipe.ltrim(k, 0, self.max_recent - 1)
            self._touch(pipe, k)
            pipe.execute()

    def recent(self, user_id, n=None):
        stop = (self.max_recent if n is None else min(n, self.max_recent)) - 1
        if stop < 0:
            return []
        with translated("LRANGE recent", self.url):
            return [x.decode() for x in self._r.lrange(self._uk(user_id, "r"), 0, stop)]

    def set_fields(self, user_id, fields):
        if not fields:
            return
        k = self._uk(user_id, "f")
        with translated("HSET fields", self.url):
            pipe = self._r.pipeline(transaction=False)
            pipe.hset(k, mapping={str(a): str(b) for a, b in fields.items()})
            self._touch(pipe, k)
            pipe.execute()

    def incr_fields(self, user_id, deltas):
        names = list(deltas)
        w = _weights(names, list(deltas.values()), "deltas")
        k = self._uk(user_id, "f")
        with translated("HINCRBYFLOAT fields", self.url):
            pipe = self._r.pipeline(transaction=False)
            for name, x in zip(names, w):
                pipe.hincrbyfloat(k, name, x)
            self._touch(pipe, k)
            try:
                res = pipe.execute()
            except Exception as exc:
                if "not a float" in str(exc) or "not a valid float" in str(exc):
                    raise InvalidInput("a field to increment holds a non-number",
                                       field="deltas") from None
                raise
        return {name: float(v) for name, v in zip(names, res)}

    def fields(self, user_id):
        with translated("HGETALL fields", self.url):
            h = self._r.hgetall(self._uk(user_id, "f"))
        return {a.decode(): b.decode() for a, b in h.items()}

    def set_fields_many(self, fields):
        todo = {_user(u): f for u, f in fields.items() if f}
        if not todo:
            return
        with translated("HSET fields", self.url):
            pipe = self._r.pipeline(transaction=False)
            for u, f in todo.items():
                k = self._uk(u, "f")
                pipe.hset(k, mapping={str(a): str(b) for a, b in f.items()})
                self._touch(pipe, k)
            pipe.execute()

    def fields_many(self, user_ids):
        ids = _ids(user_ids, "user_ids")
        if not ids:
            return {}
        with translated("HGETALL fields", self.url):
            pipe = self._r.pipeline(transaction=False)
            for u in ids:
                pipe.hgetall(self._uk(u, "f"))
            got = pipe.execute()
        return {u: {a.decode(): b.decode() for a, b in h.items()} for u, h in zip(ids, got)}

    def set_vector(self, user_id, vector):
        v = _vector(vector)
        with translated("SET vector", self.url):
            self._r.set(self._uk(user_id, "v"), v.astype("<f4").tobytes(),
                        px=self.user_ttl_ms or None)

    def vectors(self, user_ids):
        ids = _ids(user_ids, "user_ids")
        if not ids:
            return []
        with translated("MGET vectors", self.url):
            raw = self._mget([self._uk(u, "v") for u in ids])
        return [None if b is None else np.frombuffer(b, dtype="<f4").copy() for b in raw]

    def add_exposure(self, user_id, title_ids):
        ids = _ids(title_ids, "title_ids")
        if not ids:
            return
        k = self._uk(user_id, "x")
        with translated("SADD exposure", self.url):
            pipe = self._r.pipeline(transaction=False)
            pipe.sadd(k, *ids)
            self._touch(pipe, k)
            pipe.execute()

    def exposure(self, user_id):
        with translated("SMEMBERS exposure", self.url):
            return {x.decode() for x in self._r.smembers(self._uk(user_id, "x"))}

    def add_exposure_many(self, shown):
        todo = {_user(u): _ids(t, "title_ids") for u, t in shown.items()}
        todo = {u: t for u, t in todo.items() if t}
        if not todo:
            return
        with translated("SADD exposure", self.url):
            pipe = self._r.pipeline(transaction=False)
            for u, t in todo.items():
                k = self._uk(u, "x")
                pipe.sadd(k, *t)
                self._touch(pipe, k)
            pipe.execute()

    def exposure_many(self, user_ids):
        ids = _ids(user_ids, "user_ids")
        if not ids:
            return {}
        with translated("SMEMBERS exposure", self.url):
            pipe = self._r.pipeline(transaction=False)
            for u in ids:
                pipe.smembers(self._uk(u, "x"))
            got = pipe.execute()
        return {u: {x.decode() for x in m} for u, m in zip(ids, got)}

    def set_in_progress(self, user_id, title_id, at):
        (t,), ts = _ids([title_id], "title_id"), _ts(at)
        k = self._uk(user_id, "p")
        with translated("ZADD in-progress", self.url):
            pipe = self._r.pipeline(transaction=False)
            pipe.zadd(k, {t: ts})
            self._touch(pipe, k)
            pipe.execute()

    def clear_in_progress(self, user_id, title_id):
        with translated("ZREM in-progress", self.url):
            self._r.zrem(self._uk(user_id, "p"), title_id)

    def in_progress(self, user_id, n=None):
        with translated("ZRANGE in-progress", self.url):
            got = self._r.zrevrange(self._uk(user_id, "p"), 0, -1 if n is None else n - 1,
                                    withscores=True)
        # Same order as memory: newest first, ties by title id.
        return [t.decode() for t, _ in sorted(got, key=lambda ts: (-ts[1], ts[0]))]

    # -- shared ---------------------------------------------------------------------------------
    def _bucket_key(self, counter: str, b: int) -> str:
        return f"{self._p}w:{counter}:{b}"

    def bump(self, counter, items, at, weights=None):
        (c,) = _ids([counter], "counter")
        ids, ts = _ids(items, "items"), _ts(at)
        w = _weights(ids, weights)
        if not ids:
            return
        summed: collections.Counter = collections.Counter()
        for i, x in zip(ids, w):
            summed[i] += x
        b = int(ts // self.bucket_s)
        k = self._bucket_key(c, b)
        # The bucket lives for retention_s past its end on the events' clock, counted from now
        # (not an absolute PEXPIREAT), so a replay of older events keeps its counters too.
        ttl_ms = max(int(((b + 1) * self.bucket_s + self.retention_s - ts) * 1000), 1)
        with translated("ZINCRBY window", self.url):
            pipe = self._r.pipeline(transaction=False)
            for i, x in summed.items():
                pipe.zincrby(k, x, i)
            pipe.pexpire(k, ttl_ms)
            pipe.execute()

    def top(self, counter, n, *, at, window_s, half_life_s=None):
        ts = _ts(at)
        weights = {self._bucket_key(counter, b): w
                   for b, w in window_buckets(ts, window_s, self.bucket_s, half_life_s)}
        with translated("ZUNION window", self.url):
            got = self._r.zunion(weights, withscores=True)
        return top_n({k.decode(): s for k, s in got}, n)

    def bandit_update(self, arms, successes, failures):
        ids = _ids(arms, "arms")
        s, f = _weights(ids, successes, "successes"), _weights(ids, failures, "failures")
        if not ids:
            return
        k = f"{self._p}b"
        with translated("HINCRBYFLOAT bandit", self.url):
            pipe = self._r.pipeline(transaction=False)
            for a, ds, df in zip(ids, s, f):
                if ds:
                    pipe.hincrbyfloat(k, f"{a}\ta", ds)
                if df:
                    pipe.hincrbyfloat(k, f"{a}\tb", df)
            pipe.execute()

    def bandit_posteriors(self, arms, prior=(1.0, 1.0)):
        ids = _ids(arms, "arms")
        if not ids:
            return np.zeros((0, 2))
        fields = [f"{a}\t{ab}" for a in ids for ab in "ab"]
        with translated("HMGET bandit", self.url):
            raw = self._r.hmget(f"{self._p}b", fields)
        ev = np.array([0.0 if x is None else float(x) for x in raw]).reshape(len(ids), 2)
        return ev + np.asarray(prior, dtype=np.float64)

    def seen_many(self, event_ids):
        ids = _ids(event_ids, "event_ids")
        if not ids:
            return []
        px = int(self.seen_ttl_s * 1000)
        with translated("SET NX seen", self.url):
            pipe = self._r.pipeline(transaction=False)
            for e in ids:
                pipe.set(f"{self._p}e:{e}", b"1", nx=True, px=px)
            return [not ok for ok in pipe.execute()]

    def seen_check(self, event_ids):
        ids = _ids(event_ids, "event_ids")
        if not ids:
            return []
        with translated("MGET seen", self.url):
            return [v is not None for v in self._mget([f"{self._p}e:{e}" for e in ids])]

    def ping(self):
        with translated("PING", self.url):
            self._r.ping()

    def memory_usage(self, user_id: str, kind: str = "v") -> int | None:
        """Bytes Redis spends on one of a user's keys (``MEMORY USAGE``), for capacity planning."""
        with translated("MEMORY USAGE", self.url):
            return self._r.memory_usage(self._uk(user_id, kind), samples=0)

    def close(self):
        self._r.close()
