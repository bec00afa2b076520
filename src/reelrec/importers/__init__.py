"""Importers: real data sets (MovieLens) and a user's own interaction files into the lake."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ImportSummary:
    events: int
    users: int
    titles: int
