"""The homepage cache contract, run against every backend: memory, a real redis-server and a real
three-node Redis Cluster."""

from __future__ import annotations

import random
import threading
import time

import pytest

from fixtures_servers import free_port
from reelrec.errors import Conflict, InvalidInput, NotFound, Unavailable
from reelrec.storage.cache import open_cache, page_key, shelf_key


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
def backend(request, tmp_path):
    """(open) where open() returns a client of one shared cache; memory clients share one object."""
    if request.param == "memory":
        cache = open_cache("memory://")
        opened = [cache]
        yield lambda: cache
    else:
        url = request.getfixturevalue(f"{request.param}_url")
        opened = []

        def open_one():
            c = open_cache(url)
            opened.append(c)
            return c
        yield open_one
    for c in opened:
        c.close()


def pages(version: str, users: range) -> dict[str, bytes]:
    return {page_key(str(u)): f"{version}|page-of-{u}".encode() for u in users}


def test_put_then_get_many_round_trip_in_key_order(backend):
    c = backend()
    rng = random.Random(7)
    items = {page_key(str(u)): rng.randbytes(rng.randint(0, 400)) for u in range(300)}
    items[shelf_key("trending:IN")] = b"\x00shelf\xff"
    c.put(items, version="v1")
    c.publish("v1")
    keys = list(items)
    rng.shuffle(keys)
    read = c.get_many(keys)
    assert read.version == "v1"
    assert read.values == [items[k] for k in keys]


def test_large_batch_spans_several_pipelines(backend):
    c = backend()
    items = pages("v1", range(5_000))
    c.put(items, version="v1")
    c.publish("v1")
    assert c.get_many(list(items)).values == list(items.values())


def test_missing_keys_read_as_none_and_nothing_published_reads_empty(backend):
    c = backend()
    assert c.get_many([page_key("1"), shelf_key("top10:global")]) == (None, [None, None])
    with pytest.raises(NotFound):
        c.put({page_key("1"): b"x"})  # no current version to write into
    c.put({page_key("1"): b"one"}, version="v1")
    assert c.get_many([page_key("1")]).values == [None]  # written but not yet published
    c.publish("v1")
    assert c.get_many([page_key("2"), page_key("1"), "u:"]).values == [None, b"one", None]
    assert c.get_many([]).values == []


def test_unknown_version_cannot_be_published(backend):
    c = backend()
    with pytest.raises(NotFound):
        c.publish("never-written")
    assert c.current_version() is None


def test_writes_go_to_current_version_and_switch_is_all_or_nothing(backend):
    c = backend()
    c.put(pages("v1", range(10)), version="v1")
    assert c.publish("v1") is None
    c.put({page_key("3"): b"v1|fresh"})  # speed layer writes into the serving version
    c.put(pages("v2", range(10)), version="v2")  # precompute builds the next one beside it
    keys = [page_key(str(u)) for u in range(10)]
    before = c.get_many(keys)
    assert before.version == "v1" and before.values[3] == b"v1|fresh"
    assert all(v.startswith(b"v1|") for v in before.values)
    assert c.publish("v2") == "v1"
    after = c.get_many(keys)
    assert after.version == "v2" and all(v.startswith(b"v2|") for v in after.values)
    assert c.get_many(keys, version="v1").values == before.values  # old version still readable
    assert c.versions() == ["v1", "v2"]


def test_another_client_sees_the_switch_on_its_next_read(backend):
    reader, writer = backend(), backend()
    writer.put(pages("v1", range(5)), version="v1")
    writer.publish("v1")
    assert reader.get_many([page_key("0")]) == ("v1", [b"v1|page-of-0"])
    writer.put(pages("v2", range(5)), version="v2")
    writer.publish("v2")
    assert reader.get_many([page_key("0")]) == ("v2", [b"v2|page-of-0"])
    assert reader.current_version() == "v2"


def test_async_reads_match_sync_reads_and_follow_a_switch(backend):
    """aget_many (the API's read on its event loop) reads what get_many reads, on every backend,
    and follows the pointer to a new version; reads from two event loops in turn both work."""
    import asyncio
    reader, writer = backend(), backend()
    assert asyncio.run(reader.aget_many([page_key("0")])) == (None, [None])
    writer.put(pages("v1", range(5)), version="v1")
    writer.put({shelf_key("top10:US"): b"\x00shelf"}, version="v1")
    writer.publish("v1")
    keys = [page_key("3"), page_key("missing"), shelf_key("top10:US"), page_key("0")]

    async def read(k, **kw):
        try:
            return await reader.aget_many(k, **kw)
        finally:
            await reader.aclose()

    assert asyncio.run(read(keys)) == reader.get_many(keys) == (
        "v1", [b"v1|page-of-3", None, b"\x00shelf", b"v1|page-of-0"])
    writer.put(pages("v2", range(5)), version="v2")
    writer.publish("v2")
    assert asyncio.run(read(keys[:1])) == ("v2", [b"v2|page-of-3"])
    assert asyncio.run(read(keys[:1], version="v1")) == ("v1", [b"v1|page-of-3"])


