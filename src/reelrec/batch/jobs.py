"""Batch jobs that put a model version live: the nightly retrain and the publish of a version.

Place in DESIGN.md: the left-hand branch of the data flow, end to end. A **retrain** trains a new
version from the lake (``reelrec.batch.train``, not yet published), loads it, precomputes every
page into the serving cache (``reelrec.batch.precompute``, which switches the cache's version
pointer only once every page is written) and then publishes it in the model store. A **publish**
does the same for a version that already exists (a rollback, or a version trained elsewhere).

The order is what makes the swap safe: the API and the speed layer follow the cache's version
pointer (``HomepageReader``), and the serving process loads the new model *before* the pointer
moves, so no request waits for a load and none fails. A version that fails to load is refused
before any page is written; one that turns corrupt after its pages went live is refused by the
store's checksum check, the cache pointer goes back to the previous version, and readers keep
serving the previous model with its own pages.

``JobRunner`` runs one job at a time on a background thread of the serving process (the admin API
and the scheduler share it); training itself runs in a child process, so its CPU time and memory
never sit in the API process. ``RetrainScheduler`` starts a retrain every
``Settings.retrain_interval_s`` (embedded mode; at scale it is ``reelrec train && reelrec
precompute`` from any scheduler, see docs/operations.md). The CLI calls ``retrain`` directly.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from reelrec.batch.versions import ModelStore
from reelrec.config import Settings
from reelrec.errors import Conflict, NotFound, ReelrecError, Unavailable
from reelrec.log import get_logger

log = get_logger(__name__)
UTC = dt.timezone.utc

Step = Callable[[str], None]


def _no_step(_: str) -> None:
    return None


# --- the jobs themselves (the CLI calls these directly) ---------------------------------------------
def train_version(settings: Settings, tune: bool = True, progress=None) -> dict:
    """Train a version from the lake without publishing it (runs in a child process of the
    server). Returns its id, the checks it failed and its counts and metrics.

    Raises:
        NotFound: no catalog, or no events in the lake.
    """
    from reelrec.batch.pipeline import PipelineConfig
    from reelrec.batch.train import train
    res = train(settings, PipelineConfig(tune=tune), publish=False, progress=progress)
    m = res.manifest
    return {"version": res.version, "checks": list(m.get("checks", [])), "train_seconds": round(res.seconds, 2),
            "counts": m.get("counts", {}), "metrics": m.get("metrics", {})}


def _train_in_child(settings: Settings, tune: bool, send) -> None:
    from reelrec.log import setup_logging
    setup_logging()
    try:
        send.send((True, train_version(settings, tune)))
    except ReelrecError as exc:
        send.send((False, (type(exc).__name__, str(exc))))
    except Exception as exc:  # reported to the job; the parent keeps serving
        send.send((False, (type(exc).__name__, f"{type(exc).__name__}: {exc}")))
    finally:
        send.close()


def go_live(settings: Settings, cache, version: str, reader=None, on_step: Step = _no_step,
            progress=None) -> dict:
    """Load ``version``, precompute every page into ``cache`` under it, switch the cache to it,
    publish it in the model store; then drop cache versions older than the previous one and
    prune old model versions (``Settings.keep_model_versions``).

    ``reader``: the serving process's ``HomepageReader``, which loads the model before its pages
    go live (and lends it to precompute). ``progress``: a batch progress
    (``reelrec.batch.progress``) that precompute adds its step to.

    Raises:
        NotFound: no such version.
        Conflict: the version is corrupt or half-written (refused before any page is written), or
            turned corrupt while its pages were written (the cache goes back to the previous
            version).
        Unavailable: the cache cannot be written (nothing is switched then).
    """
    from reelrec.batch.precompute import precompute
    from reelrec.homepage import ServingModel
    on_step("loading")
    model = reader.preload(version) if reader is not None else ServingModel.load(settings, version)
    previous = cache.current_version()
    on_step("precomputing")
    rep = precompute(settings, cache, version, model=model, progress=progress)
    on_step("publishing")
    store = ModelStore(settings.models_dir)
    try:
        store.publish(version)
    except (Conflict, NotFound):
        if previous and previous != version:
            cache.publish(previous)
        log.error("version refused after its pages were written; the previous one keeps serving",
                  version=version, previous=previous)
        raise
    cache.snapshot()
    dropped = [v for v in cache.versions() if v not in (version, previous)]
    for v in dropped:
        cache.drop_version(v)
    pruned = store.prune(settings.keep_model_versions, protect=tuple(v for v in (version, previous) if v))
    log.info("model version live", version=version, previous=previous, pages=rep.users,
             seconds=round(rep.seconds, 2))
    return {"version": version, "previous": previous, "pages": rep.users, "personal": rep.personal,
            "cold_start": rep.cold_start, "precompute_seconds": round(rep.seconds, 2),
            "cache_versions_dropped": dropped, "model_versions_pruned": pruned}


def retrain(settings: Settings, cache, reader=None, tune: bool = True, on_step: Step = _no_step,
            trainer: Callable[[Settings, bool], dict] = train_version, progress=None) -> dict:
    """Train a new version, precompute its pages into ``cache`` and publish it (``go_live``).

    Raises:
        NotFound: nothing to train on.
        Conflict: the new version failed its checks (kept on disk, not published) or is corrupt.
        Unavailable: the cache cannot be written.
    """
    on_step("training")
    trained = trainer(settings, tune)
    if trained["checks"]:
        raise Conflict(f"version {trained['version']} failed its checks and is not published: "
                       + "; ".join(trained["checks"]))
    return {**trained, **go_live(settings, cache, trained["version"], reader, on_step, progress)}


def check_trainable(settings: Settings) -> None:
    """Fail fast, before a job starts, when there is nothing to train on.

    Raises:
        NotFound: no catalog, or an empty lake.
    """
    from reelrec.domain.catalog import Catalog
    from reelrec.storage.lake import open_lake
    Catalog.load(settings.data_dir)
    if not open_lake(settings.lake).files():
        raise NotFound(f"the lake at {settings.lake} holds no events to train on")


# --- running them in the background ---------------------------------------------------------------
@dataclass
class Job:
    """One batch job, as the admin API shows it."""

    id: str
    kind: str  # retrain | publish
    trigger: str  # api | schedule | cli
    state: str = "queued"  # queued | running | succeeded | failed
    step: str | None = None
    version: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed")

    def as_dict(self) -> dict:
        def iso(t):
            return dt.datetime.fromtimestamp(t, UTC).isoformat() if t else None
        return {"id": self.id, "kind": self.kind, "trigger": self.trigger, "state": self.state,
                "step": self.step, "version": self.version, "created": iso(self.created),
                "started": iso(self.started), "finished": iso(self.finished),
                "seconds": round((self.finished or time.time()) - self.started, 2) if self.started else None,
                "result": self.result, "error": self.error}


class JobRunner:
    """Runs at most one batch job at a time on a background thread; keeps the last ``history``.

    ``isolate``: train in a child process (the server's default) rather than on the thread.
    """

    def __init__(self, settings: Settings, cache, reader=None, isolate: bool = True, history: int = 50):
        self.settings, self.cache, self.reader, self.isolate = settings, cache, reader, isolate
        self.history = history
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._active: Job | None = None
        self._threads: list[threading.Thread] = []
        self._child = None

    # --- starting ---------------------------------------------------------------------------------
    def start_retrain(self, tune: bool = True, trigger: str = "api") -> Job:
        """Start a retrain job.

        Raises:
            Conflict: a job is running.
            NotFound: nothing to train on (no catalog or an empty lake).
        """
        self._refuse_if_busy()
        check_trainable(self.settings)
        trainer = self._train_isolated if self.isolate else train_version
        return self._start("retrain", trigger, None, lambda job: retrain(
            self.settings, self.cache, self.reader, tune, on_step=self._stepper(job), trainer=trainer))

    def start_publish(self, version: str, trigger: str = "api") -> Job:
        """Start publishing an existing version; it is loaded (and verified) before the job starts.

        Raises:
            Conflict: a job is running, or the version is corrupt or does not fit the catalog.
            NotFound: no such version.
        """
        self._refuse_if_busy()
        if self.reader is not None:
            self.reader.preload(version)
        else:
            ModelStore(self.settings.models_dir).verify(version)
        return self._start("publish", trigger, version, lambda job: go_live(
            self.settings, self.cache, version, self.reader, on_step=self._stepper(job)))

    def _refuse_if_busy(self) -> None:
        active = self._active
        if active is not None and not active.done:
            raise Conflict(f"job {active.id} ({active.kind}, {active.step or active.state}) is "
                           "running; one batch job runs at a time")

    def _start(self, kind: str, trigger: str, version: str | None, work) -> Job:
        with self._lock:
            self._refuse_if_busy()
            job = Job(id=uuid.uuid4().hex[:12], kind=kind, trigger=trigger, version=version)
            self._active = job
            self._jobs[job.id] = job
            while len(self._jobs) > self.history:
                self._jobs.popitem(last=False)
        t = threading.Thread(target=self._run, args=(job, work), name=f"job-{kind}-{job.id}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        log.info("job started", job=job.id, kind=kind, trigger=trigger, version=version)
        return job

    def _run(self, job: Job, work) -> None:
        job.state, job.started = "running", time.time()
        try:
            job.result = work(job)
            job.version = job.result.get("version", job.version)
            job.state = "succeeded"
        except ReelrecError as exc:
            job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
        except Exception as exc:  # a job's crash is reported on the job, never kills the server
            log.error("job crashed", job=job.id, exc_info=True)
            job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            job.finished = time.time()
            job.step = None
            log.info("job finished", job=job.id, kind=job.kind, state=job.state, version=job.version,
                     error=job.error or "")

    @staticmethod
    def _stepper(job: Job) -> Step:
        def step(name: str) -> None:
            job.step = name
        return step

    def _train_isolated(self, settings: Settings, tune: bool) -> dict:
        import multiprocessing as mp
        # spawn, not fork: the server holds threads (uvicorn, the speed layer) and a fork of a
        # threaded process may inherit a held lock. Daemonic, so stopping the server stops it.
        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_train_in_child, args=(settings, tune, send), name="reelrec-train",
                            daemon=True)
        child.start()
        send.close()
        self._child = child
        try:
            while not recv.poll(0.2):
                if not child.is_alive() and not recv.poll(0):
                    break
            try:
                ok, payload = recv.recv()
            except EOFError:  # killed (OOM, the server stopping) before it could answer
                child.join(timeout=10)
                raise Conflict(f"the training process died (exit code {child.exitcode}); "
                               "the serving version is unchanged") from None
        finally:
            recv.close()
            child.join(timeout=10)
            self._child = None
        if ok:
            return payload
        kind, message = payload
        raise {"NotFound": NotFound, "Unavailable": Unavailable}.get(kind, Conflict)(message)

    @property
    def training_process(self):
        """The child process training right now, or None."""
        return self._child

    def close(self) -> None:
        """Stop a training child process, if one runs (the server is shutting down)."""
        child = self._child
        if child is not None and child.is_alive():
            child.terminate()

    # --- looking ------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """Raises NotFound for an unknown (or long-forgotten) job id."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (the last {self.history} jobs are kept)")
        return job

    def list(self) -> list[Job]:
        return list(reversed(self._jobs.values()))

    @property
    def active(self) -> Job | None:
        job = self._active
        return job if job is not None and not job.done else None

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is done (or ``timeout`` passes); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        while not job.done and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        return job


