"""Key-value logging: ``get_logger(__name__).info("fold-in applied", users=n, lag_ms=lag)``."""

from __future__ import annotations

import logging
import os
import sys


class KVLogger(logging.LoggerAdapter):
    def log(self, level, msg, *args, **fields):  # type: ignore[override]
        exc_info = fields.pop("exc_info", None)
        if self.logger.isEnabledFor(level):
            kv = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                          for k, v in fields.items())
            self.logger.log(level, f"{msg} {kv}".rstrip(), *args, exc_info=exc_info)

    def debug(self, msg, *a, **kw):  # type: ignore[override]
        self.log(logging.DEBUG, msg, *a, **kw)

    def info(self, msg, *a, **kw):  # type: ignore[override]
        self.log(logging.INFO, msg, *a, **kw)

    def warning(self, msg, *a, **kw):  # type: ignore[override]
        self.log(logging.WARNING, msg, *a, **kw)

    def error(self, msg, *a, **kw):  # type: ignore[override]
        self.log(logging.ERROR, msg, *a, **kw)


def get_logger(name: str) -> KVLogger:
    return KVLogger(logging.getLogger(name), {})


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("REELREC_LOG_LEVEL", "WARNING")).upper()
    logging.basicConfig(
        stream=sys.stderr, level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
