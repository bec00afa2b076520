"""Users: the public ``User`` type and the user table at ``<data_dir>/users/users.parquet``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reelrec.errors import NotFound

DEVICES: tuple[str, ...] = ("tv", "mobile", "tablet", "web")

USER_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("region", pa.string()),
    pa.field("language", pa.string()),
    pa.field("signup_device", pa.string()),
    pa.field("signup_ts", pa.timestamp("ms", tz="UTC")),
    pa.field("onboarding_genres", pa.list_(pa.string())),
    # demographic columns that imported data sets carry (MovieLens 100K); empty elsewhere
    pa.field("age", pa.int32()),
    pa.field("gender", pa.string()),
    pa.field("occupation", pa.string()),
    pa.field("zip", pa.string()),
])


@dataclass
class User:
    user_id: str
    region: str | None = None
    language: str | None = None
    signup_device: str | None = None
    signup_ts: dt.datetime | None = None
    onboarding_genres: list[str] = field(default_factory=list)
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None
    zip: str | None = None


def users_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / "users" / "users.parquet"


def save_users(table: pa.Table, data_dir: Path | str) -> Path:
    path = users_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table.cast(USER_SCHEMA), tmp)
    tmp.replace(path)
    return path


def load_users(data_dir: Path | str) -> pa.Table:
    path = users_path(data_dir)
    if not path.exists():
        raise NotFound(f"no users at {path}; run `reelrec simulate` or `reelrec import` first")
    return pq.read_table(path)
