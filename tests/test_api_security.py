"""Walk every route of the OpenAPI schema with no key, a read, a write and an admin key."""

import re

import pytest
from fastapi.testclient import TestClient

from reelrec.config import load_settings
from reelrec.serve.api import create_app

KEYS = {"read": "key-r", "write": "key-w", "admin": "key-a"}
ALLOWED = {"read": {"read"}, "write": {"write"}, "admin": {"read", "write", "admin"}}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    spec = ",".join(f"{k}:{scope}" for scope, k in KEYS.items())
    return create_app(load_settings(data_dir=tmp_path_factory.mktemp("sec"), api_keys=spec))


def operations(app):
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_route_declares_its_scope(app):
    missing = [(m, p) for p, m, op in operations(app) if "x-scope" not in op]
    assert not missing, f"routes without x-scope: {missing}"


def test_every_route_enforces_its_scope(app):
    client = TestClient(app, raise_server_exceptions=False)
    checked = 0
    for path, method, op in operations(app):
        url = re.sub(r"\{[^}]+\}", "x", path)
        scope = op["x-scope"]

        def call(key):
            headers = {"X-API-Key": key} if key else {}
            return client.request(method.upper(), url, headers=headers, json={}).status_code

        if scope == "public":
            assert call(None) not in (401, 403), (method, path)
            continue
        assert call(None) == 401, (method, path)
        assert call("not-a-key") == 401, (method, path)
        for holder, key in KEYS.items():
            status = call(key)
            if scope in ALLOWED[holder]:
                assert status not in (401, 403), (method, path, holder, status)
            else:
                assert status == 403, (method, path, holder, status)
        checked += 1
    assert checked >= 3


def test_keys_are_never_logged(app, caplog):
    client = TestClient(app)
    with caplog.at_level("DEBUG"):
        client.post("/v1/events", json={"user_id": "u", "type": "search", "query": "q",
                                        "ts": "2026-01-01T00:00:00Z"}, headers={"X-API-Key": "key-w"})
        client.get("/v1/titles/x", headers={"X-API-Key": "key-r"})
    assert not any(k in r.getMessage() for r in caplog.records for k in KEYS.values())


def test_unknown_scope_in_configuration_is_refused(tmp_path):
    from reelrec.errors import InvalidInput
    with pytest.raises(InvalidInput, match="unknown scope"):
        create_app(load_settings(data_dir=tmp_path, api_keys="k:superuser"))


def test_cors_is_off_unless_configured(app):
    r = TestClient(app).options("/v1/titles/x", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