def test_readers_never_see_a_mix_of_versions_during_switches(backend):
    writer = backend()
    keys = [page_key(str(u)) for u in range(50)]
    for v in ("v1", "v2"):
        writer.put(pages(v, range(50)), version=v)
    writer.publish("v1")
    stop = threading.Event()
    reads: list = []
    problems: list = []

    def read_loop():
        r = backend()
        while not stop.is_set():
            version, values = r.get_many(keys)
            reads.append(version)
            prefixes = {v.split(b"|")[0].decode() if v else None for v in values}
            if prefixes != {version}:
                problems.append((version, prefixes))

    threads = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(200):
        writer.publish("v2" if i % 2 == 0 else "v1")
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert len(reads) > 0


def test_delete_and_drop_version(backend):
    c = backend()
    c.put(pages("v1", range(4)), version="v1")
    c.put(pages("v2", range(4)), version="v2")
    c.publish("v2")
    assert c.delete([page_key("0"), page_key("99")]) == 1
    assert c.get_many([page_key("0"), page_key("1")]).values == [None, b"v2|page-of-1"]
    with pytest.raises(Conflict):
        c.drop_version("v2")
    assert c.drop_version("v1") == 4
    assert c.get_many([page_key("1")], version="v1").values == [None]
    assert c.versions() == ["v2"]


def test_ttl_expires_pages_and_zero_means_no_expiry(backend):
    c = backend()
    c.put({page_key("short"): b"s"}, version="v1", ttl=0.3)
    c.put({page_key("forever"): b"f"}, version="v1", ttl=0)
    c.put({page_key("default"): b"d"}, version="v1")
    c.publish("v1")
    keys = [page_key("short"), page_key("forever"), page_key("default")]
    assert c.get_many(keys).values == [b"s", b"f", b"d"]
    time.sleep(0.45)
    assert c.get_many(keys).values == [None, b"f", b"d"]


def test_bad_input_names_the_field(backend):
    c = backend()
    with pytest.raises(InvalidInput) as e:
        c.put({page_key("1"): "not bytes"}, version="v1")  # type: ignore[dict-item]
    assert e.value.errors[0].field == "value"
    with pytest.raises(InvalidInput) as e:
        c.put({page_key("1"): b"x"}, version="has:colon")
    assert e.value.errors[0].field == "version"
    with pytest.raises(InvalidInput) as e:
        c.put({page_key("1"): b"x"}, version="v1", ttl=-1)
    assert e.value.errors[0].field == "ttl"


def test_memory_snapshot_restores_pages_pointer_and_ttls(tmp_path):
    path = tmp_path / "cache" / "pages.arrow"
    c = open_cache(f"memory://{path}")
    c.put(pages("v1", range(100)), version="v1")
    c.put({page_key("brief"): b"gone soon"}, version="v1", ttl=0.2)
    c.put(pages("v2", range(3)), version="v2")
    c.publish("v1")
    c.close()  # snapshots
    time.sleep(0.3)
    again = open_cache(f"memory://{path}?ttl=60")
    assert again.current_version() == "v1"
    assert again.versions() == ["v1", "v2"]
    keys = [page_key(str(u)) for u in range(100)]
    assert again.get_many(keys).values == list(pages("v1", range(100)).values())
    assert again.get_many([page_key("brief")]).values == [None]
    assert again.get_many([page_key("2")], version="v2").values == [b"v2|page-of-2"]
    assert again.default_ttl == 60


def test_memory_without_path_keeps_nothing(tmp_path):
    c = open_cache("memory://")
    c.put({page_key("1"): b"x"}, version="v1")
    c.close()
    assert open_cache("memory://").get_many([page_key("1")]).version is None


def test_unreachable_redis_is_unavailable():
    c = open_cache(f"redis://127.0.0.1:{free_port()}/0")  # opening does not connect
    with pytest.raises(Unavailable):
        c.ping()
    with pytest.raises(Unavailable):
        c.get_many([page_key("1")])
    with pytest.raises(Unavailable):
        c.put({page_key("1"): b"x"}, version="v1")
    import asyncio
    with pytest.raises(Unavailable):
        asyncio.run(c.aget_many([page_key("1")]))


