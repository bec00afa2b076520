import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from reelrec.config import load_settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.users import load_users
from reelrec.errors import InvalidInput
from reelrec.importers.interactions import import_interactions
from reelrec.importers.movielens import import_movielens
from reelrec.storage.lake import open_lake

UTC = dt.timezone.utc


def settings(tmp_path: Path, name: str = "data"):
    return load_settings(data_dir=tmp_path / name)


def events_of(s) -> pa.Table:
    return open_lake(s.lake).scan()


# --- MovieLens 100K ---------------------------------------------------------------------------
@pytest.mark.slow
def test_ml100k_counts_titles_users_and_reimport(ml100k, tmp_path):
    s = settings(tmp_path)
    summary = import_movielens(ml100k, s)
    assert (summary.events, summary.users, summary.titles, summary.appended) == (100_000, 943, 1682, 100_000)

    ev = events_of(s)
    assert ev.num_rows == 100_000
    assert pc.unique(ev.column("type")).to_pylist() == ["rating"]
    assert pc.count_distinct(ev.column("user_id")).as_py() == 943
    # first line of u.data: 196	242	3	881250949
    row = ev.filter(pc.equal(ev.column("event_id"), "ml:196:242:881250949")).to_pylist()
    assert len(row) == 1
    assert (row[0]["user_id"], row[0]["title_id"], row[0]["rating"]) == ("196", "242", 3.0)
    assert row[0]["ts"] == dt.datetime.fromtimestamp(881250949, UTC)

    cat = Catalog.load(s.data_dir)
    assert len(cat) == 1682
    cold_fever = cat.get("1633")  # latin-1 in u.item
    assert cold_fever.name == "Á köldum klaka (Cold Fever)"
    assert cold_fever.release_date == dt.date(1996, 3, 8)
    assert cold_fever.genres == ["comedy", "drama"]
    hoop_dreams = cat.get("48")
    assert (hoop_dreams.kind, hoop_dreams.genres) == ("documentary", ["documentary"])
    toy_story = cat.get("1")
    assert toy_story.kind == "movie"
    assert toy_story.genres == ["animation", "family", "comedy"]  # Children's -> family
    assert cat.get("267").genres == []  # "unknown" is no genre
    kinds = dict(zip(*[c.to_pylist() for c in pc.value_counts(cat.table.column("kind")).flatten()]))
    assert kinds == {"movie": 1682 - 50, "documentary": 50}

    users = load_users(s.data_dir)
    assert users.num_rows == 943
    u1 = users.filter(pc.equal(users.column("user_id"), "1")).to_pylist()[0]
    assert (u1["age"], u1["gender"], u1["occupation"], u1["zip"], u1["region"]) == \
        (24, "M", "technician", "85711", "US")
    first_ts = pc.min(ev.filter(pc.equal(ev.column("user_id"), "1")).column("ts")).as_py()
    assert u1["signup_ts"] == first_ts

    files = len(open_lake(s.lake).files())
    again = import_movielens(ml100k, s)
    assert (again.events, again.appended) == (100_000, 0)
    assert events_of(s).num_rows == 100_000
    assert len(open_lake(s.lake).files()) == files
    assert len(Catalog.load(s.data_dir)) == 1682
    assert load_users(s.data_dir).num_rows == 943


@pytest.mark.slow
def test_ml_latest_small_counts(mlsmall, tmp_path):
    s = settings(tmp_path)
    summary = import_movielens(mlsmall, s)
    assert (summary.events, summary.users, summary.titles) == (100_836, 610, 9742)
    ev = events_of(s)
    assert ev.num_rows == 100_836
    # ratings.csv line 2: 1,1,4.0,964982703; half stars survive
    row = ev.filter(pc.equal(ev.column("event_id"), "ml:1:1:964982703")).to_pylist()[0]
    assert row["rating"] == 4.0
    assert 0.5 in pc.unique(ev.column("rating")).to_pylist()
    cat = Catalog.load(s.data_dir)
    toy = cat.get("1")
    assert (toy.name, toy.release_date) == ("Toy Story", dt.date(1995, 1, 1))
    assert toy.genres == ["adventure", "animation", "family", "comedy", "fantasy"]
    assert cat.get("193581").release_date == dt.date(2017, 1, 1)
    docs = cat.table.filter(pc.equal(cat.table.column("kind"), "documentary"))
    assert docs.num_rows == 440
    # "(no genres listed)" and IMAX give no genre
    genres = set(cat.genres())
    assert "imax" not in genres and "(no genres listed)" not in genres and "children" not in genres
    assert load_users(s.data_dir).num_rows == 610


