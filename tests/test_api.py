"""The HTTP layer in embedded mode: events, titles, errors, keys, metrics."""

import pytest
from fastapi.testclient import TestClient

from reelrec.config import load_settings
from reelrec.serve.api import create_app
from reelrec.storage.lake import open_lake


def ev(i, **kw):
    e = {"event_id": f"e{i}", "user_id": "u1", "type": "search", "query": "crime", "ts": "2026-01-01T00:00:00Z"}
    e.update(kw)
    return e


@pytest.fixture
def settings(tmp_path):
    return load_settings(data_dir=tmp_path, max_body_bytes=20_000, max_batch=50)


@pytest.fixture
def client(settings):
    return TestClient(create_app(settings))


def test_batch_keeps_valid_events_and_lists_rejected_by_index(client, settings):
    r = client.post("/v1/events", json=[ev(1), ev(2, type="nope"), ev(3), {"user_id": "u"}])
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2
    assert {x["index"] for x in body["rejected"]} == {1, 3}
    assert any(x["field"] == "type" and "unknown type" in x["reason"] for x in body["rejected"])
    assert open_lake(settings.lake).count() == 2  # durable before the 202


def test_resent_event_ids_are_accepted_but_not_double_counted(client, settings):
    assert client.post("/v1/events", json=ev(1)).status_code == 202
    assert client.post("/v1/events", json=[ev(1), ev(2)]).status_code == 202
    assert open_lake(settings.lake).count() == 2


def test_all_invalid_is_422_and_malformed_json_is_400(client):
    r = client.post("/v1/events", json=[{"type": "x"}])
    assert r.status_code == 422 and r.json()["rejected"][0]["index"] == 0
    r = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]


def test_oversized_body_and_batch(client):
    r = client.post("/v1/events", content=b"[" + b" " * 30_000 + b"]")
    assert r.status_code == 413
    r = client.post("/v1/events", json=[ev(i) for i in range(51)])
    assert r.status_code == 422 and "at most 50" in r.json()["detail"]


def test_titles_upsert_and_read(client):
    r = client.put("/v1/titles/t1", json={"name": "Heat", "kind": "movie", "genres": ["Crime"],
                                         "runtime_min": 120})
    assert r.status_code == 200 and r.json()["genres"] == ["crime"]
    assert client.get("/v1/titles/t1").json()["name"] == "Heat"
    assert client.get("/v1/titles/nope").status_code == 404
    r = client.put("/v1/titles/t2", json={"name": "X", "kind": "podcast"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "kind"
    # the new title is known to event validation at once
    assert client.post("/v1/events", json=ev(9, type="play_start", title_id="t1", query=None)).status_code == 202


def test_api_keys_and_scopes(tmp_path):
    s = load_settings(data_dir=tmp_path, api_keys="r1:read,w1:write,a1:admin")
    c = TestClient(create_app(s))
    assert c.post("/v1/events", json=ev(1)).status_code == 401
    assert c.post("/v1/events", json=ev(1), headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.post("/v1/events", json=ev(1), headers={"X-API-Key": "r1"}).status_code == 403
    assert c.post("/v1/events", json=ev(1), headers={"X-API-Key": "w1"}).status_code == 202
    assert c.post("/v1/events", json=ev(2), headers={"Authorization": "Bearer a1"}).status_code == 202
    assert c.get("/v1/titles/x", headers={"X-API-Key": "w1"}).status_code == 403
    assert c.get("/v1/titles/x", headers={"X-API-Key": "r1"}).status_code == 404
    assert c.get("/healthz").status_code == 200


def test_metrics_count_events_and_latency(client):
    client.post("/v1/events", json=[ev(1), {"type": "x"}])
    text = client.get("/metrics").text
    assert 'reelrec_events_total{outcome="accepted"} 1.0' in text
    assert 'reelrec_events_total{outcome="rejected"} 1.0' in text
    assert 'route="/v1/events"' in text
    assert client.get("/readyz").json()["ready"] is True
