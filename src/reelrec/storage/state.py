"""Online state for the speed layer: what reelrec knows about each user right now.

Place in DESIGN.md: the speed layer folds each event into this store (recent history, folded
interaction aggregates, exposure, in-progress titles, the user's vector, trending counters,
bandit posteriors) and recomputes the user's page from it; the batch layer rebuilds everything
nightly from the lake. At scale it is Redis (200 M users x 128 floats = ~100 GB, sharded), one
machine uses ``memory://``.

What the store holds, per user: a bounded list of recent titles (newest first), a small hash of
fields (folded aggregates, profile bits; numbers are incremented atomically), a float32 vector,
the set of titles shown (exposure), in-progress titles ordered by last play. Shared: sliding
window counters by name (``trending:IN``) in time buckets, read back as a top-n with optional
exponential decay; Beta posteriors (alpha, beta) per bandit arm; ``seen(event_id)`` markers so
consumers of an at-least-once bus are idempotent on ``event_id``.

Backends: ``memory://`` (this module), ``redis://host:port/db`` (``state_redis``) and
``redis+cluster://host:port`` (``state_redis_cluster``).
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import threading
import time
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

from reelrec.errors import InvalidInput
from reelrec.storage._url import option, parse_url, unknown_options

Timestamp = float | dt.datetime

DEFAULTS = {
    "max_recent": 50,            # titles kept in a user's recent history
    "bucket_s": 300.0,           # width of one window-counter bucket
    "retention_s": 2 * 86400.0,  # how long a bucket lives: the longest window ever read
    "seen_ttl_s": 7 * 86400.0,   # how long an event_id is remembered: longer than any redelivery
    "user_ttl_s": 0.0,           # Redis only: expire a user's keys this long after the last write
}


def _ts(at: Timestamp) -> float:
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise InvalidInput("must be timezone-aware", field="at")
        return at.timestamp()
    if isinstance(at, (int, float)) and math.isfinite(at):
        return float(at)
    raise InvalidInput(f"must be a unix time or an aware datetime, got {at!r}", field="at")


def _ids(values: Sequence[str], field: str) -> list[str]:
    if isinstance(values, str):
        raise InvalidInput("must be a list of strings, not one string", field=field)
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str) or not v:
            raise InvalidInput(f"item {i} must be a non-empty string, got {v!r}", field=field)
    return out


def _user(user_id: str) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise InvalidInput(f"must be a non-empty string, got {user_id!r}", field="user_id")
    return user_id


def _vector(vector) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or v.size == 0:
        raise InvalidInput(f"must be a non-empty 1-D array, got shape {v.shape}", field="vector")
    if not np.isfinite(v).all():
        raise InvalidInput("must be finite (no NaN or inf)", field="vector")
    return v


def _weights(items: list[str], weights: Sequence[float] | None, field: str = "weights") -> list[float]:
    if weights is None:
        return [1.0] * len(items)
    w = [float(x) for x in weights]
    if len(w) != len(items):
        raise InvalidInput(f"has {len(w)} values for {len(items)} items", field=field)
    if not all(math.isfinite(x) for x in w):
        raise InvalidInput("must be finite", field=field)
    return w


def window_buckets(at: float, window_s: float, bucket_s: float,
                   half_life_s: float | None) -> list[tuple[int, float]]:
    """The buckets covering ``(at - window_s, at]`` with each one's decay weight.

    A bucket's age is measured from its middle; without a half-life every weight is 1.
    """
    if window_s <= 0:
        raise InvalidInput(f"must be > 0, got {window_s}", field="window_s")
    if half_life_s is not None and half_life_s <= 0:
        raise InvalidInput(f"must be > 0, got {half_life_s}", field="half_life_s")
    last = int(at // bucket_s)
    first = int((at - window_s) // bucket_s) + 1
    out = []
    for b in range(first, last + 1):
        w = 1.0 if half_life_s is None else 0.5 ** (max(at - (b + 0.5) * bucket_s, 0.0) / half_life_s)
        out.append((b, w))
    return out


def top_n(scores: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """Highest scores first; ties broken by item id so every backend answers the same."""
    return sorted(((k, float(v)) for k, v in scores.items() if v > 0),
                  key=lambda kv: (-kv[1], kv[0]))[:n]


class OnlineState(ABC):
    """Every method raises ``Unavailable`` when the backend cannot be reached and
    ``InvalidInput`` (naming the field) for a malformed argument."""

    max_recent: int
    bucket_s: float

    # -- per user -------------------------------------------------------------------------------
    @abstractmethod
    def push_recent(self, user_id: str, title_ids: Sequence[str]) -> None:
        """Append titles in the order they happened; keeps the newest ``max_recent``."""

    @abstractmethod
    def recent(self, user_id: str, n: int | None = None) -> list[str]:
        """Recent titles, newest first (at most ``n``)."""

    @abstractmethod
    def set_fields(self, user_id: str, fields: Mapping[str, str | int | float]) -> None:
        """Set small per-user fields (stored as strings)."""

    @abstractmethod
    def incr_fields(self, user_id: str, deltas: Mapping[str, float]) -> dict[str, float]:
        """Add to numeric fields atomically; returns their new values."""

    @abstractmethod
    def fields(self, user_id: str) -> dict[str, str]:
        """All fields of a user ({} if none)."""

    def set_fields_many(self, fields: Mapping[str, Mapping[str, str | int | float]]) -> None:
        """``set_fields`` for many users in one round trip where the backend allows."""
        for u, f in fields.items():
            self.set_fields(u, f)

    def fields_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The fields of many users in one round trip where the backend allows ({} if none)."""
        return {u: self.fields(u) for u in _ids(user_ids, "user_ids")}

    @abstractmethod
    def set_vector(self, user_id: str, vector: np.ndarray) -> None:
        """Store the user's embedding as float32."""

    @abstractmethod
    def vectors(self, user_ids: Sequence[str]) -> list[np.ndarray | None]:
        """Embeddings of many users in one round trip (None where unknown)."""

    @abstractmethod
    def add_exposure(self, user_id: str, title_ids: Sequence[str]) -> None:
        """Record titles shown to the user."""

    @abstractmethod
    def exposure(self, user_id: str) -> set[str]:
        """Titles ever shown to the user (while the state lives)."""

    def add_exposure_many(self, shown: Mapping[str, Sequence[str]]) -> None:
        """``add_exposure`` for many users in one round trip where the backend allows."""
        for u, titles in shown.items():
            self.add_exposure(u, titles)

    def exposure_many(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        """The exposure sets of many users in one round trip where the backend allows."""
        return {u: self.exposure(u) for u in _ids(user_ids, "user_ids")}

    @abstractmethod
    def set_in_progress(self, user_id: str, title_id: str, at: Timestamp) -> None:
        """Mark a title as being watched, last played at ``at``."""

    @abstractmethod
    def clear_in_progress(self, user_id: str, title_id: str) -> None:
        """Remove a title from in-progress (finished or abandoned)."""

    @abstractmethod
    def in_progress(self, user_id: str, n: int | None = None) -> list[str]:
        """In-progress titles, most recently played first."""

    # -- shared ---------------------------------------------------------------------------------
    @abstractmethod
    def bump(self, counter: str, items: Sequence[str], at: Timestamp,
             weights: Sequence[float] | None = None) -> None:
        """Count items (weight 1 each unless given) in ``counter``'s bucket holding ``at``."""

    @abstractmethod
    def top(self, counter: str, n: int, *, at: Timestamp, window_s: float,
            half_life_s: float | None = None) -> list[tuple[str, float]]:
        """The n items with the highest (decayed) count over the window ending at ``at``."""

    @abstractmethod
    def bandit_update(self, arms: Sequence[str], successes: Sequence[float],
                      failures: Sequence[float]) -> None:
        """Add engagement evidence to each arm's Beta posterior."""

    @abstractmethod
    def bandit_posteriors(self, arms: Sequence[str],
                          prior: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """(len(arms), 2) array of (alpha, beta): the prior plus the evidence."""

    @abstractmethod
    def seen_many(self, event_ids: Sequence[str]) -> list[bool]:
        """Mark event ids; True for each one that was already marked (set-if-absent with TTL).

        A repeated id within one call is seen from its second occurrence on.
        """

    @abstractmethod
    def seen_check(self, event_ids: Sequence[str]) -> list[bool]:
        """True for each event id already marked by ``seen_many``; marks nothing.

        Lets a consumer skip what it fully applied before and mark the rest only once its
        effects are written (the speed layer: a crash between the two re-applies, never loses).
        """

    def seen(self, event_id: str) -> bool:
        """Mark one event id; True if it was already marked (so the event is a duplicate)."""
        return self.seen_many([event_id])[0]

    @abstractmethod
    def ping(self) -> None:
        """Raise ``Unavailable`` unless the backend answers."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemoryState(OnlineState):
    """The embedded store: dicts guarded by one lock. ``user_ttl_s`` does not apply here."""

    def __init__(self, *, max_recent: int = 50, bucket_s: float = 300.0,
                 retention_s: float = 2 * 86400.0, seen_ttl_s: float = 7 * 86400.0):
        self.max_recent, self.bucket_s = max_recent, bucket_s
        self.retention_s, self.seen_ttl_s = retention_s, seen_ttl_s
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque] = {}
        self._fields: dict[str, dict[str, str]] = collections.defaultdict(dict)
        self._vectors: dict[str, bytes] = {}
        self._exposure: dict[str, set[str]] = collections.defaultdict(set)
        self._progress: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._buckets: dict[tuple[str, int], collections.Counter] = {}
        self._pruned_below = -(2**62)
        self._bandit: dict[str, list[float]] = {}
        self._seen: dict[str, float] = {}
        self._seen_order: collections.deque = collections.deque()  # (expiry, id), expiry ascending

    def push_recent(self, user_id, title_ids):
        u, ids = _user(user_id), _ids(title_ids, "title_ids")
        with self._lock:
            dq = self._recent.setdefault(u, collections.deque(maxlen=self.max_recent))
            dq.extendleft(ids)

    def recent(self, user_id, n=None):
        with self._lock:
            items = list(self._recent.get(_user(user_id), ()))
        return items if n is None else items[:n]

    def set_fields(self, user_id, fields):
        u = _user(user_id)
        with self._lock:
            self._fields[u].update({str(k): str(v) for k, v in fields.items()})

    def incr_fields(self, user_id, deltas):
        u = _user(user_id)
        d = dict(zip(deltas, _weights(list(deltas), list(deltas.values()), "deltas")))
        with self._lock:
            f = self._fields[u]
            try:
                new = {k: float(f.get(k, 0.0)) + v for k, v in d.items()}
            except ValueError:
                raise InvalidInput("a field to increment holds a non-number", field="deltas") from None
            f.update({k: repr(v) for k, v in new.items()})
        return new

    def fields(self, user_id):
        with self._lock:
            return dict(self._fields.get(_user(user_id), {}))

    def set_vector(self, user_id, vector):
        u, v = _user(user_id), _vector(vector)
        with self._lock:
            self._vectors[u] = v.astype("<f4").tobytes()

    def vectors(self, user_ids):
        ids = _ids(user_ids, "user_ids")
        with self._lock:
            raw = [self._vectors.get(u) for u in ids]
        return [None if b is None else np.frombuffer(b, dtype="<f4").copy() for b in raw]

    def add_exposure(self, user_id, title_ids):
        u, ids = _user(user_id), _ids(title_ids, "title_ids")
        with self._lock:
            self._exposure[u].update(ids)

    def exposure(self, user_id):
        with self._lock:
            return set(self._exposure.get(_user(user_id), ()))

    def set_in_progress(self, user_id, title_id, at):
        u, (t,), ts = _user(user_id), _ids([title_id], "title_id"), _ts(at)
        with self._lock:
            self._progress[u][t] = ts

    def clear_in_progress(self, user_id, title_id):
        with self._lock:
            self._progress.get(_user(user_id), {}).pop(title_id, None)

    def in_progress(self, user_id, n=None):
        with self._lock:
            p = dict(self._progress.get(_user(user_id), {}))
        items = [t for t, _ in sorted(p.items(), key=lambda kv: (-kv[1], kv[0]))]
        return items if n is None else items[:n]

    def bump(self, counter, items, at, weights=None):
        (c,) = _ids([counter], "counter")
        ids, ts = _ids(items, "items"), _ts(at)
        w = _weights(ids, weights)
        b = int(ts // self.bucket_s)
        with self._lock:
            bucket = self._buckets.setdefault((c, b), collections.Counter())
            for i, x in zip(ids, w):
                bucket[i] += x
            horizon = int((ts - self.retention_s) // self.bucket_s)
            if horizon > self._pruned_below:  # once per bucket width, not per event
                self._pruned_below = horizon
                for key in [k for k in self._buckets if k[1] < horizon]:
                    del self._buckets[key]

    def top(self, counter, n, *, at, window_s, half_life_s=None):
        ts = _ts(at)
        total: collections.Counter = collections.Counter()
        with self._lock:
            for b, w in window_buckets(ts, window_s, self.bucket_s, half_life_s):
                for item, x in self._buckets.get((counter, b), {}).items():
                    total[item] += x * w
        return top_n(total, n)

    def bandit_update(self, arms, successes, failures):
        ids = _ids(arms, "arms")
        s, f = _weights(ids, successes, "successes"), _weights(ids, failures, "failures")
        with self._lock:
            for a, ds, df in zip(ids, s, f):
                ab = self._bandit.setdefault(a, [0.0, 0.0])
                ab[0] += ds
                ab[1] += df

    def bandit_posteriors(self, arms, prior=(1.0, 1.0)):
        ids = _ids(arms, "arms")
        with self._lock:
            ev = np.array([self._bandit.get(a, (0.0, 0.0)) for a in ids], dtype=np.float64)
        return ev.reshape(len(ids), 2) + np.asarray(prior, dtype=np.float64)

    def seen_many(self, event_ids):
        ids = _ids(event_ids, "event_ids")
        now = time.time()
        out = []
        with self._lock:
            while self._seen_order and self._seen_order[0][0] <= now:
                exp, old = self._seen_order.popleft()
                if self._seen.get(old) == exp:
                    del self._seen[old]
            for e in ids:
                exp = self._seen.get(e)
                if exp is not None and exp > now:
                    out.append(True)
                else:
                    exp = now + self.seen_ttl_s
                    self._seen[e] = exp
                    self._seen_order.append((exp, e))
                    out.append(False)
        return out

    def seen_check(self, event_ids):
        ids = _ids(event_ids, "event_ids")
        now = time.time()
        with self._lock:
            return [(self._seen.get(e) or 0.0) > now for e in ids]

    def ping(self):
        return None


def open_state(url: str = "memory://") -> OnlineState:
    """Open the online state named by ``url``.

    ``memory://``, ``redis://[:password@]host:port/db`` or
    ``redis+cluster://[:password@]host:port[,host:port...]``, with options in the query string:
    ``prefix`` (Redis key prefix, default ``rr``), ``max_recent`` (50), ``bucket_s`` (300),
    ``retention_s`` (172800), ``seen_ttl_s`` (604800), ``user_ttl_s`` (Redis only, 0 = never).
    Raises ``InvalidInput`` for an unknown scheme or a bad option; opening does not connect.
    """
    p = parse_url(url, set(DEFAULTS) | {"prefix"}, role="state")
    pos = dict(check=lambda x: x > 0, rule="> 0", role="state")
    kw = {
        "max_recent": option(p.options, "max_recent", int, DEFAULTS["max_recent"], **pos),
        "bucket_s": option(p.options, "bucket_s", float, DEFAULTS["bucket_s"], **pos),
        "retention_s": option(p.options, "retention_s", float, DEFAULTS["retention_s"], **pos),
        "seen_ttl_s": option(p.options, "seen_ttl_s", float, DEFAULTS["seen_ttl_s"], **pos),
    }
    user_ttl = option(p.options, "user_ttl_s", float, DEFAULTS["user_ttl_s"], role="state",
                      check=lambda x: x >= 0, rule=">= 0")
    if p.scheme == "memory":
        unknown_options({**p.options, **p.driver_options}, set(kw), role="state")
        return MemoryState(**kw)
    if p.scheme in ("redis", "rediss"):
        from reelrec.storage.state_redis import RedisState

        return RedisState(p.driver_url, prefix=p.options.get("prefix", "rr"), user_ttl_s=user_ttl, **kw)
    if p.scheme in ("redis+cluster", "rediss+cluster"):
        from reelrec.storage.state_redis_cluster import RedisClusterState

        return RedisClusterState(p.driver_url, prefix=p.options.get("prefix", "rr"),
                                 user_ttl_s=user_ttl, **kw)
    raise InvalidInput(f"unknown scheme {p.scheme!r}; use memory://, redis:// or redis+cluster://",
                       field="state_url")
