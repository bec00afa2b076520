"""The homepage cache: precomputed per-user pages and shared shelves, versioned by model.

Place in DESIGN.md: the batch layer's precompute and the speed layer *write* pages here; the API's
homepage read is one ``get_many`` of the user's page and the shelves it references (one MGET on
Redis), never model inference. Values are opaque bytes (the page encoding lives with composition).

Versions. Every key lives under a model version. Precompute writes a whole new version next to
the serving one, then ``publish(version)`` moves the pointer in one atomic step; readers always
read the version the pointer names, and every value of one ``get_many`` comes from one version,
so a reader never sees a mix of two models' pages. Old versions expire by TTL or are removed with
``drop_version``. The speed layer writes single pages into the current version (``version=None``).

Backends (open by URL, see docs/backends.md):

* ``memory://`` - a dict in this process; ``memory:///path/pages.arrow`` also restores from that
  snapshot on open and writes it on ``snapshot()`` and ``close()``, so a restart keeps pages.
* ``redis://host:port/db?prefix=rr&ttl=604800`` - Redis through redis-py with pipelining
  (``cache_redis``).
* ``redis+cluster://host:port[,host:port...]`` - a Redis Cluster, keys hash-tagged so that a
  homepage read stays one round trip (``cache_redis_cluster``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.ipc as ipc

from reelrec.errors import Conflict, InvalidInput, NotFound, Unavailable
from reelrec.log import get_logger
from reelrec.storage._url import option, parse_url, unknown_options

log = get_logger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600.0  # a version outlives a missed nightly run or two


def page_key(user_id: str) -> str:
    """The key of one user's page."""
    return f"u:{user_id}"


def shelf_key(shelf_id: str) -> str:
    """The key of a shared shelf, e.g. ``shelf_key("trending:IN")``."""
    return f"s:{shelf_id}"


class CacheRead(NamedTuple):
    """The result of one ``get_many``: the version read and one value (or None) per key."""

    version: str | None
    values: list[bytes | None]


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not version or any(c in version for c in ":\x00 \n"):
        raise InvalidInput("must be a non-empty string without ':', spaces or newlines",
                           field="version")
    return version


def _check_items(items: Mapping[str, bytes]) -> None:
    for k, v in items.items():
        if not isinstance(k, str) or not k:
            raise InvalidInput(f"keys must be non-empty strings, got {k!r}", field="key")
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"value of {k!r} must be bytes, got {type(v).__name__}", field="value")


def _ttl(ttl: float | None, default: float | None) -> float | None:
    """None means the cache's default; 0 means no expiry."""
    ttl = default if ttl is None else ttl
    if ttl is not None and ttl < 0:
        raise InvalidInput(f"must be >= 0 seconds, got {ttl}", field="ttl")
    return ttl or None


