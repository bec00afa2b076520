"""The homepage cache on Redis (``redis://host:port/db``), through redis-py with pipelining.

Key layout (``prefix`` defaults to ``rr``; see docs/backends.md)::

    rr:c:cur                 STRING  the published version (the pointer readers follow)
    rr:c:vers                HASH    version -> unix time of its first write
    rr:c:<version>:<key>     STRING  a page or shelf, e.g. rr:c:v20261101:u:42, with a TTL

A read is one ``MGET rr:c:cur rr:c:<v>:<key>...``: the pointer plus the keys under the version
this client last saw. Only right after a switch does the pointer differ, and the read is repeated
once under the new version. Every value of one MGET carries the same version in its key name, so
a read never mixes two versions. The pointer is one key, so ``publish`` is one atomic ``SET``.
"""

from __future__ import annotations

import re
import time
import weakref

from reelrec.errors import Conflict, InvalidInput, NotFound
from reelrec.log import get_logger
from reelrec.storage._redis import AsyncReads, connect, connect_reads, redacted, translated
from reelrec.storage.cache import CacheRead, HomepageCache, _check_items, _check_version, _ttl

log = get_logger(__name__)

_PIPELINE_CHUNK = 2000  # commands per round trip when writing; bounds client memory


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)


class RedisCache(HomepageCache):
    def __init__(self, url: str, *, prefix: str = "rr", default_ttl: float | None = None):
        if not prefix or " " in prefix:
            raise InvalidInput("must be a non-empty string without spaces", field="cache_url.prefix")
        self.url = redacted(url)
        self.default_ttl = default_ttl
        self._r = self._connect(url)
        self._driver_url = url
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._p = f"{prefix}:c:"
        self._cur = f"{prefix}:c:cur"
        self._vers = f"{prefix}:c:vers"
        self._seen_version: str | None = None  # the pointer as of this client's last read

    def _connect(self, url: str):
        return connect(url)

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        return self._r.mget(keys)

    def _version_patterns(self, version: str) -> list[str]:
        """SCAN patterns that match every key of ``version`` (for ``drop_version``)."""
        return [f"{self._p}{_glob_escape(version)}:*"]

    def _k(self, version: str, key: str) -> str:
        return f"{self._p}{version}:{key}"

    def _resolve(self, version: str | None) -> str:
        if version is not None:
            return _check_version(version)
        with translated("GET version pointer", self.url):
            cur = self._r.get(self._cur)
        if cur is None:
            raise NotFound("no cache version is published yet")
        return cur.decode()

    def put(self, items, *, version=None, ttl=None):
        _check_items(items)
        ttl = _ttl(ttl, self.default_ttl)
        px = int(round(ttl * 1000)) if ttl else None
        if px == 0:
            px = 1
        v = self._resolve(version)
        with translated("put pages", self.url):
            pipe = self._r.pipeline(transaction=False)
            pipe.hsetnx(self._vers, v, repr(time.time()))
            n = 1
            for k, val in items.items():
                pipe.set(self._k(v, k), bytes(val), px=px)
                n += 1
                if n >= _PIPELINE_CHUNK:
                    pipe.execute()
                    n = 0
            pipe.execute()

    def _reads(self, keys: list[str], version: str | None):
        """The commands of one read, for both clients: yields ``("get", key)`` or ``("mget",
        keys)``, is sent each reply, and returns the ``CacheRead``. Without a version the pointer
        rides in the same MGET as the pages (one command, one trip); only right after a switch
        is the read repeated under the new version."""
        if version is not None:
            v = _check_version(version)
            return CacheRead(v, (yield "mget", [self._k(v, k) for k in keys]) if keys else [])
        for _ in range(3):
            seen = self._seen_version
            if seen is None:
                res = [(yield "get", self._cur)]
            else:
                res = yield "mget", [self._cur] + [self._k(seen, k) for k in keys]
            cur = None if res[0] is None else res[0].decode()
            if cur is None:
                return CacheRead(None, [None] * len(keys))
            if cur == seen:
                return CacheRead(cur, res[1:])
            self._seen_version = cur  # the pointer moved: read again under the new version
        return CacheRead(cur, (yield "mget", [self._k(cur, k) for k in keys]) if keys else [])

    def get_many(self, keys, *, version=None):
        reads = self._reads(list(keys), version)
        with translated("MGET", self.url):
            # inside: a cluster client is built (and discovers its nodes) on first use
            call = {"get": self._r.get, "mget": self._mget}
            try:
                command = next(reads)
                while True:
                    command = reads.send(call[command[0]](command[1]))
            except StopIteration as done:
                return done.value

    async def aget_many(self, keys, *, version=None):
        """``get_many`` on an asyncio client (one per event loop, ``connect_reads``): the same
        commands, without a worker thread per read."""
        seen, client = self._seen_version, self._async_client()
        if version is None and seen is not None and type(client) is AsyncReads:
            # the usual read, without the generator: the pointer and the pages under the version
            # last seen, in one MGET (AsyncReads raises reelrec's own errors)
            k = self._k
            res = await client.mget([self._cur, *[k(seen, key) for key in keys]])
            if res[0] is not None and res[0].decode() == seen:
                return CacheRead(seen, res[1:])
        reads = self._reads(list(keys), version)
        with translated("MGET", self.url):
            r = self._async_client()
            call = {"get": r.get, "mget": r.mget}
            try:
                command = next(reads)
                while True:
                    command = reads.send(await call[command[0]](command[1]))
            except StopIteration as done:
                return done.value

    def _async_client(self):
        """The asyncio client of the running loop (its connections belong to that loop)."""
        import asyncio
        loop = asyncio.get_running_loop()
        got = self._aclients.get(loop)
        if got is None:
            got = self._aclients[loop] = connect_reads(self._driver_url)
        return got

    def delete(self, keys, *, version=None):
        keys = list(keys)
        if not keys:
            return 0
        v = self._resolve(version)
        with translated("DEL", self.url):
            return int(self._r.delete(*[self._k(v, k) for k in keys]))

    def publish(self, version):
        _check_version(version)
        with translated("publish", self.url):
            if not self._r.hexists(self._vers, version):
                raise NotFound(f"cache version {version!r} has no pages")
            prev = self._r.set(self._cur, version, get=True)
        self._seen_version = version
        prev = None if prev is None else prev.decode()
        log.info("cache version published", version=version, previous=prev, url=self.url)
        return prev

    def current_version(self):
        with translated("GET version pointer", self.url):
            cur = self._r.get(self._cur)
        return None if cur is None else cur.decode()

    def versions(self):
        with translated("HGETALL versions", self.url):
            h = self._r.hgetall(self._vers)
        return [k.decode() for k, _ in sorted(h.items(), key=lambda kv: float(kv[1]))]

    def drop_version(self, version):
        _check_version(version)
        if version == self.current_version():
            raise Conflict(f"cannot drop the published cache version {version!r}")
        n = 0
        with translated("drop version", self.url):
            batch: list[bytes] = []
            for pattern in self._version_patterns(version):
                for key in self._r.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        n += self._r.unlink(*batch)
                        batch.clear()
            if batch:
                n += self._r.unlink(*batch)
            self._r.hdel(self._vers, version)
        log.info("cache version dropped", version=version, keys=n, url=self.url)
        return n

    def ping(self):
        with translated("PING", self.url):
            self._r.ping()

    def memory_usage(self, key: str, *, version: str | None = None) -> int | None:
        """Bytes Redis spends on one key (``MEMORY USAGE``), for capacity planning."""
        v = self._resolve(version)
        with translated("MEMORY USAGE", self.url):
            return self._r.memory_usage(self._k(v, key), samples=0)

    async def aclose(self):
        import asyncio
        got = self._aclients.pop(asyncio.get_running_loop(), None)
        if got is not None:
            await got.aclose()

    def close(self):
        self._r.close()