def _copy_100k(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("u.item", "u.user"):
        shutil.copy(src / name, dst / name)
    with open(src / "u.data") as fh:
        head = [next(fh) for _ in range(5)]
    (dst / "u.data").write_text("".join(head))
    return dst


@pytest.mark.parametrize("line3, field, reason", [
    ("22\t377\tx\t878887116\n", "u.data:rating", "'x' is not a number"),
    ("22\t377\t1\n", "u.data", "expected 4 fields, got 3"),
    ("22\t377\t11\t878887116\n", "u.data:rating", "outside 0-10"),
    ("22\t99999\t1\t878887116\n", "u.data:item", "unknown title '99999'"),
    ("22\t377\t1\t1997-10-01\n", "u.data:ts", "not epoch seconds"),
])
def test_ml100k_malformed_line_is_named(ml100k, tmp_path, line3, field, reason):
    folder = _copy_100k(ml100k, tmp_path / "ml")
    lines = (folder / "u.data").read_text().splitlines(keepends=True)
    lines[2] = line3
    (folder / "u.data").write_text("".join(lines))
    s = settings(tmp_path)
    with pytest.raises(InvalidInput) as exc:
        import_movielens(folder, s)
    err = exc.value.errors[0]
    assert (err.field, err.line) == (field, 3)
    assert reason in err.reason
    assert not (s.data_dir / "lake").exists() or open_lake(s.lake).count() == 0


def test_ml100k_bad_item_date_names_its_line(ml100k, tmp_path):
    folder = _copy_100k(ml100k, tmp_path / "ml")
    lines = (folder / "u.item").read_bytes().split(b"\n")
    lines[9] = lines[9].replace(b"22-Jan-1996", b"32-Foo-1996")  # item 10, line 10
    (folder / "u.item").write_bytes(b"\n".join(lines))
    with pytest.raises(InvalidInput) as exc:
        import_movielens(folder, settings(tmp_path))
    assert (exc.value.errors[0].field, exc.value.errors[0].line) == ("u.item:release date", 10)


def test_not_a_movielens_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InvalidInput, match="not a MovieLens folder"):
        import_movielens(tmp_path / "x", settings(tmp_path))


def test_ml_latest_layout_with_crlf_quotes_and_missing_year(tmp_path):
    folder = tmp_path / "mlx"
    folder.mkdir()
    (folder / "movies.csv").write_bytes(
        b'movieId,title,genres\r\n'
        b'1,"Matrix, The (1999)",Action|Sci-Fi|IMAX\r\n'
        b'2,Cosmos,(no genres listed)\r\n'
        b'3,Planet Earth (2006),Documentary\r\n')
    (folder / "ratings.csv").write_bytes(
        b'userId,movieId,rating,timestamp\r\n'
        b'7,1,4.5,1000000000\r\n'
        b'7,3,5.0,1000086400\r\n'
        b'8,2,0.5,1000000001\r\n')
    s = settings(tmp_path)
    summary = import_movielens(folder, s)
    assert (summary.events, summary.users, summary.titles) == (3, 2, 3)
    cat = Catalog.load(s.data_dir)
    m = cat.get("1")
    assert (m.name, m.genres, m.release_date, m.kind) == ("Matrix, The", ["action", "sci-fi"],
                                                          dt.date(1999, 1, 1), "movie")
    assert m.added_date == dt.date(2001, 9, 9)
    c = cat.get("2")
    assert (c.name, c.genres, c.release_date) == ("Cosmos", [], None)
    assert cat.get("3").kind == "documentary"
    assert open_lake(s.lake).partitions() == ["date=2001-09-09", "date=2001-09-10"]