class HomepageCache(ABC):
    """Put pages, read many in one round trip, switch versions atomically.

    Every method raises ``Unavailable`` when the backend cannot be reached, ``InvalidInput`` for
    a malformed key, value, version or TTL.
    """

    default_ttl: float | None

    @abstractmethod
    def put(self, items: Mapping[str, bytes], *, version: str | None = None,
            ttl: float | None = None) -> None:
        """Write pages (``page_key``/``shelf_key`` -> bytes) in one pipelined batch.

        ``version=None`` writes into the published version (``NotFound`` if none is published);
        ``ttl`` in seconds overrides the default, ``0`` keeps them until deleted.
        """

    @abstractmethod
    def get_many(self, keys: Sequence[str], *, version: str | None = None) -> CacheRead:
        """Read ``keys`` of the current (or the given) version in one round trip.

        Missing or expired keys read as None; with no version published every value is None.
        """

    async def aget_many(self, keys: Sequence[str], *, version: str | None = None) -> CacheRead:
        """``get_many`` for an event loop. This default runs it on a worker thread; backends
        with an asyncio client (Redis) or no I/O at all (memory) override it."""
        import asyncio
        return await asyncio.to_thread(self.get_many, keys, version=version)

    @abstractmethod
    def delete(self, keys: Sequence[str], *, version: str | None = None) -> int:
        """Delete keys of the current (or given) version; returns how many existed."""

    @abstractmethod
    def publish(self, version: str) -> str | None:
        """Point readers at ``version`` atomically; returns the previous version.

        Raises ``NotFound`` when nothing was ever written under ``version``.
        """

    @abstractmethod
    def current_version(self) -> str | None:
        """The published version, or None."""

    @abstractmethod
    def versions(self) -> list[str]:
        """Versions with pages, oldest first."""

    @abstractmethod
    def drop_version(self, version: str) -> int:
        """Delete every key of a version that is not the published one (``Conflict`` if it is)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``Unavailable`` unless the backend answers (for readiness checks)."""

    async def aclose(self) -> None:
        """Release what ``aget_many`` opened on the running event loop (call before it ends)."""

    def snapshot(self) -> None:
        """Persist to disk where the backend keeps state only in memory; a no-op otherwise."""

    def close(self) -> None:
        """Release connections (and snapshot, for a memory cache with a path)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemoryCache(HomepageCache):
    """The embedded cache: a dict guarded by one lock, with an optional Arrow snapshot file."""

    _SNAPSHOT_SCHEMA = pa.schema([
        ("version", pa.string()), ("key", pa.string()), ("value", pa.binary()),
        ("expires_at", pa.float64()),
    ])

    def __init__(self, path: str | Path | None = None, *, default_ttl: float | None = DEFAULT_TTL_S):
        self.path = Path(path) if path else None
        self.default_ttl = default_ttl
        self._lock = threading.Lock()
        # (version, key) -> (value, expires_at or None); expires_at is wall-clock so that a
        # restored snapshot honours TTLs across restarts.
        self._data: dict[tuple[str, str], tuple[bytes, float | None]] = {}
        self._versions: dict[str, float] = {}
        self._current: str | None = None
        if self.path is not None and self.path.exists():
            self._restore()

    # -- writes -------------------------------------------------------------------------------
    def _resolve(self, version: str | None) -> str:
        if version is None:
            if self._current is None:
                raise NotFound("no cache version is published yet")
            return self._current
        return _check_version(version)

    def put(self, items, *, version=None, ttl=None):
        _check_items(items)
        ttl = _ttl(ttl, self.default_ttl)
        with self._lock:
            v = self._resolve(version)
            exp = time.time() + ttl if ttl else None
            self._versions.setdefault(v, time.time())
            for k, val in items.items():
                self._data[(v, k)] = (bytes(val), exp)

    def delete(self, keys, *, version=None):
        with self._lock:
            v = self._resolve(version)
            now = time.time()
            n = 0
            for k in keys:
                hit = self._data.pop((v, k), None)
                n += hit is not None and (hit[1] is None or hit[1] > now)
            return n

    # -- reads --------------------------------------------------------------------------------
    def get_many(self, keys, *, version=None):
        with self._lock:
            v = self._current if version is None else _check_version(version)
            if v is None:
                return CacheRead(None, [None] * len(keys))
            now = time.time()
            out: list[bytes | None] = []
            for k in keys:
                hit = self._data.get((v, k))
                if hit is not None and hit[1] is not None and hit[1] <= now:
                    del self._data[(v, k)]
                    hit = None
                out.append(None if hit is None else hit[0])
            return CacheRead(v, out)

    async def aget_many(self, keys, *, version=None):
        return self.get_many(keys, version=version)  # a dict lookup under a lock: no I/O to wait on

    # -- versions -----------------------------------------------------------------------------
    def publish(self, version):
        _check_version(version)
        with self._lock:
            if version not in self._versions:
                raise NotFound(f"cache version {version!r} has no pages")
            prev, self._current = self._current, version
        log.info("cache version published", version=version, previous=prev)
        return prev

    def current_version(self):
        return self._current

    def versions(self):
        with self._lock:
            return sorted(self._versions, key=self._versions.__getitem__)

    def drop_version(self, version):
        _check_version(version)
        with self._lock:
            if version == self._current:
                raise Conflict(f"cannot drop the published cache version {version!r}")
            doomed = [k for k in self._data if k[0] == version]
            for k in doomed:
                del self._data[k]
            self._versions.pop(version, None)
            return len(doomed)

    def ping(self):
        return None

    # -- snapshot -----------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Write every live entry to ``path`` (Arrow IPC), atomically by rename."""
        if self.path is None:
            return
        with self._lock:
            now = time.time()
            live = [(v, k, val, exp) for (v, k), (val, exp) in self._data.items()
                    if exp is None or exp > now]
            meta = {"current": self._current, "versions": self._versions}
        cols = list(zip(*live)) if live else [[], [], [], []]
        table = pa.table([pa.array(c, type=f.type) for c, f in zip(cols, self._SNAPSHOT_SCHEMA)],
                         schema=self._SNAPSHOT_SCHEMA.with_metadata({"reelrec": json.dumps(meta)}))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Unavailable(f"cannot write cache snapshot {self.path}: {exc}") from exc
        log.info("cache snapshot written", path=str(self.path), entries=len(live))

    def _restore(self) -> None:
        try:
            with pa.memory_map(str(self.path)) as src:
                table = ipc.open_file(src).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            raise Unavailable(f"cannot read cache snapshot {self.path}: {exc}") from exc
        meta = json.loads((table.schema.metadata or {}).get(b"reelrec", b"{}"))
        now = time.time()
        d = table.to_pydict()
        for v, k, val, exp in zip(d["version"], d["key"], d["value"], d["expires_at"]):
            if exp is None or exp > now:
                self._data[(v, k)] = (val, exp)
        self._versions = {v: float(t) for v, t in meta.get("versions", {}).items()}
        self._current = meta.get("current")
        log.info("cache snapshot restored", path=str(self.path), entries=len(self._data),
                 version=self._current)

    def close(self):
        self.snapshot()


