"""The admin API and the batch jobs behind it: model versions, publishing a version (precompute
into the app's cache, then the switch), a corrupt version refused, the retrain schedule."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from reelrec.batch.jobs import JobRunner, RetrainScheduler
from reelrec.batch.versions import MANIFEST, ModelStore
from reelrec.config import load_settings
from reelrec.serve.api import create_app
from reelrec.storage.cache import open_cache

SEALED = ("format", "version", "created", "code_version", "files")


def copy_world(tiny_world, tmp_path, **overrides):
    """A writable copy of the session's trained and precomputed world."""
    shutil.copytree(tiny_world.data_dir, tmp_path / "data")
    return load_settings(data_dir=tmp_path / "data", **overrides)


def clone_version(settings, version: str) -> str:
    """A new, valid version holding ``version``'s files (a second version without training)."""
    store = ModelStore(settings.models_dir)
    manifest = {k: v for k, v in store.manifest(version).items() if k not in SEALED}

    def writer(folder):
        for p in store.path(version).iterdir():
            if p.name != MANIFEST:
                shutil.copy(p, folder / p.name)
    return store.write(writer, manifest)


def corrupt(settings, version: str) -> None:
    p = ModelStore(settings.models_dir).path(version) / "arrays.npz"
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)


def heavy_user(settings) -> str:
    from reelrec.homepage import ServingModel
    m = ServingModel.load(settings)
    return str(m.pipeline.user_ids[int(m.pipeline.users.positives.getnnz(axis=1).argmax())])