@pytest.mark.parametrize("url, field", [
    ("ftp://x", "cache_url"), ("localhost:6379", "cache_url"),
    ("memory://?ttl=abc", "cache_url.ttl"), ("memory://?ttl=-5", "cache_url.ttl"),
    ("memory://?colour=red", "cache_url"),
])
def test_bad_urls_are_invalid_input(url, field):
    with pytest.raises(InvalidInput) as e:
        open_cache(url)
    assert e.value.errors[0].field == field


def test_concurrent_async_reads_on_one_connection_each_get_their_own_values(redis_url):
    """The read path pipelines commands on one connection per event loop: replies must reach
    the reads that sent them, whatever their number and interleaving."""
    import asyncio
    c = open_cache(redis_url)
    items = pages("v1", range(400))
    c.put(items, version="v1")
    c.publish("v1")
    keys = list(items)

    async def main():
        reads = [c.aget_many(keys[i:i + 1 + i % 7]) for i in range(len(keys))]
        got = await asyncio.gather(*reads)
        await c.aclose()
        return got
    for i, read in enumerate(asyncio.run(main())):
        assert read.version == "v1" and read.values == [items[k] for k in keys[i:i + 1 + i % 7]]
    c.close()


def test_concurrent_async_reads_go_out_in_one_write_per_loop_turn(redis_url):
    """Commands issued in the same turn of the event loop leave in one write (one system call):
    a homepage read costs its share of a write, not a write of its own."""
    import asyncio

    from reelrec.storage._redis import AsyncReads
    c = open_cache(redis_url)
    items = pages("v1", range(200))
    c.put(items, version="v1")
    c.publish("v1")
    keys = list(items)
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    reads = AsyncReads(host, int(port))

    async def main():
        await reads.get("rr:c:cur")  # connects
        conn = reads._conn
        writes = []
        real = conn.transport.write
        conn.transport.write = lambda data: (writes.append(data), real(data))[1]
        got = await asyncio.gather(*[reads.mget([f"rr:c:v1:{k}"]) for k in keys])
        await asyncio.gather(*[reads.get(f"rr:c:v1:{k}") for k in keys[:3]])
        await reads.aclose()
        return got, writes
    got, writes = asyncio.run(main())
    assert got == [[items[k]] for k in keys]
    assert len(writes) == 2  # 200 commands in the first, 3 in the second
    assert writes[0].count(b"*2\r\n$4\r\nMGET\r\n") == 200
    c.close()


def test_async_reads_time_out_on_a_paused_server_and_reconnect_after(redis_url):
    """A server that stops answering (CLIENT PAUSE: it holds every client's commands) fails the
    reads waiting on it with Unavailable once the timeout passes, and every read after it, on a
    new connection, gets its answer."""
    import asyncio
    import time

    import redis

    from reelrec.storage._redis import AsyncReads
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    admin = redis.Redis.from_url(redis_url)
    admin.set("k", b"v")
    reads = AsyncReads(host, int(port), timeout=0.3)

    async def main():
        assert await reads.get("k") == b"v"
        first = reads._conn
        admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        t = time.monotonic()
        got = await asyncio.gather(*[reads.get("k") for _ in range(5)], return_exceptions=True)
        waited = time.monotonic() - t
        await asyncio.sleep(1.0)  # the pause ends
        after = await reads.get("k")
        await reads.aclose()
        return got, waited, after, first
    got, waited, after, first = asyncio.run(main())
    assert all(isinstance(g, Unavailable) for g in got), got
    assert "in time" in str(got[0])  # the others fail with the connection it closed
    assert 0.25 <= waited < 0.9
    assert after == b"v" and first.closed
    admin.close()


def test_async_reads_authenticate_and_select_the_urls_database(redis_server):
    import asyncio

    import redis
    admin = redis.Redis.from_url(f"{redis_server}/0")
    admin.execute_command("ACL", "SETUSER", "pages", "on", ">s3cret", "~*", "+@all")
    host = redis_server.removeprefix("redis://")
    try:
        c = open_cache(f"redis://pages:s3cret@{host}/5")
        c.put(pages("in-db-5", range(3)), version="in-db-5")
        c.publish("in-db-5")
        got = asyncio.run(c.aget_many([page_key("2")]))
        assert got == ("in-db-5", [b"in-db-5|page-of-2"])
        assert redis.Redis.from_url(f"{redis_server}/5").get("rr:c:cur") == b"in-db-5"
        assert admin.get("rr:c:cur") != b"in-db-5"  # database 0 is another one
        with pytest.raises(Unavailable, match="WRONGPASS|invalid"):
            asyncio.run(open_cache(f"redis://pages:wrong@{host}/5").aget_many([page_key("2")]))
        c.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "pages")
        redis.Redis.from_url(f"{redis_server}/5").flushdb()
        admin.close()