_OPTIONS = {"ttl", "prefix"}


def open_cache(url: str = "memory://") -> HomepageCache:
    """Open the homepage cache named by ``url``.

    ``memory://`` (in process), ``memory:///path/pages.arrow`` (in process, snapshot at that
    path), ``redis://[:password@]host:port/db[?prefix=rr][&ttl=SECONDS]``, or
    ``redis+cluster://[:password@]host:port[,host:port...]`` with the same options. ``ttl`` is
    the default lifetime of a page in seconds (0 = none). Raises ``InvalidInput`` for an unknown
    scheme or option; opening does not connect (use ``ping``).
    """
    p = parse_url(url, _OPTIONS, role="cache")
    ttl = option(p.options, "ttl", float, DEFAULT_TTL_S, role="cache",
                 check=lambda t: t >= 0, rule=">= 0")
    if p.scheme == "memory":
        unknown_options({**p.options, **p.driver_options}, {"ttl"}, role="cache")
        path = (p.netloc + p.path) or None
        return MemoryCache(path, default_ttl=ttl or None)
    if p.scheme in ("redis", "rediss"):
        from reelrec.storage.cache_redis import RedisCache

        return RedisCache(p.driver_url, prefix=p.options.get("prefix", "rr"), default_ttl=ttl or None)
    if p.scheme in ("redis+cluster", "rediss+cluster"):
        from reelrec.storage.cache_redis_cluster import RedisClusterCache

        return RedisClusterCache(p.driver_url, prefix=p.options.get("prefix", "rr"),
                                 default_ttl=ttl or None)
    raise InvalidInput(f"unknown scheme {p.scheme!r}; use memory://, redis:// or redis+cluster://",
                       field="cache_url")
