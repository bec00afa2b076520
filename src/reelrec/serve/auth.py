"""API keys with scopes (read, write, admin), compared in constant time.

``REELREC_API_KEYS="k1:read,k2:read+write,k3:admin"``. Unset: no authentication (the server binds
127.0.0.1 by default). ``admin`` implies ``read`` and ``write``. Keys are never logged.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from reelrec.errors import InvalidInput

SCOPES = ("read", "write", "admin")


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[tuple[bytes, frozenset[str]], ...]

    @classmethod
    def parse(cls, spec: str | None) -> "ApiKeys | None":
        """Parse ``key:scope+scope,...``.

        Raises:
            InvalidInput: an entry without a key or with an unknown scope (the key is not echoed).
        """
        if not spec or not spec.strip():
            return None
        keys = []
        for n, entry in enumerate(spec.split(","), start=1):
            key, _, scopes = entry.strip().partition(":")
            if not key:
                raise InvalidInput(f"entry {n} has no key", field="api_keys")
            names = frozenset(s.strip() for s in (scopes or "read").split("+") if s.strip())
            bad = names - set(SCOPES)
            if bad:
                raise InvalidInput(f"entry {n} has unknown scope(s) {', '.join(sorted(bad))}; "
                                   f"use {', '.join(SCOPES)}", field="api_keys")
            if "admin" in names:
                names = names | {"read", "write"}
            keys.append((key.encode(), names))
        return cls(tuple(keys))

    def scopes_of(self, presented: str | None) -> frozenset[str] | None:
        """Scopes of a presented key, or None when it matches no key. Every stored key is
        compared, so timing does not reveal which prefix matched."""
        if not presented:
            return None
        p = presented.encode()
        found: frozenset[str] | None = None
        for key, scopes in self.keys:
            if hmac.compare_digest(key, p):
                found = scopes
        return found
