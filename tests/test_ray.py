"""Precompute on Ray (``--engine ray``) against the local engine, on the ``tiny_world`` fixture.

One local Ray with two workers serves the whole module (starting Ray costs seconds). A page is a
function of the model, the profile, the seed, the user and the run's time, so the two engines
must write byte-identical pages, and so must a shard retried after its worker process died.
"""

from __future__ import annotations

import datetime as dt

import pytest

from reelrec.batch.precompute import precompute
from reelrec.errors import InvalidInput
from reelrec.storage.cache import open_cache

ray = pytest.importorskip("ray")

NOW = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.timezone.utc)
COUNTS = ("users", "personal", "cold_start", "genre_cap_violations", "kind_mix_off_by_more_than_one",
          "kind_mix_checked", "slot_counts", "page_bytes_total", "page_bytes_max", "shared_shelves")


def pages_of(cache, version):
    """Every key -> value of one version in a memory cache."""
    return {k: v for (ver, k), (v, _) in cache._data.items() if ver == version}


@pytest.fixture(scope="module")
def local_run(tiny_world):
    c = open_cache("memory://")
    rep = precompute(tiny_world, c, now=NOW, seed=5)
    return rep, pages_of(c, rep.version)


@pytest.fixture(scope="module")
def local_ray():
    from reelrec.batch.precompute_ray import connect
    started = connect(workers=2)
    yield
    if started:
        ray.shutdown()


def test_ray_pages_equal_local_pages_with_a_crashed_worker_retried(tiny_world, local_run, local_ray,
                                                                  tmp_path):
    want_rep, want = local_run
    assert want_rep.users > 200 and want_rep.personal > 100 and want_rep.cold_start > 0
    c = open_cache("memory://")
    # the worker process running shard 1 dies (os._exit) on its first attempt
    rep = precompute(tiny_world, c, now=NOW, seed=5, engine="ray", workers=2, shard_users=40,
                     _crash_once=(str(tmp_path), {1}))
    assert (tmp_path / "shard-1.crashed").exists()  # the crash did happen
    assert rep.engine == "ray" and rep.workers == 2
    assert rep.shards == -(-want_rep.users // 40)
    assert rep.version == want_rep.version and c.current_version() == rep.version
    got = pages_of(c, rep.version)
    assert set(got) == set(want)
    assert [k for k in want if got[k] != want[k]] == []
    for name in COUNTS:
        assert getattr(rep, name) == getattr(want_rep, name), name


def test_ray_workers_write_a_redis_cache_themselves(tiny_world, local_run, local_ray, redis_url):
    want_rep, want = local_run
    with open_cache(redis_url) as c:
        rep = precompute(tiny_world, c, now=NOW, seed=5, engine="ray", workers=2, cache_url=redis_url)
        assert c.current_version() == want_rep.version
        keys = sorted(want)
        got = c.get_many(keys)
    assert got.version == want_rep.version
    assert dict(zip(keys, got.values)) == want
    for name in COUNTS:
        assert getattr(rep, name) == getattr(want_rep, name), name


def test_a_different_seed_changes_only_the_explore_draws(tiny_world, local_run):
    want_rep, want = local_run
    c = open_cache("memory://")
    rep = precompute(tiny_world, c, now=NOW, seed=6)
    got = pages_of(c, rep.version)
    assert set(got) == set(want)
    assert any(got[k] != want[k] for k in want)  # the seed reaches the pages
    assert rep.personal == want_rep.personal and rep.genre_cap_violations == 0


@pytest.mark.parametrize("kw, field", [
    (dict(engine="spark"), "engine"),
    (dict(engine="local", address="ray://head:10001"), "address"),
    (dict(workers=0), "workers"),
    (dict(shard_users=-1), "shard_users"),
])
def test_bad_options_name_the_field(tiny_world, kw, field):
    with pytest.raises(InvalidInput) as e:
        precompute(tiny_world, open_cache("memory://"), **kw)
    assert e.value.errors[0].field == field