# --- the nightly schedule --------------------------------------------------------------------------
class RetrainScheduler:
    """Starts a retrain when the published model is ``interval_s`` old (measured from its
    manifest's ``created``, so a restart does not postpone an overdue retrain), or, with nothing
    published, ``interval_s`` after the scheduler started. A failed or refused attempt is retried
    ``interval_s`` after it; a job already running (an admin's) counts as the attempt.
    """

    def __init__(self, runner: JobRunner, settings: Settings, interval_s: float | None = None,
                 poll_s: float = 60.0):
        self.runner, self.settings = runner, settings
        self.interval_s = settings.retrain_interval_s if interval_s is None else interval_s
        self.poll_s, self.tune = poll_s, settings.retrain_tune
        self.started_at = time.time()
        self.last_attempt: float | None = None
        self.last_job: Job | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next_due(self) -> float:
        """Wall-clock time of the next retrain."""
        store = ModelStore(self.settings.models_dir)
        base = self.started_at
        current = store.current()
        if current:
            try:
                created = store.manifest(current).get("created")
                base = dt.datetime.fromisoformat(created).timestamp() if created else base
            except (ReelrecError, ValueError):
                pass
        if self.last_attempt is not None:
            base = max(base, self.last_attempt)
        return base + self.interval_s

    def tick(self, now: float | None = None) -> Job | None:
        """Start a retrain if one is due at ``now``; the job started, if any."""
        now = time.time() if now is None else now
        if self.interval_s <= 0 or now < self.next_due():
            return None
        self.last_attempt = now
        try:
            self.last_job = self.runner.start_retrain(tune=self.tune, trigger="schedule")
        except ReelrecError as exc:
            log.warning("scheduled retrain not started", error=str(exc),
                        retry_in_s=round(self.interval_s))
            return None
        return self.last_job

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                wait = min(self.poll_s, max(0.0, self.next_due() - time.time()))
            except Exception:  # a broken check must not end the schedule
                log.error("retrain schedule check failed", exc_info=True)
                wait = self.poll_s
            self._stop.wait(max(wait, 0.05))

    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="retrain-scheduler", daemon=True)
        self._thread.start()
        log.info("retrain scheduler started", interval_s=self.interval_s,
                 next_due=dt.datetime.fromtimestamp(self.next_due(), UTC).isoformat())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
