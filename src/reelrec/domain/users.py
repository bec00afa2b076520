"""Users: the public ``User`` type and the user table at ``<data_dir>/users/users.parquet``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reelrec.domain.matrix import index_of, seconds
from reelrec.errors import NotFound

DEVICES: tuple[str, ...] = ("tv", "mobile", "tablet", "web")
# each region's main time zone, standard time (UTC offset in hours), so that the hour of an event
# can be read as the user's local hour; a region not listed is taken as UTC
REGION_UTC_OFFSET_H: dict[str, float] = {
    "US": -5.0, "CA": -5.0, "MX": -6.0, "BR": -3.0, "AR": -3.0, "GB": 0.0, "IE": 0.0, "PT": 0.0,
    "FR": 1.0, "DE": 1.0, "ES": 1.0, "IT": 1.0, "NL": 1.0, "SE": 1.0, "PL": 1.0, "TR": 3.0,
    "IN": 5.5, "CN": 8.0, "SG": 8.0, "KR": 9.0, "JP": 9.0, "AU": 10.0, "NZ": 12.0,
}
DAYPARTS: tuple[str, ...] = ("night", "morning", "afternoon", "evening")  # local 0-6, 6-12, 12-18, 18-24


def utc_offset_h(regions) -> np.ndarray:
    """UTC offset (hours) of each region code (``REGION_UTC_OFFSET_H``; 0 when unknown or None):
    a sequence, or an Arrow string array (looked up through its distinct values)."""
    if isinstance(regions, (pa.Array, pa.ChunkedArray)):
        col = pa.chunked_array([regions]) if isinstance(regions, pa.Array) else regions
        enc = pc.dictionary_encode(pc.utf8_upper(col.cast(pa.string()))).combine_chunks()
        table = utc_offset_h(enc.dictionary.to_pylist())
        idx = enc.indices.to_numpy(zero_copy_only=False)
        valid = pc.is_valid(enc.indices).to_numpy(zero_copy_only=False)
        return np.where(valid, table[np.where(valid, idx, 0).astype(np.int64)] if len(table) else 0.0, 0.0)
    return np.array([REGION_UTC_OFFSET_H.get(str(r).upper(), 0.0) if r is not None else 0.0 for r in regions],
                    dtype=np.float64)


def daypart_cell(device: np.ndarray, local_hour: np.ndarray) -> np.ndarray:
    """The (device, local daypart) cell of a device index into DEVICES (-1 unknown) and a local
    hour in [0, 24) (NaN unknown); -1 where either is unknown."""
    ok = (device >= 0) & np.isfinite(local_hour)
    part = np.floor(np.nan_to_num(local_hour) / 6.0).astype(np.int64).clip(0, len(DAYPARTS) - 1)
    return np.where(ok, device * len(DAYPARTS) + part, -1)


def context_cell(device: np.ndarray, ts_s: np.ndarray, offset_h: np.ndarray) -> np.ndarray:
    """The (device, local daypart) cell of events: ``device`` index into DEVICES (-1 unknown),
    epoch seconds and the UTC offset of their region; -1 where the device is unknown."""
    return daypart_cell(device, np.mod(ts_s / 3600.0 + offset_h, 24.0))


def table_regions(users: pa.Table | None, user_ids) -> np.ndarray:
    """Each of ``user_ids``' region in the users table (object array, None where the table has
    none or no such user; a user listed twice: the last row, the latest write)."""
    out = np.full(len(user_ids), None, dtype=object)
    if users is not None and "region" in users.column_names and users.num_rows:
        n = users.num_rows
        latest_first = pa.array(np.arange(n - 1, -1, -1))
        at = index_of(pa.array([str(u) for u in user_ids], pa.string()),
                      users.column("user_id").combine_chunks().take(latest_first))
        reg = np.asarray(users.column("region").to_pylist(), dtype=object)
        out[at >= 0] = reg[n - 1 - at[at >= 0]]
    return out


@dataclass
class RequestContext:
    """Where and when a homepage request comes from, per user of a batch: the device (index into
    ``DEVICES``, -1 unknown) and the local hour (0-24, NaN unknown). The ranker's request
    features read it; an unknown request falls back to the user's most frequent
    (device, local daypart) cell."""

    device: np.ndarray  # (B,) int64
    hour: np.ndarray  # (B,) float64, local hour

    @classmethod
    def unknown(cls, n: int) -> "RequestContext":
        return cls(np.full(n, -1, np.int64), np.full(n, np.nan))

    @classmethod
    def of(cls, device: str | None, hour: float | None, n: int = 1) -> "RequestContext":
        """One request's context (``hour`` local, as a client sends it) for ``n`` users; an
        unknown device name counts as unknown."""
        d = DEVICES.index(device.lower()) if device and device.lower() in DEVICES else -1
        h = float(hour) % 24.0 if hour is not None else np.nan
        return cls(np.full(n, d, np.int64), np.full(n, h))

    def __len__(self) -> int:
        return len(self.device)

    def take(self, rows: np.ndarray) -> "RequestContext":
        return RequestContext(self.device[rows], self.hour[rows])

    @property
    def cell(self) -> np.ndarray:
        """The (device, local daypart) cell of each request (``context_cell``), -1 when the
        device or the hour is unknown."""
        return daypart_cell(self.device, self.hour)


def first_event_context(events: pa.Table, user_ids, regions=None, last: bool = False) -> RequestContext:
    """Each user's request context as the device and local hour of their first event in
    ``events`` (``last``: their latest one), the hour read in the time zone of the event's
    region, else the user's ``regions`` entry, else UTC: the session that opens a period (or
    the one in progress) stands for its request. Nothing else of the events is read; a user
    without an event there gets an unknown context."""
    n = len(user_ids)
    out = RequestContext.unknown(n)
    if events.num_rows == 0 or "device" not in events.column_names:
        return out
    row = index_of(events.column("user_id"), pa.array([str(u) for u in user_ids], pa.string()))
    t = seconds(events.column("ts"))
    ok = row >= 0
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    first = idx[np.lexsort((-t[idx] if last else t[idx], row[idx]))]
    first = first[np.r_[True, row[first][1:] != row[first][:-1]]]
    sel = pa.array(first)
    dev = index_of(events.column("device").take(sel), pa.array(list(DEVICES), pa.string()))
    off = utc_offset_h(regions)[row[first]] if regions is not None else np.zeros(len(first))
    if "region" in events.column_names:
        reg = events.column("region").take(sel)
        has = pc.is_valid(reg).to_numpy(zero_copy_only=False)
        off = np.where(has, utc_offset_h(reg), off)
    r = row[first]
    out.device[r] = dev
    out.hour[r] = np.mod(t[first] / 3600.0 + off, 24.0)
    return out


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
