import datetime as dt
import json

import pytest

from reelrec.domain.events import (EVENT_TYPES, events_to_table, parse_event, parse_ts,
                                   read_jsonl, table_to_events, validate_records)
from reelrec.errors import InvalidInput

UTC = dt.timezone.utc


def ev(**kw):
    base = {"user_id": "u1", "title_id": "m1", "type": "play_start", "ts": "2026-10-01T20:00:00Z"}
    base.update(kw)
    return base


def fields_of(exc: InvalidInput) -> dict[str, str]:
    return {e.field: e.reason for e in exc.errors}


def test_ts_accepts_iso_and_epoch():
    assert parse_ts("2026-10-01T20:00:00Z") == dt.datetime(2026, 10, 1, 20, tzinfo=UTC)
    assert parse_ts("2026-10-01T22:00:00+02:00") == dt.datetime(2026, 10, 1, 20, tzinfo=UTC)
    assert parse_ts(0) == dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_ts("1759348800") == dt.datetime.fromtimestamp(1759348800, UTC)
    with pytest.raises(ValueError):
        parse_ts("yesterday")


def test_event_id_generated_when_absent(small_catalog, now):
    a = parse_event(ev(), titles=small_catalog, now=now)
    b = parse_event(ev(), titles=small_catalog, now=now)
    assert a.event_id and b.event_id and a.event_id != b.event_id
    assert parse_event(ev(event_id="k1"), titles=small_catalog, now=now).event_id == "k1"


@pytest.mark.parametrize("rec, field, words", [
    (ev(type="binge"), "type", "unknown type"),
    (ev(type="progress", position_s=10), "watched_s", "required for type 'progress'"),
    (ev(type="progress", position_s=-1, watched_s=5), "position_s", "negative"),
    (ev(type="progress", position_s=10, watched_s=-5), "watched_s", "negative"),
    (ev(type="progress", position_s=7300, watched_s=5), "position_s", "past the runtime"),
    (ev(ts="2026-11-01T12:06:00Z"), "ts", "future"),
    (ev(title_id="nope"), "title_id", "unknown title"),
    (ev(title_id=None), "title_id", "required"),
    (ev(type="search", title_id=None), "query", "required for type 'search'"),
    (ev(type="search", title_id=None, query="   "), "query", "blank"),
    (ev(type="impression", shelf_id="top", position=1, slot_kind="random"), "slot_kind", "one of"),
    (ev(device="fridge"), "device", "must be one of"),
    (ev(user_id=None), "user_id", "required"),
    (ev(colour="red"), "colour", "not an event field"),
    (ev(type="rating", rating="five"), "rating", "must be a number"),
    (ev(type="onboarding", title_id=None, genres=[]), "genres", "1 to 10"),
])
def test_each_rule_names_field_and_reason(small_catalog, now, rec, field, words):
    with pytest.raises(InvalidInput) as info:
        parse_event(rec, titles=small_catalog, now=now)
    errs = fields_of(info.value)
    assert field in errs, errs
    assert words in errs[field]


def test_series_position_checked_against_episode_runtime(small_catalog, now):
    parse_event(ev(title_id="s1", type="progress", position_s=2900, watched_s=60),
                titles=small_catalog, now=now)
    with pytest.raises(InvalidInput):
        parse_event(ev(title_id="s1", type="progress", position_s=3100, watched_s=60),
                    titles=small_catalog, now=now)


def test_every_type_has_a_valid_example(small_catalog, now):
    payload = {"impression": {"shelf_id": "top-picks", "position": 0, "slot_kind": "explore"},
               "progress": {"position_s": 60, "watched_s": 60}, "rating": {"rating": 4.5},
               "search": {"query": "korean thrillers", "title_id": None},
               "onboarding": {"genres": ["Crime", "drama", "nature"], "title_id": None},
               "profile": {"title_id": None, "region": "in", "language": "hi"}}
    for t in EVENT_TYPES:
        e = parse_event(ev(type=t, **payload.get(t, {})), titles=small_catalog, now=now)
        assert e.type == t
    assert parse_event(ev(type="onboarding", title_id=None, genres=["Crime"]),
                       now=now).genres == ["crime"]


def test_batch_keeps_valid_and_reports_invalid_by_index(small_catalog, now):
    recs = [ev(event_id="a"), ev(type="nope"), "not an object", ev(event_id="b", device="tv")]
    rep = validate_records(recs, titles=small_catalog, now=now)
    assert [e.event_id for e in rep.events] == ["a", "b"]
    assert rep.rejected == 2
    assert {e.index for e in rep.errors} == {1, 2}


def test_jsonl_reports_line_numbers(tmp_path, small_catalog, now):
    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps(ev()) + "\n{broken\n" + json.dumps(ev(type="x")) + "\n")
    rep = validate_records(read_jsonl(p), titles=small_catalog, now=now, lines=True)
    assert rep.accepted == 1
    assert [(e.line, e.field) for e in rep.errors] == [(2, "json"), (3, "type")]


def test_arrow_round_trip(small_catalog, now):
    e = parse_event(ev(type="onboarding", title_id=None, genres=["crime"], event_id="x"), now=now)
    back = table_to_events(events_to_table([e]))[0]
    assert back == e


@pytest.mark.parametrize("name", ["type", "slot_kind", "device", "user_id", "query", "genres", "ts"])
@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], True, 3.5])
def test_wrong_json_types_are_field_errors_not_crashes(small_catalog, now, name, value):
    rec = ev(type="impression", shelf_id="s", position=1, slot_kind="novel")
    rec[name] = value
    try:
        parse_event(rec, titles=small_catalog, now=now)
    except InvalidInput as exc:
        assert name in fields_of(exc)
