"""URL parsing shared by the role openers (``open_cache``, ``open_state``, ``open_bus``).

Each role takes options in the query string (``redis://h:6379/0?prefix=rr&ttl=3600``); this
module splits the options reelrec understands from the driver's own URL and reports an unknown
or malformed option as ``InvalidInput`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from reelrec.errors import InvalidInput


@dataclass(frozen=True)
class ParsedURL:
    scheme: str
    netloc: str
    path: str
    options: dict[str, str]
    driver_url: str  # the URL without reelrec's own options
    driver_options: dict[str, str]  # the rest of the query, for the driver (or unknown)


def parse_url(url: str, known: set[str], *, role: str) -> ParsedURL:
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(f"expected a URL such as memory:// or redis://host:port, got {url!r}",
                           field=f"{role}_url")
    p = urlparse(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for k, v in parse_qsl(p.query, keep_blank_values=True):
        (ours.__setitem__(k, v) if k in known else theirs.append((k, v)))
    driver = urlunparse(p._replace(query=urlencode(theirs)))
    return ParsedURL(p.scheme.lower(), p.netloc, p.path, ours, driver, dict(theirs))


def option(opts: dict[str, str], name: str, cast: Callable[[str], Any], default: Any, *,
           role: str, check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    """Read one query option, converting it; a bad value is ``InvalidInput`` naming it."""
    if name not in opts:
        return default
    try:
        value = cast(opts[name])
    except (TypeError, ValueError):
        raise InvalidInput(f"cannot be read as {cast.__name__}: {opts[name]!r}",
                           field=f"{role}_url.{name}") from None
    if check is not None and not check(value):
        raise InvalidInput(f"must be {rule}, got {opts[name]!r}", field=f"{role}_url.{name}")
    return value


def unknown_options(opts: dict[str, str], allowed: set[str], *, role: str) -> None:
    extra = sorted(set(opts) - allowed)
    if extra:
        raise InvalidInput(f"unknown option(s) {', '.join(extra)}; known: {', '.join(sorted(allowed))}",
                           field=f"{role}_url")