# --- interactions -----------------------------------------------------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_with_weights_and_mixed_times(tmp_path):
    f = write(tmp_path, "plays.csv",
              "account,show,stars,when\n"
              "a,x,4.5,1700000000\n"
              "a,y,2,2023-11-14T22:13:20Z\n"
              "b,x,10,2023-11-15 08:00\n")
    s = settings(tmp_path)
    summary = import_interactions(f, s, user_col="account", item_col="show", weight_col="stars",
                                  time_col="when")
    assert (summary.events, summary.users, summary.titles, summary.appended) == (3, 2, 2, 3)
    ev = events_of(s).sort_by("event_id").to_pylist()
    assert [e["event_id"] for e in ev] == ["ix:a:x:1700000000000", "ix:a:y:1700000000000",
                                           "ix:b:x:1700035200000"]
    assert [e["type"] for e in ev] == ["rating"] * 3
    assert [e["rating"] for e in ev] == [4.5, 2.0, 10.0]
    assert ev[2]["ts"] == dt.datetime(2023, 11, 15, 8, tzinfo=UTC)
    cat = Catalog.load(s.data_dir)
    x = cat.get("x")
    assert (x.name, x.kind, x.genres, x.added_date) == ("x", "movie", [], dt.date(2023, 11, 14))
    users = load_users(s.data_dir).sort_by("user_id").to_pylist()
    assert [u["user_id"] for u in users] == ["a", "b"]
    assert users[0]["signup_ts"] == dt.datetime.fromtimestamp(1700000000, UTC)

    again = import_interactions(f, s, user_col="account", item_col="show", weight_col="stars",
                                time_col="when")
    assert again.appended == 0
    assert events_of(s).num_rows == 3


def test_tsv_without_weight_or_time_gives_complete_events_and_keeps_the_catalog(ml100k, tmp_path):
    s = settings(tmp_path)
    folder = _copy_100k(ml100k, tmp_path / "ml")
    import_movielens(folder, s)
    before = events_of(s).num_rows
    f = write(tmp_path, "watched.tsv", "user\titem\n1\t1\n1\t1\nnew:u\tnovel:title\n")
    summary = import_interactions(f, s, user_col="user", item_col="item")
    assert (summary.events, summary.users, summary.titles, summary.appended) == (3, 2, 2, 3)
    ev = events_of(s)
    new = ev.filter(pc.equal(ev.column("type"), "complete")).sort_by("event_id").to_pylist()
    assert [e["event_id"] for e in new] == ["ix:1:1:n0", "ix:1:1:n1", "ix:new%3Au:novel%3Atitle:n0"]
    assert ev.num_rows == before + 3
    cat = Catalog.load(s.data_dir)
    assert len(cat) == 1683
    assert cat.get("1").name == "Toy Story"  # the MovieLens title is not replaced
    assert cat.get("novel:title").kind == "movie"
    users = load_users(s.data_dir)
    assert users.num_rows == 944
    u1 = users.filter(pc.equal(users.column("user_id"), "1")).to_pylist()[0]
    assert u1["occupation"] == "technician"
    # same file again: same ids (occurrence numbers), nothing appended
    assert import_interactions(f, s, user_col="user", item_col="item").appended == 0
    assert events_of(s).num_rows == before + 3


def test_parquet_with_timestamp_column(tmp_path):
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({
        "u": pa.array([1, 2, 2], pa.int64()),
        "i": ["t1", "t1", "t2"],
        "t": pa.array([dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 3)],
                      pa.timestamp("us")),
        "w": pa.array([1.0, 3.0, 5.0], pa.float32()),
    }), f)
    s = settings(tmp_path)
    summary = import_interactions(f, s, user_col="u", item_col="i", weight_col="w", time_col="t")
    assert (summary.events, summary.users, summary.titles) == (3, 2, 2)
    assert open_lake(s.lake).partitions() == ["date=2024-01-01", "date=2024-01-02", "date=2024-01-03"]
    assert sorted(events_of(s).column("user_id").to_pylist()) == ["1", "2", "2"]


