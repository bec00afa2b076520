"""MovieLens importer: a real data set into the catalog, the user table and the behavioural lake.

In DESIGN.md's picture this is a batch source beside the event bus: it writes what the
aggregator would have written (``rating`` events in the lake, partitioned by event date), so the
batch layer, the evaluator and the CLI work on real behaviour exactly as on simulated behaviour.

Two layouts are recognised by their files:

* **MovieLens 100K** (``u.data`` tab-separated ``user item rating epoch``; ``u.item`` latin-1,
  pipe-separated, with 19 genre flags; ``u.user`` ``id|age|gender|occupation|zip``);
* **ml-latest-small** and the other ``ml-latest`` / ``ml-20m`` / ``ml-25m`` exports
  (``ratings.csv``, ``movies.csv`` with "Title (Year)" and pipe-separated genres, ``tags.csv``).

What becomes what:

* Titles: ``title_id`` is the MovieLens id as a string; ``name`` is the MovieLens title without
  its trailing " (Year)"; ``kind`` is ``documentary`` when the Documentary genre is present, else
  ``movie`` (MovieLens has no series); ``release_date`` is u.item's date (100K) or 1 January of
  the year in the title (ml-latest); ``added_date`` is the day of the title's first rating (the
  first day anyone could have watched it on the service), null when nobody rated it; runtime,
  languages, origin and maturity are unknown (null); ``regions`` is empty (available everywhere).
* Genres (``GENRE_MAP``): lower-cased MovieLens names, except Children's / Children -> ``family``
  (reelrec's name for it); ``unknown`` and ``(no genres listed)`` give no genre; ``IMAX`` is a
  screen format rather than a genre and is dropped.
* Users: ``user_id`` is the MovieLens id as a string; 100K adds age, gender, occupation and zip.
  ``region`` is ``US`` for every user: MovieLens is a US service and 100K's zip codes are (nearly
  all) US ones, but a few users abroad are mislabelled by this. ``signup_ts`` is the user's first
  rating. ml-latest users are those who rated something.
* Events: one ``rating`` event per rating, at its original timestamp (UTC), with the MovieLens
  value unchanged (1-5 in 100K, 0.5-5 in ml-latest; the lake accepts 0-10), region ``US``.
  ``event_id`` is ``ml:<user>:<item>:<epoch seconds>``, so importing the same folder twice
  appends nothing the second time.
* ``tags.csv`` is not imported: a tag is free text about a title, not a viewing, a rating or a
  search (reelrec's ``search`` events have no title), and turning it into one of those would
  invent behaviour. Its row count is logged.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reelrec.errors import FieldError, InvalidInput
from reelrec.importers import ImportSummary
from reelrec.importers._tables import (
    TS_MS,
    Delimited,
    convert_or_locate,
    first_ts_by,
    lists_from_pairs,
    lookup,
    read_delimited,
    titles_table,
    users_table,
    write_import,
)
from reelrec.log import get_logger

log = get_logger(__name__)

# u.item's 19 flag columns, in file order (u.genre lists the same names and indexes)
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
# MovieLens genre -> reelrec genre; None drops it; any other name is lower-cased
GENRE_MAP: dict[str, str | None] = {
    "Children's": "family",
    "Children": "family",
    "unknown": None,
    "(no genres listed)": None,
    "IMAX": None,
}
REGION = "US"
RATING_RANGE = (0.0, 10.0)
_YEAR = r"\s*\((\d{4})\)\s*$"


def import_movielens(path: Path, settings) -> ImportSummary:
    """Import a MovieLens folder (100K or ml-latest layout) into ``settings.data_dir``.

    Titles and users replace those with the same ids in an existing catalog / user table and
    leave the others; rating events already in the lake are not appended again.

    Raises:
        InvalidInput: the folder is neither layout, or a file is malformed (the field names the
            file and column, with the line number).
        Unavailable: the lake refused the write.
    """
    path = Path(path)
    t0 = time.perf_counter()
    if (path / "u.data").is_file():
        layout, (titles, users, events) = "ml-100k", _read_100k(path)
    elif (path / "ratings.csv").is_file():
        layout, (titles, users, events) = "ml-latest", _read_latest(path)
    else:
        raise InvalidInput(FieldError("path", f"{path} is not a MovieLens folder: expected u.data "
                                              "(MovieLens 100K) or ratings.csv (ml-latest-small)"))
    appended = write_import(settings, titles, users, events, replace=True)
    log.info("movielens imported", layout=layout, events=events.num_rows, appended=appended,
             users=users.num_rows, titles=titles.num_rows,
             seconds=round(time.perf_counter() - t0, 2))
    return ImportSummary(events=events.num_rows, users=users.num_rows, titles=titles.num_rows,
                         appended=appended)


# --- MovieLens 100K ---------------------------------------------------------------------------
def _read_100k(path: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    for name in ("u.item", "u.user"):
        if not (path / name).is_file():
            raise InvalidInput(FieldError("path", f"{path} has u.data but no {name}"))
    flags = [f"g{i}" for i in range(len(GENRES_100K))]
    item = read_delimited(path / "u.item", delimiter="|", encoding="latin1", quoting=False,
                          column_names=["item", "title", "release", "video_release", "url", *flags])
    ids = item.convert("item", pa.int64()).cast(pa.string())
    n = len(ids)
    flag_matrix = np.column_stack([
        item.convert(f, pa.int8(), what="a genre flag (0 or 1)").to_numpy() for f in flags
    ]) if n else np.zeros((0, len(flags)), dtype=np.int8)
    bad = (flag_matrix != 0) & (flag_matrix != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise item.error(f"genre flag {col} ({GENRES_100K[col]})", "must be 0 or 1", int(row))
    rows, cols = np.nonzero(flag_matrix)  # row-major: rows come out sorted
    genres = lists_from_pairs(rows, pa.array(np.asarray(GENRES_100K, dtype=object)[cols], pa.string()), n)
    release = convert_or_locate(
        item.table.column("release"),
        lambda a: pc.strptime(pc.utf8_trim_whitespace(a), format="%d-%b-%Y", unit="s"),
        lambda i, v: item.error("release date", f"{v!r} is not a date like 01-Jan-1995", i),
    ).cast(pa.date32())
    names = _names(item, "title")

    user = read_delimited(path / "u.user", delimiter="|", quoting=False,
                          column_names=["user", "age", "gender", "occupation", "zip"])
    user_ids = user.convert("user", pa.int64()).cast(pa.string())
    age = user.convert("age", pa.int32(), nullable=True)

    data = read_delimited(path / "u.data", delimiter="\t", quoting=False,
                          column_names=["user", "item", "rating", "ts"])
    events = _rating_events(data, "user", "item", "rating", "ts", user_ids, ids)
    titles = _titles(ids, names, genres, release, events)
    users = users_table(len(user_ids), user_id=user_ids, region=_const(REGION, len(user_ids)),
                        signup_ts=_first_rating(user_ids, events, "user_id"), age=age,
                        gender=user.table.column("gender"),
                        occupation=user.table.column("occupation"), zip=user.table.column("zip"))
    return titles, users, events


# --- ml-latest(-small) ------------------------------------------------------------------------
def _read_latest(path: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    if not (path / "movies.csv").is_file():
        raise InvalidInput(FieldError("path", f"{path} has ratings.csv but no movies.csv"))
    movies = read_delimited(path / "movies.csv", delimiter=",",
                            include=["movieId", "title", "genres"])
    ids = movies.convert("movieId", pa.int64()).cast(pa.string())
    n = len(ids)
    split = pc.split_pattern(pc.fill_null(movies.table.column("genres"), ""), "|").combine_chunks()
    values = pc.utf8_trim_whitespace(pc.list_flatten(split))
    rows = pc.list_parent_indices(split).to_numpy()
    keep = pc.not_equal(values, "")
    genres = lists_from_pairs(pc.filter(pa.array(rows), keep).to_numpy(), pc.filter(values, keep), n)
    years = pc.struct_field(pc.extract_regex(movies.required("title"), r"\((?P<y>\d{4})\)\s*$"), [0])
    release = pc.binary_join_element_wise(years, "01-01", "-").cast(pa.date32())
    names = _names(movies, "title")

    ratings = read_delimited(path / "ratings.csv", delimiter=",",
                             include=["userId", "movieId", "rating", "timestamp"])
    user_ids = pc.unique(ratings.convert("userId", pa.int64())).sort().cast(pa.string())
    events = _rating_events(ratings, "userId", "movieId", "rating", "timestamp", user_ids, ids)
    if (path / "tags.csv").is_file():
        with open(path / "tags.csv", "rb") as fh:
            log.info("tags.csv not imported (tags are not behaviour)", rows=max(sum(1 for _ in fh) - 1, 0))
    titles = _titles(ids, names, genres, release, events)
    users = users_table(len(user_ids), user_id=user_ids, region=_const(REGION, len(user_ids)),
                        signup_ts=_first_rating(user_ids, events, "user_id"))
    return titles, users, events


# --- shared -----------------------------------------------------------------------------------
def _const(value: str, n: int) -> pa.Array:
    return pa.array(np.full(n, value, dtype=object), pa.string())


def _names(f: Delimited, column: str) -> pa.ChunkedArray:
    raw = pc.utf8_trim_whitespace(f.required(column))
    stripped = pc.replace_substring_regex(raw, _YEAR, "")
    return pc.if_else(pc.equal(pc.utf8_length(stripped), 0), raw, stripped)


def _map_genres(genres: pa.ListArray) -> pa.ListArray:
    """Apply ``GENRE_MAP`` to every genre, vectorised over the flattened list."""
    flat = pc.list_flatten(genres)
    rows = pc.list_parent_indices(genres)
    src = pa.array(list(GENRE_MAP), pa.string())
    dst = pa.array(list(GENRE_MAP.values()), pa.string())
    hit = pc.index_in(flat, value_set=src)
    mapped = pc.if_else(pc.is_null(hit), pc.utf8_lower(flat), pc.take(dst, hit))
    keep = pc.is_valid(mapped)
    return lists_from_pairs(pc.filter(rows, keep).to_numpy(), pc.filter(mapped, keep), len(genres))


def _titles(ids, names, genres, release, events: pa.Table) -> pa.Table:
    genres = _map_genres(genres if isinstance(genres, pa.Array) else genres.combine_chunks())
    n = len(ids)
    doc = np.zeros(n, dtype=bool)
    flat = pc.list_flatten(genres)
    doc[pc.filter(pc.list_parent_indices(genres), pc.equal(flat, "documentary")).to_numpy()] = True
    kind = pa.array(np.where(doc, "documentary", "movie").astype(object), pa.string())
    first = first_ts_by(events.column("title_id"), events.column("ts"))
    added = lookup(ids, first, "first").cast(pa.date32())
    return titles_table(n, title_id=ids, name=names, kind=kind, genres=genres,
                        release_date=release, added_date=added)


def _first_rating(user_ids, events: pa.Table, column: str) -> pa.Array:
    return lookup(user_ids, first_ts_by(events.column(column), events.column("ts")), "first")


def _rating_events(f: Delimited, ucol: str, icol: str, rcol: str, tcol: str,
                   known_users, known_items) -> pa.Table:
    users = f.convert(ucol, pa.int64()).cast(pa.string())
    items = f.convert(icol, pa.int64()).cast(pa.string())
    rating = f.convert(rcol, pa.float32())
    secs = f.convert(tcol, pa.int64(), what="epoch seconds")
    lo, hi = RATING_RANGE
    out = pc.or_(pc.less(rating, lo), pc.greater(rating, hi)).to_numpy(zero_copy_only=False)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise f.error(rcol, f"{rating[i].as_py()} is outside {lo:g}-{hi:g}", i)
    for col, ids, what in ((users, known_users, "user"), (items, known_items, "title")):
        unknown = pc.invert(pc.is_in(col, value_set=ids)).to_numpy(zero_copy_only=False)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise f.error(ucol if what == "user" else icol,
                          f"unknown {what} {col[i].as_py()!r} (not in the {what} file)", i)
    ts = pc.multiply_checked(secs, 1000).cast(TS_MS)
    event_id = pc.binary_join_element_wise("ml", users, items, secs.cast(pa.string()), ":")
    n = len(users)
    return pa.table({
        "event_id": event_id,
        "user_id": users,
        "title_id": items,
        "type": _const("rating", n),
        "ts": ts,
        "region": _const(REGION, n),
        "rating": rating,
    })
