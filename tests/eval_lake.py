"""Test helper: a lake of rating events from MovieLens files, for the evaluation tests.

Only the columns evaluation needs (rating events, titles with genres); the real importer is
``reelrec import movielens``. Also builds tiny hand-made lakes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from reelrec.config import Settings, load_settings
from reelrec.domain.catalog import TITLE_SCHEMA, Catalog
from reelrec.domain.events import EVENT_SCHEMA
from reelrec.storage.lake import open_lake

ML100K_GENRES = ["unknown", "action", "adventure", "animation", "children", "comedy", "crime",
                 "documentary", "drama", "fantasy", "film-noir", "horror", "musical", "mystery",
                 "romance", "sci-fi", "thriller", "war", "western"]


def rating_events(user: np.ndarray, item: np.ndarray, rating: np.ndarray, ts_s: np.ndarray,
                  prefix: str) -> pa.Table:
    u = pa.array([f"u{x}" for x in user])
    t = pa.array([f"{prefix}{x}" for x in item])
    cols = {
        "event_id": pc.binary_join_element_wise(u, t, ":"),
        "user_id": u,
        "title_id": t,
        "type": pa.array(["rating"] * len(user)),
        "ts": pa.array((np.asarray(ts_s, dtype=np.int64) * 1000), pa.timestamp("ms", tz="UTC")),
        "rating": pa.array(np.asarray(rating, dtype=np.float32)),
    }
    return pa.table([cols[f.name] if f.name in cols else pa.nulls(len(user), f.type)
                     for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def catalog_table(ids: list[str], names: list[str], genres: list[list[str]]) -> pa.Table:
    n = len(ids)
    return pa.table({
        "title_id": ids, "name": names, "kind": ["movie"] * n, "genres": genres,
        **{f.name: pa.nulls(n, f.type) for f in TITLE_SCHEMA
           if f.name not in ("title_id", "name", "kind", "genres")},
    }).select(TITLE_SCHEMA.names).cast(TITLE_SCHEMA)


def write_world(data_dir: Path, events: pa.Table, catalog: pa.Table) -> Settings:
    settings = load_settings(data_dir=data_dir)
    Catalog(catalog).save(data_dir)
    open_lake(settings.lake).append(events)
    return settings


def build_ml100k(src: Path, data_dir: Path) -> Settings:
    ratings = pacsv.read_csv(
        src / "u.data", read_options=pacsv.ReadOptions(column_names=["u", "i", "r", "t"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"))
    events = rating_events(ratings["u"].to_numpy(), ratings["i"].to_numpy(),
                           ratings["r"].to_numpy(), ratings["t"].to_numpy(), "ml100k:")
    ids, names, genres = [], [], []
    for line in (src / "u.item").read_text(encoding="latin-1").splitlines():
        f = line.split("|")
        ids.append(f"ml100k:{f[0]}")
        names.append(f[1] or f"item {f[0]}")
        genres.append([g for g, flag in zip(ML100K_GENRES, f[5:24]) if flag == "1"])
    return write_world(data_dir, events, catalog_table(ids, names, genres))


def build_mlsmall(src: Path, data_dir: Path) -> Settings:
    ratings = pacsv.read_csv(src / "ratings.csv")
    events = rating_events(ratings["userId"].to_numpy(), ratings["movieId"].to_numpy(),
                           ratings["rating"].to_numpy(), ratings["timestamp"].to_numpy(), "mls:")
    movies = pacsv.read_csv(src / "movies.csv")
    ids = [f"mls:{m}" for m in movies["movieId"].to_pylist()]
    genres = [[g.lower() for g in s.split("|") if g != "(no genres listed)"]
              for s in movies["genres"].to_pylist()]
    return write_world(data_dir, events, catalog_table(ids, movies["title"].to_pylist(), genres))