@pytest.mark.parametrize("body, kwargs, field, line, reason", [
    ("u,i,w\na,x,1\nb,y,lots\n", {"weight_col": "w"}, "f.csv:w", 3, "'lots' is not a number"),
    ("u,i,w\na,x,1\nb,y,11\n", {"weight_col": "w"}, "f.csv:w", 3, "outside the rating range 0-10"),
    ("u,i,t\na,x,1700000000\nb,y,yesterday\n", {"time_col": "t"}, "f.csv:t", 3,
     "'yesterday' is neither epoch seconds nor ISO 8601"),
    ("u,i,t\na,x,2023-02-30\n", {"time_col": "t"}, "f.csv:t", 2, "neither epoch seconds"),
    ("u,i,t\na,x,4102444800\n", {"time_col": "t"}, "f.csv:t", 2, "in the future"),
    ("u,i\na,x\n,y\n", {}, "f.csv:u", 3, "is empty"),
    ("u,i\na,x\nb,y,z\n", {}, "f.csv", 3, "expected 2 fields, got 3"),
    ("u,i\na,x\n\nb,y\n", {}, "f.csv:u", 3, "is empty"),
])
def test_malformed_rows_are_named_with_their_line(tmp_path, body, kwargs, field, line, reason):
    f = write(tmp_path, "f.csv", body)
    s = settings(tmp_path)
    with pytest.raises(InvalidInput) as exc:
        import_interactions(f, s, user_col="u", item_col="i", **kwargs)
    err = exc.value.errors[0]
    assert (err.field, err.line) == (field, line)
    assert reason in err.reason
    assert not (s.data_dir / "lake").exists() or open_lake(s.lake).count() == 0


def test_missing_column_lists_the_columns_that_exist(tmp_path):
    f = write(tmp_path, "f.csv", "user,item\na,x\n")
    with pytest.raises(InvalidInput) as exc:
        import_interactions(f, settings(tmp_path), user_col="user", item_col="movie")
    err = exc.value.errors[0]
    assert err.field == "f.csv:movie"
    assert "'user', 'item'" in err.reason
    p = tmp_path / "f.parquet"
    pq.write_table(pa.table({"user": ["a"], "item": ["x"]}), p)
    with pytest.raises(InvalidInput, match="no such column; the file has 'user', 'item'"):
        import_interactions(p, settings(tmp_path), user_col="user", item_col="item", weight_col="w")


def test_parquet_errors_name_the_row_index(tmp_path):
    p = tmp_path / "f.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "item": ["x", "y"], "w": [1.0, float("nan")]}), p)
    with pytest.raises(InvalidInput) as exc:
        import_interactions(p, settings(tmp_path), user_col="user", item_col="item", weight_col="w")
    assert (exc.value.errors[0].field, exc.value.errors[0].index) == ("f.parquet:w", 1)


def test_separator_from_option_and_unknown_extension(tmp_path):
    f = write(tmp_path, "f.txt", "u;i\na;x\n")
    with pytest.raises(InvalidInput) as exc:
        import_interactions(f, settings(tmp_path), user_col="u", item_col="i")
    assert exc.value.errors[0].field == "sep"
    summary = import_interactions(f, settings(tmp_path), user_col="u", item_col="i", sep=";")
    assert summary.events == 1


def test_ids_that_look_like_missing_values_are_kept(tmp_path):
    f = write(tmp_path, "f.csv", "u,i\nNA,null\nNaN,N/A\n")
    s = settings(tmp_path)
    assert import_interactions(f, s, user_col="u", item_col="i").events == 2
    assert sorted(Catalog.load(s.data_dir).ids) == ["N/A", "null"]
    assert sorted(load_users(s.data_dir).column("user_id").to_pylist()) == ["NA", "NaN"]


def test_cli_missing_column_exits_with_the_error_not_an_abort(tmp_path):
    # The header used to be read with pyarrow's streaming CSV reader, whose read-ahead outlives
    # close(): a process exiting right after the error sometimes aborted ("terminate called
    # without an active exception", exit status 134) instead of exiting 2 with the message.
    f = write(tmp_path, "f.csv", "uid,iid\n1,a\n")
    for _ in range(3):
        r = subprocess.run([sys.executable, "-m", "reelrec.cli", "import", "interactions", str(f),
                            "--user-col", "user", "--item-col", "iid", "--data", str(tmp_path / "d")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "f.csv:user: no such column; the file has 'uid', 'iid'" in r.stderr
        assert "terminate called" not in r.stderr


def test_header_with_byte_order_mark_and_quotes(tmp_path):
    f = tmp_path / "f.csv"
    f.write_bytes('\ufeff"user id",item\n"a",x\n'.encode())
    summary = import_interactions(f, settings(tmp_path), user_col="user id", item_col="item")
    assert summary.events == 1
