"""Homepages, users and onboarding through the API, on a small trained and precomputed world."""

import pytest
from fastapi.testclient import TestClient

from reelrec.domain.users import load_users
from reelrec.serve.api import create_app


@pytest.fixture(scope="module")
def client(tiny_world):
    return TestClient(create_app(tiny_world))


@pytest.fixture(scope="module")
def heavy_user(tiny_world):
    from reelrec.homepage import ServingModel
    m = ServingModel.load(tiny_world)
    return str(m.pipeline.user_ids[int(m.pipeline.users.positives.getnnz(axis=1).argmax())])


def test_known_user_gets_the_precomputed_personal_page(client, heavy_user):
    doc = client.get(f"/v1/users/{heavy_user}/homepage").json()
    assert doc["mode"] == "personal" and doc["model_version"]
    assert doc["shelves"][0]["id"] == "top-picks" and len(doc["shelves"][0]["items"]) == 20
    assert all(i["reason"] for s in doc["shelves"] for i in s["items"])
    kinds = {i["slot_kind"] for i in doc["shelves"][0]["items"]}
    assert "explore" in kinds


def test_unknown_user_gets_a_cold_start_page_for_the_region(client, tiny_world):
    doc = client.get("/v1/users/stranger/homepage?region=IN&device=mobile&hour=22").json()
    assert doc["mode"] == "cold_start"
    assert any(s["id"] == "trending-in" for s in doc["shelves"])


def test_onboarding_returns_a_page_led_by_the_picks(client):
    r = client.post("/v1/users/newbie/onboarding", json={"genres": ["Comedy", "drama", "romance"]})
    assert r.status_code == 200
    doc = r.json()
    assert doc["mode"] == "cold_start"
    top = doc["shelves"][0]["items"][:10]
    assert sum(bool({"comedy", "drama", "romance"} & set(i["genres"])) for i in top) >= 7
    assert client.post("/v1/users/x/onboarding", json={"genres": ["a", "b"]}).status_code == 422


def test_profile_change_is_accepted_and_moves_the_region(client, tiny_world):
    users = load_users(tiny_world.data_dir).column("user_id").to_pylist()
    u = users[0]
    assert client.put(f"/v1/users/{u}", json={"region": "kr"}).status_code == 202
    doc = client.get(f"/v1/users/{u}/homepage").json()
    assert any(s["id"] == "trending-kr" for s in doc["shelves"])


def test_similar_titles(client, tiny_world):
    from reelrec.domain.catalog import Catalog
    t = Catalog.load(tiny_world.data_dir).ids[0]
    r = client.get(f"/v1/titles/{t}/similar?k=5")
    assert r.status_code == 200 and 0 < len(r.json()) <= 5
    assert t not in [x["title_id"] for x in r.json()]
    assert client.get("/v1/titles/nope/similar").status_code == 404


def test_homepage_without_a_model_is_503(tmp_path):
    from reelrec.config import load_settings
    c = TestClient(create_app(load_settings(data_dir=tmp_path)))
    r = c.get("/v1/users/u/homepage")
    assert r.status_code == 503 and "Retry-After" in r.headers


def test_a_running_app_has_its_model_loaded_and_the_heap_frozen_until_shutdown(tiny_world):
    import gc
    app = create_app(tiny_world, speed_layer=False, scheduler=False)
    assert gc.get_freeze_count() == 0 and app.state.reader.serving() is None
    with TestClient(app) as c:
        # loaded before the first request, and out of the collector's full passes
        assert app.state.reader.serving() == app.state.cache.current_version()
        assert gc.get_freeze_count() > 10_000
        assert c.get("/healthz").status_code == 200
    assert gc.get_freeze_count() == 0


def test_the_homepage_route_answers_the_readers_document_byte_for_byte(client, tiny_world):
    """The route splices its JSON from fragments (``aread_json``); it must be the document
    ``read`` builds, encoded, for every user, in their own region and in another."""
    import orjson
    reader = client.app.state.reader
    users = load_users(tiny_world.data_dir).select(["user_id", "region"]).to_pylist()
    modes = set()
    for k, u in enumerate(users):
        for region in (u["region"], "KR")[: 1 + (k % 3 == 0)]:
            r = client.get(f"/v1/users/{u['user_id']}/homepage", params={"region": region})
            doc = reader.read(u["user_id"], region=region)
            assert r.content == orjson.dumps(doc)
            modes.add(doc["mode"])
    assert "personal" in modes
