"""What only a Redis Cluster has: key placement by hash tag, round trips per homepage read,
redirections after a slot moves, and a cluster that is down or gone. The shared behaviour of the
cluster backends is tested by the contract suites (test_cache_contract.py, test_state_contract.py).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections import Counter

import numpy as np
import pytest

from fixtures_servers import _stop, _wait_port, free_port
from reelrec.errors import InvalidInput, Unavailable
from reelrec.storage.cache import open_cache, page_key, shelf_key
from reelrec.storage.state import open_state

redis = pytest.importorskip("redis")
from redis.cluster import RedisCluster  # noqa: E402
from redis.crc import key_slot  # noqa: E402

SHELVES = [shelf_key("trending:IN"), shelf_key("top10:IN"), shelf_key("top10:global")]


@pytest.fixture
def raw(redis_cluster_url):
    """A plain redis-py cluster client on the same cluster, to look at what reelrec wrote."""
    r = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster://", "redis://", 1))
    yield r
    r.close()


def primaries(raw) -> list:
    return [redis.Redis(host=n.host, port=n.port) for n in raw.get_primaries()]


def slot(key: bytes | str) -> int:
    return key_slot(key if isinstance(key, bytes) else key.encode())


def test_pages_spread_over_every_node_while_pointer_and_shelves_share_one_slot(
        redis_cluster_url, raw):
    c = open_cache(redis_cluster_url)
    c.put({page_key(str(u)): b"p" for u in range(300)} | {k: b"s" for k in SHELVES}, version="v1")
    c.publish("v1")
    c.put({page_key("7"): b"p2"}, version="v2")
    keys = list(raw.scan_iter(match="*", count=1000))
    assert len(keys) == 300 + len(SHELVES) + 2 + 1  # pages, shelves, pointer, registry, v2 page
    assert len({slot(k) for k in keys if k.startswith(b"{rr:c}:")}) == 1
    assert {k for k in keys if k.startswith(b"{rr:c}:")} == {
        b"{rr:c}:cur", b"{rr:c}:vers", *(f"{{rr:c}}:v1:{s}".encode() for s in SHELVES)}
    # A user's page keeps its slot across versions, so a switch moves no load between nodes.
    assert slot(b"rr:c:v1:{u:7}") == slot(b"rr:c:v2:{u:7}")
    per_node = [r.dbsize() for r in primaries(raw)]
    assert len(per_node) == 3 and min(per_node) > 50, per_node
    c.close()


def test_a_homepage_read_is_one_mget_per_slot(redis_cluster_url, raw):
    c = open_cache(redis_cluster_url)
    c.put({page_key(str(u)): f"page-{u}".encode() for u in range(40)}
          | {k: k.encode() for k in SHELVES}, version="v1")
    c.publish("v1")
    reader = open_cache(redis_cluster_url)
    for u in range(40):  # learns the version and opens its connection to every node
        assert reader.get_many([page_key(str(u))]).version == "v1"
    nodes = primaries(raw)
    for r in nodes:
        r.config_resetstat()
    for u in range(1, 21):
        read = reader.get_many([page_key(str(u))] + SHELVES)
        assert read == ("v1", [f"page-{u}".encode()] + [k.encode() for k in SHELVES])
    calls: Counter = Counter()
    for r in nodes:
        for name, stats in r.info("commandstats").items():
            calls[name.removeprefix("cmdstat_")] += stats["calls"]
    for admin in ("info", "config", "config|resetstat"):
        calls.pop(admin, None)
    # 20 reads, each: one MGET of pointer + shelves (shared slot), one MGET of the page.
    assert dict(calls) == {"mget": 40}
    c.close(), reader.close()


def test_user_keys_share_a_slot_and_a_counter_window_stays_in_one_slot(redis_cluster_url, raw):
    s = open_state(f"{redis_cluster_url}?bucket_s=60")
    s.push_recent("42", ["m1"])
    s.set_fields("42", {"region": "IN"})
    s.set_vector("42", np.ones(8))
    s.add_exposure("42", ["m1"])
    s.set_in_progress("42", "m1", 1_790_000_000.0)
    for i in range(10):  # ten buckets of one counter, one of another
        s.bump("trending:IN", ["m1"], 1_790_000_000.0 + 60 * i)
    s.bump("}odd{counter", ["m2"], 1_790_000_000.0)
    s.bump("}odd{counter", ["m2"], 1_790_000_600.0)
    keys = list(raw.scan_iter(match="*", count=1000))
    user = {slot(k) for k in keys if k.startswith(b"rr:s:{42}:")}
    trending = {slot(k) for k in keys if k.startswith(b"rr:s:{w:trending:IN}:")}
    odd = {slot(k) for k in keys if k.startswith(b"rr:s:{w:}odd{counter}:")}
    assert len(user) == 1 and len(trending) == 1 and len(odd) == 1
    assert sum(k.startswith(b"rr:s:{42}:") for k in keys) == 5
    assert s.top("trending:IN", 5, at=1_790_000_600.0, window_s=3600) == [("m1", 10.0)]
    assert s.top("}odd{counter", 5, at=1_790_000_600.0, window_s=3600) == [("m2", 2.0)]
    s.close()


def _move_slot(raw, key: str) -> tuple[int, int]:
    """Migrate ``key``'s slot to another primary the way redis-cli --cluster reshard does."""
    s = slot(key)
    src_node = raw.nodes_manager.get_node_from_slot(s)
    dst_node = next(n for n in raw.get_primaries() if n.name != src_node.name)
    src, dst = (redis.Redis(host=n.host, port=n.port) for n in (src_node, dst_node))
    src_id, dst_id = (r.execute_command("CLUSTER MYID").decode() for r in (src, dst))
    dst.execute_command("CLUSTER SETSLOT", s, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", s, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", s, 1000):
        src.execute_command("MIGRATE", dst_node.host, dst_node.port, "", 0, 5000, "KEYS", *keys)
    for r in primaries(raw):
        r.execute_command("CLUSTER SETSLOT", s, "NODE", dst_id)
    return src_node.port, dst_node.port