def wait_job(client, job_id, timeout=120.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        doc = client.get(f"/v1/admin/jobs/{job_id}").json()
        if doc["state"] in ("succeeded", "failed"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done within {timeout} s: {doc}")


@pytest.fixture
def world(tiny_world, tmp_path):
    return copy_world(tiny_world, tmp_path, retrain_interval_s=0)


def test_models_lists_versions_and_which_one_is_published_and_serving(world):
    v1 = ModelStore(world.models_dir).current()
    v2 = clone_version(world, v1)
    client = TestClient(create_app(world))
    doc = client.get("/v1/admin/models").json()
    assert doc["published"] == doc["serving"] == v1 and doc["refused"] == []
    rows = {r["version"]: r for r in doc["versions"]}
    assert set(rows) == {v1, v2}
    assert rows[v1]["published"] and rows[v1]["serving"] and rows[v1]["ok"]
    assert not rows[v2]["published"] and not rows[v2]["serving"] and rows[v2]["ok"]
    assert rows[v1]["counts"]["users"] > 0 and "ranker_valid_ndcg@10" in rows[v1]["metrics"]
    assert rows[v1]["created"]


def test_publish_precomputes_the_pages_then_switches_cache_and_store(world):
    store = ModelStore(world.models_dir)
    v1 = store.current()
    v2 = clone_version(world, v1)
    user = heavy_user(world)
    app = create_app(world)
    client = TestClient(app)
    assert client.get(f"/v1/users/{user}/homepage").json()["model_version"] == v1

    r = client.post(f"/v1/admin/models/{v2}/publish")
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/admin/jobs/{r.json()['id']}"
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["kind"] == "publish" and job["trigger"] == "api" and job["version"] == v2
    assert job["result"]["previous"] == v1 and job["result"]["pages"] > 0

    doc = client.get(f"/v1/users/{user}/homepage").json()
    assert doc["model_version"] == v2 and doc["mode"] == "personal"
    assert store.current() == v2 and app.state.cache.current_version() == v2
    models = client.get("/v1/admin/models").json()
    assert models["published"] == models["serving"] == models["loaded"] == v2
    # every page was written under the new version before the switch
    got = app.state.cache.get_many([f"u:{user}"], version=v2)
    assert got.values[0] is not None
    # the previous version's pages stay (a refused successor falls back on them)...
    assert set(app.state.cache.versions()) == {v1, v2}
    # ...and the snapshot of the embedded cache has the new version for the next start
    with open_cache(world.cache) as reopened:
        assert reopened.current_version() == v2

    # a third version: the oldest cache version goes, the previous one stays
    v3 = clone_version(world, v2)
    job = wait_job(client, client.post(f"/v1/admin/models/{v3}/publish").json()["id"])
    assert job["state"] == "succeeded", job
    assert set(app.state.cache.versions()) == {v2, v3} and job["result"]["cache_versions_dropped"] == [v1]


def test_corrupt_version_is_refused_with_409_and_the_previous_keeps_serving(world):
    store = ModelStore(world.models_dir)
    v1 = store.current()
    v2 = clone_version(world, v1)
    corrupt(world, v2)
    user = heavy_user(world)
    client = TestClient(create_app(world))
    before = client.get(f"/v1/users/{user}/homepage").json()

    r = client.post(f"/v1/admin/models/{v2}/publish")
    assert r.status_code == 409 and "arrays.npz" in r.json()["detail"], r.text
    assert client.get("/v1/admin/jobs").json() == []  # refused before any job started
    after = client.get(f"/v1/users/{user}/homepage").json()
    assert after == before and after["model_version"] == v1
    assert store.current() == v1
    rows = {x["version"]: x for x in client.get("/v1/admin/models").json()["versions"]}
    assert rows[v2]["ok"] is False and "checksum" in rows[v2]["error"]


def test_bad_version_ids_unknown_versions_and_unknown_jobs(world):
    client = TestClient(create_app(world))
    assert client.post("/v1/admin/models/nope/publish").status_code == 404
    for bad in ("..", ".tmp-x", "a b"):
        assert client.post(f"/v1/admin/models/{bad}/publish").status_code in (404, 422), bad
    assert client.post("/v1/admin/models/..%2Fcatalog/publish").status_code in (404, 422)
    assert client.get("/v1/admin/jobs/feedfacecafe").status_code == 404


def test_train_with_nothing_to_train_on_is_404_and_starts_no_job(tmp_path):
    client = TestClient(create_app(load_settings(data_dir=tmp_path, retrain_interval_s=0)))
    r = client.post("/v1/admin/train", json={"tune": False})
    assert r.status_code == 404 and "catalog" in r.json()["detail"], r.text
    assert client.get("/v1/admin/jobs").json() == []
    assert client.post("/v1/admin/train", json={"tune": "sometimes"}).status_code == 422


def test_one_job_at_a_time(world):
    """A second job while one runs is refused with 409 (the scheduler and the API share it)."""
    v1 = ModelStore(world.models_dir).current()
    v2 = clone_version(world, v1)
    with open_cache(world.cache) as cache:
        runner = JobRunner(world, cache, isolate=False)
        first = runner.start_publish(v2)
        from reelrec.errors import Conflict
        with pytest.raises(Conflict, match=first.id):
            runner.start_publish(v2)
        assert runner.wait(first.id, timeout=120).state == "succeeded"
        assert cache.current_version() == v2
        second = runner.start_publish(v1)  # free again: a rollback is a publish
        assert runner.wait(second.id, timeout=120).state == "succeeded"
        assert cache.current_version() == v1 and ModelStore(world.models_dir).current() == v1


def test_stopping_the_server_stops_a_training_child_and_nothing_changes(world):
    store = ModelStore(world.models_dir)
    v1 = store.current()
    with open_cache(world.cache) as cache:
        runner = JobRunner(world, cache)
        job = runner.start_retrain(tune=False)
        t0 = time.monotonic()
        while runner.training_process is None and time.monotonic() - t0 < 30:
            time.sleep(0.02)
        child = runner.training_process
        assert child is not None and child.is_alive()
        runner.close()
        done = runner.wait(job.id, timeout=60)
        assert done.state == "failed" and "training process died" in done.error, done
        assert not child.is_alive()
        assert store.current() == v1 and store.versions() == [v1] and cache.current_version() == v1


# --- the retrain schedule -------------------------------------------------------------------------
def test_schedule_is_due_an_interval_after_the_published_model_was_created(world):
    store = ModelStore(world.models_dir)
    import datetime as dt
    created = dt.datetime.fromisoformat(store.manifest(store.current())["created"]).timestamp()
    with open_cache(world.cache) as cache:
        s = RetrainScheduler(JobRunner(world, cache), world, interval_s=3600)
        assert s.next_due() == pytest.approx(created + 3600)
        assert s.tick(now=created + 3599) is None and s.last_attempt is None
        off = RetrainScheduler(JobRunner(world, cache), world, interval_s=0)
        assert off.tick(now=created + 10 ** 9) is None


def test_schedule_without_a_model_waits_an_interval_from_start(tmp_path):
    s = load_settings(data_dir=tmp_path)
    with open_cache(s.cache) as cache:
        sched = RetrainScheduler(JobRunner(s, cache), s, interval_s=600)
        assert sched.next_due() == pytest.approx(sched.started_at + 600)


def test_a_failed_scheduled_retrain_is_retried_an_interval_later(world):
    shutil.rmtree(world.data_dir / "lake")  # nothing to train on: the attempt fails at once
    with open_cache(world.cache) as cache:
        runner = JobRunner(world, cache)
        s = RetrainScheduler(runner, world, interval_s=60)
        due = s.next_due()
        assert s.tick(now=due - 1) is None and s.last_attempt is None
        assert s.tick(now=due + 1) is None and s.last_attempt == due + 1
        assert s.next_due() == pytest.approx(due + 61) and runner.list() == []


def backdate(settings, days: float) -> str:
    """Make the published model look ``days`` old (the manifest's own bytes are not checksummed)."""
    import datetime as dt
    store = ModelStore(settings.models_dir)
    v = store.current()
    p = store.path(v) / MANIFEST
    m = json.loads(p.read_text())
    m["created"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).isoformat()
    p.write_text(json.dumps(m))
    return v


def test_serve_retrains_on_schedule_and_goes_live(tiny_world, tmp_path):
    """The embedded server's nightly schedule: a model older than the interval is retrained, its
    pages precomputed into the server's cache and published, without a restart; the next
    retrain is due an interval after the new model."""
    world = copy_world(tiny_world, tmp_path, retrain_tune=False)
    v1 = backdate(world, days=2)
    app = create_app(world)
    with TestClient(app) as client:
        assert app.state.scheduler is not None and world.retrain_interval_s == 86_400
        t0 = time.monotonic()
        while not client.get("/v1/admin/jobs").json() and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        jobs = client.get("/v1/admin/jobs").json()
        assert len(jobs) == 1 and jobs[0]["kind"] == "retrain" and jobs[0]["trigger"] == "schedule", jobs
        job = wait_job(client, jobs[0]["id"], timeout=240)
        assert job["state"] == "succeeded", job
        v2 = job["version"]
        assert v2 != v1 and job["result"]["checks"] == [] and job["result"]["pages"] > 0
        assert client.get("/v1/users/stranger/homepage").json()["model_version"] == v2
        assert ModelStore(world.models_dir).current() == v2
        assert app.state.scheduler.next_due() > time.time() + 86_000
        assert len(client.get("/v1/admin/jobs").json()) == 1
    manifest = json.loads((ModelStore(world.models_dir).path(v2) / MANIFEST).read_text())
    assert manifest["config"]["tune"] is False


# --- make demo, without the server ------------------------------------------------------------------
def test_demo_simulates_trains_precomputes_and_shows_two_pages(tmp_path):
    from typer.testing import CliRunner
    from reelrec.cli import app
    args = ["demo", "--data", str(tmp_path / "d"), "--users", "200", "--titles", "120", "--days", "3",
            "--no-tune", "--no-serve"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = load_settings(data_dir=tmp_path / "d")
    store = ModelStore(s.models_dir)
    v = store.current()
    assert v and store.versions() == [v]
    with open_cache(s.cache) as cache:
        assert cache.current_version() == v
    out = r.output
    assert "simulating 200 users" in out and f"version {v} live" in out
    assert "a heavy viewer" in out and "a newcomer" in out
    assert out.count(f"model={v}") == 2
    assert "mode=personal" in out and "mode=cold_start" in out and "Top picks for you" in out

    again = CliRunner().invoke(app, args)  # a second run reuses the world and the model
    assert again.exit_code == 0, again.output
    assert "simulating" not in again.output and "its pages are in the cache" in again.output
    assert store.versions() == [v]
