"""Precompute on Ray: the batch layer's page writing spread over a cluster (DESIGN.md, batch layer;
``reelrec precompute --engine ray``).

How the work is laid out:

* The driver loads the model version and builds every profile (``precompute.plan``), exactly as
  the local engine does, then puts the model's title side (title vectors, co-visitation, FAISS
  index, ranker, catalog features, shared shelves) into Ray's object store **once**
  (``ray.put``). The per-user training state stays out of it: each shard carries its own rows.
* One ``PageWorker`` actor per worker (one CPU each) takes that object when it starts, so the
  model is deserialised once per worker process, not once per task. numpy arrays come out of the
  object store as zero-copy views of shared memory, so the workers on one node share one copy of
  the title vectors and co-visitation matrix; the FAISS index and the LightGBM booster are
  rebuilt from their bytes in each worker (a few MB at 100 K titles).
* The driver feeds shards to idle actors, at most one in flight per actor, so it never holds
  more than ``workers`` shards; each actor runs ``precompute.compose_shard`` — the same function
  the local engine runs.

Where the pages go. A ``memory://`` cache lives in the driver's process, which no worker can
reach: the workers return the encoded pages (about 250 B each) and the driver writes them. With a
``redis://`` or ``redis+cluster://`` cache (``cache_url``), each worker opens the cache itself and
writes its shard's pages, so page bytes never pass through the driver, whose write rate would
otherwise bound the whole run. Either way the driver publishes the version only after every
shard has succeeded.

Failures. A worker process that dies is restarted (``max_restarts``) and its shard retried
(``max_task_retries``); a shard whose cache write fails with ``Unavailable`` is retried too. A
retried shard rewrites the same keys with the same bytes (pages are a function of the model,
the profile, the seed and the user id), under the same unpublished version, so retries are
idempotent. A shard that still fails after its retries fails the run: nothing is published, and
the pages already written for the version expire by the cache's TTL.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

from reelrec.batch.progress import NullProgress
from reelrec.batch.precompute import Plan, PrecomputeReport, ShardResult, compose_shard, default_shard_users
from reelrec.errors import InvalidInput, Unavailable
from reelrec.log import get_logger

log = get_logger(__name__)

RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise InvalidInput("the ray engine needs Ray: pip install 'reelrec[ray]'", field="engine") from None
    return ray


def writes_in_workers(cache_url: str | None) -> bool:
    """Whether workers write pages themselves: only to a cache they can reach over the network."""
    return bool(cache_url) and not cache_url.startswith("memory:")


def serving_copy(model):
    """The model without its per-user training state: what every worker needs, put once."""
    pipe = copy.copy(model.pipeline)
    pipe.users, pipe.user_ids = None, None
    m = copy.copy(model)
    m.pipeline, m.user_row = pipe, {}
    return m


def _crash_if_first_attempt(crash_once, index: int) -> None:
    """Fault injection for tests: ``crash_once = (folder, shard indices)`` kills the worker
    process (as an out-of-memory kill or a lost node would) the first time it runs one of those
    shards; the marker file left in ``folder`` makes the retry go through."""
    if crash_once is None or index not in crash_once[1]:
        return
    marker = Path(crash_once[0]) / f"shard-{index}.crashed"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(17)


def _actor_class(ray):
    @ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)
    class PageWorker:
        """One per worker process: the model version, loaded once, and the cache if it writes."""

        def __init__(self, model_ref, cache_url, seed, batch_users, now):
            from threadpoolctl import threadpool_limits
            threadpool_limits(1)  # one CPU per actor: no BLAS/OpenMP threads beyond it
            # numpy arrays come out of the object store as zero-copy views of shared memory
            self.model = ray.get(model_ref[0])
            self.seed, self.batch_users, self.now = seed, batch_users, now
            self.cold_memo: dict = {}  # shared cold-start pages, across this actor's shards
            self.cache = None
            if writes_in_workers(cache_url):
                from reelrec.storage.cache import open_cache
                self.cache = open_cache(cache_url)

        @ray.method(retry_exceptions=[Unavailable])
        def run(self, shard, crash_once=None) -> ShardResult:
            _crash_if_first_attempt(crash_once, shard.index)
            res = compose_shard(self.model, shard, self.seed, self.batch_users, now=self.now,
                                cold_memo=self.cold_memo)
            if self.cache is not None:
                self.cache.put(res.items, version=self.model.version)
                res.items = None
            return res

    return PageWorker


def connect(address: str | None = None, workers: int | None = None) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local one with ``workers`` CPUs (one
    per core by default), unless this process is already connected; True if it connected now."""
    ray = _ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # local workers import reelrec from where this process does
            src = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unavailable(f"cannot start or reach Ray at {address or 'a local cluster'}: {exc}") from None
    return True


def _workers(ray, workers: int | None) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(workers or cpus, cpus))


def run_ray(p: Plan, cache, rep: PrecomputeReport, *, seed: int, batch_users: int,
            address: str | None, workers: int | None, cache_url: str | None,
            shard_users: int | None, now, progress=None, crash_once=None) -> None:
    """Compose every shard of ``p`` on Ray actors into ``cache`` (not published here)."""
    ray = _ray()
    started = connect(address, workers)
    n = _workers(ray, workers)
    try:
        t1 = time.perf_counter()
        model_ref = ray.put(serving_copy(p.model))
        PageWorker = _actor_class(ray)
        actors = [PageWorker.remote([model_ref], cache_url, seed, batch_users, now) for _ in range(n)]
        size = shard_users or default_shard_users(p.n_users, n, batch_users)
        rep.workers = n
        with (progress or NullProgress()).step("precompute shards", p.n_shards(size)) as advance:
            shards = p.shards(size)
            idle, busy = list(actors), {}
            while True:
                while idle:
                    shard = next(shards, None)
                    if shard is None:
                        break
                    a = idle.pop()
                    busy[a.run.remote(shard, crash_once)] = a
                if not busy:
                    break
                done, _ = ray.wait(list(busy), num_returns=1)
                ref = done[0]
                idle.append(busy.pop(ref))
                try:
                    part: ShardResult = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise Unavailable(f"a precompute shard failed after {RETRIES} retries; nothing was "
                                      f"published: {exc}") from None
                if part.items is not None:
                    cache.put(part.items, version=p.model.version)
                rep.add(part)
                advance(1)
        rep.compose_seconds = time.perf_counter() - t1
    finally:
        if started:
            ray.shutdown()
