"""What the Redis-backed roles share: connecting from a URL and translating redis-py errors.

Only the Redis cache and state modules import this, and only when a ``redis://`` or
``redis+cluster://`` URL is opened, so the embedded install needs no Redis client.
"""

from __future__ import annotations

import asyncio
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


class AsyncReads:
    """The read path's Redis client for an event loop: one connection, commands pipelined on it,
    replies matched in order, parsed by hiredis.

    A homepage read is one ``MGET``; through redis-py's asyncio client it cost ~3x the CPU of
    the command itself (a pool checkout, a stream writer, a timeout task and the client's
    observability hooks per command; docs/benchmarks.md, Serving). This sends the command's
    bytes on an ``asyncio.Protocol`` and resolves a future per reply. Commands issued in the
    same turn of the event loop (the reads of every request that arrived together) leave in one
    write, so under load a read costs a fraction of a system call instead of one. Plain ``redis://host:port/db``
    with an optional password (and user) only: ``connect_reads`` gives redis-py's client for
    TLS, sockets and anything else.

    A reply later than ``timeout`` seconds, a lost connection or an error reply raises
    ``Unavailable``; a timeout closes the connection (later replies would no longer match), and
    the next command connects again, so a Redis that comes back is used without a restart.
    """

    def __init__(self, host: str, port: int, db: int = 0, username: str | None = None,
                 password: str | None = None, *, timeout: float = 2.0):
        self.host, self.port, self.db = host, port, db
        self.username, self.password, self.timeout = username, password, timeout
        self._conn: _RespProtocol | None = None
        self._connecting = None

    async def _connection(self) -> "_RespProtocol":
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:  # one connect for every command that finds none
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> "_RespProtocol":
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _RespProtocol(loop), self.host, self.port), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"cannot connect to redis at {self.host}:{self.port}: "
                              f"{type(exc).__name__}: {exc}") from None
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username
                         else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", str(self.db)))
        try:
            for args in setup:
                await conn.call(_pack(*[a for a in args if a is not None]), self.timeout)
        except Unavailable:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def execute(self, *args: str) -> Any:
        """One command's reply (bytes, None or a list of them).

        Raises:
            Unavailable: no connection, no reply within ``timeout``, or an error reply.
        """
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await conn.call(_pack(*args), self.timeout)

    async def get(self, key: str) -> bytes | None:
        return await self.execute("GET", key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return await self.execute("MGET", *keys)

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _pack(*args: str) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _RespProtocol(asyncio.Protocol):
    """One connection: pipelined commands, one future per reply, in order."""

    def __init__(self, loop):
        import collections
        import hiredis
        self.loop, self.reader = loop, hiredis.Reader()
        self.error_type = hiredis.ReplyError
        self.waiting: collections.deque = collections.deque()
        self.transport = None
        self.closed = False
        self.outbox: list[bytes] | None = None  # commands waiting for this loop turn's one write
        self.watchdog = None  # one timer for the oldest reply still awaited (not one per command)

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_result(reply)

    def eof_received(self) -> None:
        self.close()

    def connection_lost(self, exc) -> None:
        self._fail(f"connection lost: {exc or 'closed by the server'}")

    def pause_writing(self) -> None:  # a command is small; the kernel's buffer holds many
        pass

    def resume_writing(self) -> None:
        pass

    def _fail(self, why: str) -> None:
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(Unavailable(f"redis {why}"))

    def _watch(self) -> None:
        """The watchdog's turn: fail everything if the oldest command awaited is past its
        deadline, else wake again at that deadline (replies that came in time moved it)."""
        self.watchdog = None
        if not self.waiting or self.closed:
            return
        deadline = self.waiting[0][1]
        if self.loop.time() >= deadline:
            fut = self.waiting[0][0]
            if not fut.done():
                fut.set_exception(Unavailable("redis did not answer in time"))
            self.close()  # the replies still to come would answer the wrong commands
        else:
            self.watchdog = self.loop.call_at(deadline, self._watch)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self._fail("connection closed")

    def _flush(self) -> None:
        """Send every command queued since the last flush in one write (one system call)."""
        out, self.outbox = self.outbox, None
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def call(self, payload: bytes, timeout: float) -> Any:
        if self.closed:
            raise Unavailable("redis connection closed")
        fut = self.loop.create_future()
        deadline = self.loop.time() + timeout
        self.waiting.append((fut, deadline))
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(deadline, self._watch)
        if self.outbox is None:
            self.outbox = [payload]
            self.loop.call_soon(self._flush)
        else:
            self.outbox.append(payload)
        reply = await fut
        if isinstance(reply, self.error_type):
            raise Unavailable(f"redis refused the command: {reply}")
        return reply


def connect_reads(driver_url: str, *, timeout: float = 2.0):
    """The read path's client for ``driver_url``: ``AsyncReads`` for plain ``redis://host``,
    redis-py's asyncio client otherwise (TLS, unix sockets, query options)."""
    from urllib.parse import unquote
    p = urlparse(driver_url)
    path = p.path.strip("/")
    if p.scheme == "redis" and p.hostname and not p.query and (path == "" or path.isdigit()):
        return AsyncReads(p.hostname, p.port or 6379, int(path or 0),
                          unquote(p.username) if p.username else None,
                          unquote(p.password) if p.password is not None else None, timeout=timeout)
    return connect_async(driver_url, timeout=timeout)
