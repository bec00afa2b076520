"""What the Redis-backed roles share: connecting from a URL and translating redis-py errors.

Only ``cache_redis`` and ``state_redis`` import this, and only when a ``redis://`` URL is opened,
so the embedded install needs no Redis client.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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


@contextmanager
def translated(what: str, url: str) -> Iterator[None]:
    """Turn redis-py's exceptions into reelrec's: a server we cannot use is ``Unavailable``."""
    try:
        yield
    except (rex.ConnectionError, rex.TimeoutError) as exc:
        raise Unavailable(f"redis at {url} unreachable during {what}: {exc}") from exc
    except rex.ResponseError as exc:
        # OOM, READONLY replica, MISCONF, a cluster MOVED we do not follow: the server refused.
        raise Unavailable(f"redis at {url} refused {what}: {exc}") from exc
    except rex.RedisError as exc:
        raise Unavailable(f"redis at {url} failed during {what}: {exc}") from exc


def redacted(url: str) -> str:
    """The URL without a password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
