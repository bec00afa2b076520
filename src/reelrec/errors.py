"""One family of errors for every backend and layer.

Backends translate their driver's exceptions into these; the API maps them to HTTP codes
(NotFound 404, InvalidInput 422, Conflict 409, Unavailable 503).
"""

from __future__ import annotations

from dataclasses import dataclass


class ReelrecError(Exception):
    """Base class of every error reelrec raises on purpose."""


class NotFound(ReelrecError):
    """A user, title, model version or key does not exist."""


class Unavailable(ReelrecError):
    """A backend (Redis, Kafka, the lake's storage) cannot be reached or refused the operation."""


class Conflict(ReelrecError):
    """The operation contradicts current state (e.g. publishing a version that failed to load)."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one input field. ``index`` is the record's position in its batch."""

    field: str
    reason: str
    index: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        elif self.index is not None:
            where.append(f"index {self.index}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.field}: {self.reason}"

    def as_dict(self) -> dict:
        d = {"field": self.field, "reason": self.reason}
        if self.index is not None:
            d["index"] = self.index
        if self.line is not None:
            d["line"] = self.line
        return d


class InvalidInput(ReelrecError):
    """Input failed validation; ``errors`` names each field and reason."""

    def __init__(self, errors: list[FieldError] | FieldError | str, field: str | None = None):
        if isinstance(errors, str):
            errors = [FieldError(field or "input", errors)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))
