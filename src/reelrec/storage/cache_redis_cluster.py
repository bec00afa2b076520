"""The homepage cache on a Redis Cluster (``redis+cluster://host:port``), via redis-py's cluster client.

Place in DESIGN.md: the same role as ``cache_redis`` (precompute and the speed layer write pages,
the API reads one user's page plus the shared shelves per homepage request), for a cache that has
outgrown one Redis node. Only the key names and the read grouping differ; every method, the
version pointer and the TTLs behave as on one node.

Key layout (``prefix`` defaults to ``rr``; ``{...}`` is the hash tag that picks the slot)::

    {rr:c}:cur                 STRING  the published version
    {rr:c}:vers                HASH    version -> unix time of its first write
    {rr:c}:<version>:s:<shelf> STRING  a shared shelf (every ``shelf_key``), with a TTL
    rr:c:<version>:{<key>}     STRING  a user's page (``page_key``) or any other key, with a TTL

The pointer, the version registry and every shelf share one slot, so they sit on one primary;
the pages, which are nearly all of the memory, spread over every slot by their own key. A
homepage read (pointer + one page + a few shelves) is therefore two ``MGET``s, one per slot,
sent as one cluster pipeline: one network round trip to at most two nodes, which answer in
parallel (a read of many pages sends one ``MGET`` per slot, still one round trip per node). As on one node the values are read under the version this client
saw last and the pointer rides in the same round trip; if it moved, the read is repeated once
under the new version. Every key read names its version, so a read never mixes versions; the
difference from one node is only that the pointer and the pages are read by two commands on
two nodes within that round trip rather than by one atomic ``MGET``.

A user's page keeps its slot across versions (the tag holds the key, not the version), so a
version switch moves no load between nodes.
"""

from __future__ import annotations

from reelrec.errors import InvalidInput
from reelrec.storage._redis import connect_cluster
from reelrec.storage.cache import HomepageCache, _check_version, shelf_key
from reelrec.storage.cache_redis import RedisCache, _glob_escape

_SHELF = shelf_key("")  # keys made by shelf_key share the pointer's slot


def _check_cluster_version(version: str) -> str:
    _check_version(version)
    if "{" in version or "}" in version:
        # A brace in the version would become the hash tag of every page of that version,
        # putting all of them in one slot.
        raise InvalidInput("must not contain braces on a Redis Cluster", field="version")
    return version


class RedisClusterCache(RedisCache):
    def __init__(self, url: str, *, prefix: str = "rr", default_ttl: float | None = None):
        if not prefix or any(c in prefix for c in " {}"):
            raise InvalidInput("must be a non-empty string without spaces or braces",
                               field="cache_url.prefix")
        super().__init__(url, prefix=prefix, default_ttl=default_ttl)
        self._shared = f"{{{prefix}:c}}:"
        self._cur = f"{self._shared}cur"
        self._vers = f"{self._shared}vers"

    def _connect(self, url: str):
        return connect_cluster(url, role="cache")

    async def aget_many(self, keys, *, version=None):
        # the cluster client groups the MGET by node; event-loop callers run it on a worker thread
        return await HomepageCache.aget_many(self, keys, version=version)

    async def aclose(self):
        pass

    def _k(self, version: str, key: str) -> str:
        if key.startswith(_SHELF):
            return f"{self._shared}{version}:{key}"
        return f"{self._p}{version}:{{{key}}}"

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        # One MGET per slot, pipelined: one command per slot, one round trip to every node.
        return self._r.mget_nonatomic(keys)

    def _version_patterns(self, version: str) -> list[str]:
        v = _glob_escape(version)
        return [f"{self._p}{v}:*", f"{_glob_escape(self._shared)}{v}:*"]

    def _resolve(self, version):
        if version is not None:
            _check_cluster_version(version)
        return super()._resolve(version)

    def get_many(self, keys, *, version=None):
        if version is not None:
            _check_cluster_version(version)
        return super().get_many(keys, version=version)

    def publish(self, version):
        return super().publish(_check_cluster_version(version))

    def drop_version(self, version):
        return super().drop_version(_check_cluster_version(version))
