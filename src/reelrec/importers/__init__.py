"""Importers: real data sets (MovieLens) and a user's own interaction files into the lake."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ImportSummary:
    """What an import read (events, users, titles in the source) and how many events were new.

    ``appended`` is smaller than ``events`` when the lake already held some of them (a
    re-import): event ids are deterministic, so those are not written again.
    """

    events: int
    users: int
    titles: int
    appended: int | None = None
