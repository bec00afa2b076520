"""What the Redis-backed roles share: connecting from a URL and translating redis-py errors.

Only the Redis cache and state modules import this, and only when a ``redis://`` or
``redis+cluster://`` URL is opened, so the embedded install needs no Redis client.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import urlparse, urlunparse

from reelrec.errors import InvalidInput, Unavailable

try:
    import redis
    from redis import exceptions as rex
except ImportError as exc:  # pragma: no cover - only without the optional dependency
    raise Unavailable("redis:// needs the redis package: pip install 'reelrec[redis]'") from exc


def connect(driver_url: str, *, timeout: float = 2.0) -> "redis.Redis":
    """A client for ``redis://`` or ``rediss://``; connects lazily, on the first command."""
    try:
        return redis.Redis.from_url(
            driver_url, socket_connect_timeout=timeout, socket_timeout=timeout,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), field="redis_url") from None


def connect_async(driver_url: str, *, timeout: float = 2.0) -> "redis.asyncio.Redis":
    """``connect`` for asyncio code: redis-py's asyncio client, with the same timeouts."""
    import redis.asyncio
    try:
        return redis.asyncio.Redis.from_url(
            driver_url, socket_connect_timeout=timeout, socket_timeout=timeout,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), field="redis_url") from None


@contextmanager
def translated(what: str, url: str) -> Iterator[None]:
    """Turn redis-py's exceptions into reelrec's: a server we cannot use is ``Unavailable``."""
    try:
        yield
    except rex.ClusterDownError as exc:
        # CLUSTERDOWN / MASTERDOWN after redis-py's own retries: slots without a serving primary.
        raise Unavailable(f"redis cluster at {url} is down during {what}: {exc}") from exc
    except rex.RedisClusterException as exc:
        # Not a RedisError: no reachable startup node, slots not covered, a failed discovery.
        raise Unavailable(f"redis cluster at {url} unusable during {what}: {exc}") from exc
    except (rex.ConnectionError, rex.TimeoutError) as exc:
        raise Unavailable(f"redis at {url} unreachable during {what}: {exc}") from exc
    except rex.ResponseError as exc:
        # OOM, READONLY replica, MISCONF, a cluster MOVED we do not follow: the server refused.
        raise Unavailable(f"redis at {url} refused {what}: {exc}") from exc
    except rex.RedisError as exc:
        raise Unavailable(f"redis at {url} failed during {what}: {exc}") from exc


class LazyCluster:
    """A ``RedisCluster`` made on first use.

    redis-py's cluster client discovers the slot map when it is constructed; reelrec's openers
    promise not to connect, so the client is built by the first command (inside ``translated``,
    where a failed discovery becomes ``Unavailable``) and built again on the next command if that
    failed.
    """

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        c = self._client
        if c is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                c = self._client
        return c

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def connect_cluster(driver_url: str, *, role: str, timeout: float = 2.0) -> LazyCluster:
    """A cluster client for ``redis+cluster://[user:password@]host:port[,host:port...][/0]``.

    Every ``host:port`` is a startup node (the client finds the others from the first that
    answers); ``rediss+cluster://`` uses TLS. MOVED and ASK redirections, slot-map refreshes and
    retries after a failover are the client's. Nothing connects until the first command.
    """
    from redis.cluster import ClusterNode, RedisCluster

    p = urlparse(driver_url)
    if p.path not in ("", "/", "/0"):
        raise InvalidInput(f"a Redis Cluster has only database 0, got path {p.path!r}",
                           field=f"{role}_url")
    auth, _, hosts = p.netloc.rpartition("@")
    nodes = [hp.strip() for hp in hosts.split(",")]
    seeds: list[tuple[str, int]] = []
    for hp in nodes:
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInput(f"expected host:port for every cluster node, got {hp!r}",
                               field=f"{role}_url")
        seeds.append((host.strip("[]"), int(port)))
    scheme = "rediss" if p.scheme.startswith("rediss") else "redis"
    first = f"{auth}@{nodes[0]}" if auth else nodes[0]
    url = urlunparse(p._replace(scheme=scheme, netloc=first, path=""))

    def factory() -> RedisCluster:
        try:
            return RedisCluster(
                url=url, startup_nodes=[ClusterNode(h, port) for h, port in seeds[1:]],
                socket_connect_timeout=timeout, socket_timeout=timeout,
            )
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc), field=f"{role}_url") from None

    return LazyCluster(factory)


def redacted(url: str) -> str:
    """The URL without a password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
