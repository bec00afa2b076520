"""Titles and the catalog: the public ``Title`` type and an Arrow-backed ``Catalog``.

The catalog lives at ``<data_dir>/catalog/titles.parquet``. Batch code works on the arrays
(``Catalog.table``); request-time code looks titles up by id.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reelrec.errors import FieldError, InvalidInput, NotFound

Kind = Literal["movie", "series", "documentary"]
KINDS: tuple[str, ...] = ("movie", "series", "documentary")

TITLE_SCHEMA = pa.schema([
    pa.field("title_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("genres", pa.list_(pa.string()), nullable=False),
    pa.field("release_date", pa.date32()),
    pa.field("added_date", pa.date32()),
    pa.field("origin_region", pa.string()),
    pa.field("language", pa.string()),
    pa.field("regions", pa.list_(pa.string())),  # empty: available everywhere
    pa.field("runtime_min", pa.float32()),  # movies and documentaries
    pa.field("episodes", pa.int32()),  # series
    pa.field("episode_runtime_min", pa.float32()),  # series
    pa.field("maturity", pa.string()),
])


@dataclass
class Title:
    title_id: str
    name: str
    kind: str
    genres: list[str]
    release_date: dt.date | None = None
    added_date: dt.date | None = None
    origin_region: str | None = None
    language: str | None = None
    regions: list[str] = field(default_factory=list)
    runtime_min: float | None = None
    episodes: int | None = None
    episode_runtime_min: float | None = None
    maturity: str | None = None

    @property
    def runtime_s(self) -> float | None:
        """Length of one viewing unit: the film, or one episode of a series."""
        m = self.episode_runtime_min if self.kind == "series" else self.runtime_min
        return None if m is None else float(m) * 60.0

    def available_in(self, region: str | None) -> bool:
        return not self.regions or region is None or region.upper() in self.regions

    def validate(self) -> "Title":
        """Check the title's fields; returns self.

        Raises:
            InvalidInput: each bad field with its reason.
        """
        errs: list[FieldError] = []
        if not self.title_id or not str(self.title_id).strip():
            errs.append(FieldError("title_id", "must be a non-empty string"))
        if not self.name:
            errs.append(FieldError("name", "must be a non-empty string"))
        if self.kind not in KINDS:
            errs.append(FieldError("kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}"))
        if not isinstance(self.genres, list) or not all(isinstance(g, str) and g for g in self.genres):
            errs.append(FieldError("genres", "must be a list of non-empty strings"))
        for name in ("runtime_min", "episode_runtime_min"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                errs.append(FieldError(name, "must be positive"))
        if self.episodes is not None and self.episodes <= 0:
            errs.append(FieldError("episodes", "must be positive"))
        if errs:
            raise InvalidInput(errs)
        self.genres = list(dict.fromkeys(g.lower() for g in self.genres))  # a genre counts once
        self.regions = [r.upper() for r in self.regions]
        return self


class Catalog:
    """An immutable set of titles backed by an Arrow table, with id lookups."""

    def __init__(self, table: pa.Table):
        self.table = table.cast(TITLE_SCHEMA) if table.schema != TITLE_SCHEMA else table
        ids = self.table.column("title_id").to_pylist()
        self._index = {t: i for i, t in enumerate(ids)}
        if len(self._index) != len(ids):
            raise InvalidInput("duplicate title_id in catalog", field="title_id")
        kinds = self.table.column("kind").to_numpy(zero_copy_only=False)
        runtime = self.table.column("runtime_min").to_numpy(zero_copy_only=False)
        ep_runtime = self.table.column("episode_runtime_min").to_numpy(zero_copy_only=False)
        runtime = np.where(kinds == "series", ep_runtime, runtime).astype(np.float64)
        self.runtime_s = np.where(np.isnan(runtime), np.nan, runtime * 60.0)

    # --- construction and persistence ---------------------------------------------------
    @classmethod
    def from_titles(cls, titles: Iterable[Title]) -> "Catalog":
        rows = [t.validate().__dict__ for t in titles]
        return cls(pa.Table.from_pylist(rows, schema=TITLE_SCHEMA))

    @classmethod
    def load(cls, data_dir: Path | str) -> "Catalog":
        path = Path(data_dir) / "catalog" / "titles.parquet"
        if not path.exists():
            raise NotFound(f"no catalog at {path}; run `reelrec simulate` or `reelrec import` first")
        return cls(pq.read_table(path))

    def save(self, data_dir: Path | str) -> Path:
        path = Path(data_dir) / "catalog" / "titles.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(self.table, tmp)
        tmp.replace(path)
        return path

    # --- lookups -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, title_id: object) -> bool:
        return title_id in self._index

    def index_of(self, title_id: str) -> int:
        try:
            return self._index[title_id]
        except KeyError:
            raise NotFound(f"unknown title {title_id!r}") from None

    def get(self, title_id: str) -> Title:
        row = self.table.slice(self.index_of(title_id), 1).to_pylist()[0]
        return Title(**row)

    def runtime_s_of(self, title_id: str) -> float | None:
        i = self._index.get(title_id)
        if i is None:
            return None
        v = self.runtime_s[i]
        return None if np.isnan(v) else float(v)

    @property
    def ids(self) -> list[str]:
        return self.table.column("title_id").to_pylist()

    def genres(self) -> list[str]:
        """Every genre in the catalog, sorted."""
        return sorted(pc.unique(pc.list_flatten(self.table.column("genres"))).to_pylist())

    def upsert(self, title: Title) -> "Catalog":
        """A new catalog with ``title`` added or replaced."""
        title.validate()
        new = pa.Table.from_pylist([title.__dict__], schema=TITLE_SCHEMA)
        if title.title_id in self._index:
            keep = pc.not_equal(self.table.column("title_id"), title.title_id)
            return Catalog(pa.concat_tables([self.table.filter(keep), new]))
        return Catalog(pa.concat_tables([self.table, new]))
