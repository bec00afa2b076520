"""Distributed mode end to end, with real servers and real worker processes.

The API (``create_app`` with ``bus_url=kafka://``, cache and state on Redis, no speed layer in
process) publishes to a tansu broker; ``reelrec worker aggregate`` moves the events to a lake and
``reelrec worker speed`` folds them into the Redis state and rewrites pages in the Redis cache.
Events go in through the API; the pages change in Redis; the lake ends up with every accepted
event exactly once.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from fixtures_distributed import (Stream, applied, kafka_url, reelrec, redis_world, speed_worker,
                                  stop, titles, wait_for, watch)
from reelrec.serve.api import create_app
from reelrec.storage.cache import open_cache, page_key
from reelrec.storage.lake import open_lake


def thrillers_on(doc: dict, thriller_ids: set[str]) -> int:
    return sum(i["title_id"] in thriller_ids for s in doc["shelves"] for i in s["items"])


@pytest.fixture(scope="module")
def distributed(tiny_world, redis_server, kafka_server, tmp_path_factory):
    """A running distributed deployment: settings, the lake the aggregator writes, the logs."""
    tmp = tmp_path_factory.mktemp("distributed")
    s = redis_world(tiny_world, redis_server, db=1)
    bus = kafka_url(kafka_server, "dist", partitions=3)
    s = s.model_copy(update={"bus_url": bus})
    lake_dir = tmp / "lake"
    speed = speed_worker(s, bus, tmp / "speed.log")
    agg = reelrec("worker", "aggregate", "--bus", bus, "--data", str(s.data_dir), "--max-wait-s",
                  "0.2", "--progress-every-s", "0.5", log=tmp / "aggregate.log",
                  env={"REELREC_LAKE_URL": lake_dir.as_uri()})
    try:
        wait_for(lambda: "speed worker started" in (tmp / "speed.log").read_text(), 60,
                 "the speed worker to start", speed, agg)
        wait_for(lambda: "aggregator started" in (tmp / "aggregate.log").read_text(), 60,
                 "the aggregator to start", speed, agg)
        yield s, open_lake(lake_dir.as_uri()), tmp, (speed, agg)
    finally:
        codes = [stop(p) for p in (speed, agg)]
        assert codes == [0, 0], codes  # both stop cleanly on SIGTERM


def test_events_through_the_api_change_pages_in_redis_and_reach_the_lake_once(distributed):
    s, lake, tmp, procs = distributed
    catalog = titles(s)
    thriller_ids = {t["title_id"] for t in catalog if "thriller" in t["genres"]}
    thrillers = [t for t in catalog if t["title_id"] in thriller_ids and t["kind"] == "movie"]
    accepted: list[str] = []
    with TestClient(create_app(s, speed_layer=False)) as client, open_cache(s.cache_url) as cache:
        assert client.app.state.speed_worker is None  # the speed layer is a worker process here

        def post(events):
            r = client.post("/v1/events", json=events)
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == len(events)
            accepted.extend(e["event_id"] for e in events)

        # a new user: the cold-start page turns personal, with more thrillers
        new_url = "/v1/users/dist-new-user/homepage?region=US"
        before_new = client.get(new_url).json()
        assert before_new["mode"] == "cold_start"
        assert cache.get_many([page_key("dist-new-user")]).values == [None]
        now = time.time()
        post([e for k, t in enumerate(thrillers[:3])
              for e in watch("dist-new-user", t, now - 900 + k * 200)])

        # a known user with a precomputed page watches three thrillers
        pages = ((u, client.get(f"/v1/users/{u}/homepage").json())
                 for u in (f"u{i:06d}" for i in range(40)))
        known, before_known = next((u, d) for u, d in pages if d["mode"] == "personal")
        old_blob = cache.get_many([page_key(known)]).values[0]
        assert old_blob is not None
        unseen = [t for t in thrillers if t["title_id"] not in
                  {i["title_id"] for sh in before_known["shelves"] for i in sh["items"]}]
        post([e for k, t in enumerate(unseen[:3]) for e in watch(known, t, now - 800 + k * 200)])

        after_new = wait_for(lambda: (d := client.get(new_url).json())["mode"] == "personal" and d,
                             90, "the new user's personal page", *procs)
        assert thrillers_on(after_new, thriller_ids) > thrillers_on(before_new, thriller_ids)
        watched = {t["title_id"] for t in thrillers[:3]}
        assert not watched & {i["title_id"] for sh in after_new["shelves"] for i in sh["items"]}
        assert cache.get_many([page_key("dist-new-user")]).values[0] is not None  # in Redis

        wait_for(lambda: cache.get_many([page_key(known)]).values[0] != old_blob, 60,
                 "the known user's page rewritten in Redis", *procs)
        after_known = client.get(f"/v1/users/{known}/homepage").json()
        assert after_known["mode"] == "personal"
        assert thrillers_on(after_known, thriller_ids) > thrillers_on(before_known, thriller_ids)

        # a stream over many known users, with a batch sent twice (a client retry)
        users = [f"u{i:06d}" for i in range(40, 80)]
        stream = Stream(users, catalog, per_user=2, seed=5)
        batches = stream.batches(50)
        for b in batches:
            post(b)
        post(batches[0])  # re-sent ids: accepted again, applied and stored once

        def settled():
            got = applied(s, stream)
            return got if got["done"] else None
        wait_for(settled, 60, "the speed worker to apply the stream", *procs)
        # the counters follow the marks within the same batch
        got = wait_for(lambda: (g := applied(s, stream))["successes"] >= stream.trials and g, 10,
                       "the last counters", *procs)
        assert got["log_len"] == dict(stream.logged) == got["log_distinct"]
        assert got["trials"] == stream.trials and got["successes"] == stream.trials

    # the aggregator drains: every accepted event in the lake, exactly once
    expected = set(accepted)
    wait_for(lambda: lake.count() >= len(expected), 60, "the aggregator to drain", *procs)
    time.sleep(0.5)  # anything extra would have arrived with the last batch
    ids = lake.scan(columns=["event_id"]).column("event_id").to_pylist()  # deduplicated read
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    raw = lake.scan(columns=["event_id"], dedupe=False).column("event_id").to_pylist()
    assert set(raw) == expected  # nothing else was written, whatever the copies of the retry
    assert "aggregate progress" in (tmp / "aggregate.log").read_text()