def test_reads_and_writes_follow_a_slot_that_moved(redis_cluster_url, raw):
    c = open_cache(redis_cluster_url)
    s = open_state(redis_cluster_url)
    pages = {page_key(str(u)): f"page-{u}".encode() for u in range(20)}
    c.put(pages | {k: b"shelf" for k in SHELVES}, version="v1")
    c.publish("v1")
    s.set_vector("42", np.arange(4))
    assert c.get_many(list(pages)).values == list(pages.values())  # the client knows the map
    src, dst = _move_slot(raw, "rr:c:v1:{u:3}")
    assert src != dst
    _move_slot(raw, "{rr:c}:cur")
    _move_slot(raw, "rr:s:{42}:v")
    # The clients' slot maps are stale now: MOVED replies send them to the new owners.
    assert c.get_many(list(pages) + SHELVES) == ("v1", list(pages.values()) + [b"shelf"] * 3)
    c.put({page_key("3"): b"fresh"})
    assert c.get_many([page_key("3")]).values == [b"fresh"]
    np.testing.assert_array_equal(s.vectors(["42"])[0], np.arange(4, dtype=np.float32))
    c.close(), s.close()


@pytest.fixture
def lone_node():
    """A one-node cluster serving every slot, for the tests that break it."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed")
    port, workdir = free_port(), tempfile.mkdtemp(prefix="reelrec-redis-lone-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
         "--cluster-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "redis-server (cluster node)")
        r = redis.Redis(port=port)
        r.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
        while r.cluster("INFO")["cluster_state"] != "ok":
            time.sleep(0.02)
        yield port, proc, r
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_cluster_that_goes_down_or_loses_its_node_is_unavailable(lone_node):
    port, proc, r = lone_node
    c = open_cache(f"redis+cluster://127.0.0.1:{port}")
    s = open_state(f"redis+cluster://127.0.0.1:{port}")
    c.put({page_key("1"): b"x"} | {k: b"s" for k in SHELVES}, version="v1")
    c.publish("v1")
    s.set_vector("u1", np.ones(3))
    assert c.get_many([page_key("1")]).values == [b"x"] and s.seen("e1") is False
    r.execute_command("CLUSTER DELSLOTSRANGE", 0, 16383)  # no slot is served: CLUSTERDOWN
    with pytest.raises(Unavailable, match="down"):
        c.get_many([page_key("1")] + SHELVES)
    with pytest.raises(Unavailable, match="down"):
        s.seen_many(["e2", "e3"])
    _stop(proc)  # the node is gone: connection refused, then no node to rediscover from
    with pytest.raises(Unavailable):
        c.get_many([page_key("1")])
    with pytest.raises(Unavailable):
        c.put({page_key("1"): b"y"})
    with pytest.raises(Unavailable):
        s.vectors(["u1", "u2"])


def test_unreachable_cluster_is_unavailable_and_opening_does_not_connect():
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    c, s = open_cache(url), open_state(url)
    for call in (c.ping, lambda: c.get_many([page_key("1")]), s.ping, lambda: s.seen("e1")):
        with pytest.raises(Unavailable, match="cannot be connected"):
            call()
    c.close(), s.close()


def test_any_reachable_seed_node_finds_the_cluster(redis_cluster_url):
    seeds = f"127.0.0.1:{free_port()},{redis_cluster_url.removeprefix('redis+cluster://')}"
    c = open_cache(f"redis+cluster://{seeds}/0?prefix=seeded&ttl=60")
    c.put({page_key("1"): b"x"}, version="v1")
    c.publish("v1")
    assert c.get_many([page_key("1")]) == ("v1", [b"x"])
    c.close()


@pytest.mark.parametrize("url, field", [
    ("redis+cluster://127.0.0.1:7000/1", "cache_url"),
    ("redis+cluster://127.0.0.1:7000,nohost", "cache_url"),
    ("redis+cluster://127.0.0.1:7000?prefix=a{b}", "cache_url.prefix"),
    ("redis+cluster://127.0.0.1:7000?ttl=-1", "cache_url.ttl"),
])
def test_bad_cluster_urls_are_invalid_input(url, field):
    with pytest.raises(InvalidInput) as e:
        open_cache(url)
    assert e.value.errors[0].field == field
    state_url = url.replace("?ttl=-1", "?bucket_s=0")
    with pytest.raises(InvalidInput) as e:
        open_state(state_url)
    assert e.value.errors[0].field == field.replace("cache", "state").replace("ttl", "bucket_s")


def test_a_version_with_braces_is_refused_on_a_cluster():
    c = open_cache(f"redis+cluster://127.0.0.1:{free_port()}")  # refused before any connection
    with pytest.raises(InvalidInput) as e:
        c.put({page_key("1"): b"x"}, version="v{1}")
    assert e.value.errors[0].field == "version"
