"""The HTTP API, built by ``create_app(settings)`` (OpenAPI at /docs).

Handlers are thin: they parse, check the key's scope, and call ``reelrec.service``. One set of
exception handlers maps reelrec's errors to HTTP: InvalidInput 422, NotFound 404, Conflict 409,
Unavailable 503 (with Retry-After). Malformed JSON is 400, an oversized body 413.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import time
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
import orjson
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field, StringConstraints

from reelrec import __version__
from reelrec.config import Settings, load_settings
from reelrec.domain.catalog import Title
from reelrec.domain.events import event_json_schema
from reelrec.errors import Conflict, InvalidInput, NotFound, ReelrecError, Unavailable
from reelrec.log import get_logger
from reelrec.serve.auth import ApiKeys
from reelrec.service import Services, ingest_events, upsert_title

log = get_logger(__name__)


# --- request / response models (separate from domain types) -----------------------------------
class Rejected(BaseModel):
    index: int | None = None
    field: str
    reason: str


class IngestResponse(BaseModel):
    accepted: int
    rejected: list[Rejected]


class ErrorResponse(BaseModel):
    error: str
    detail: str
    errors: list[Rejected] = []


Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=16)]
# ASCII only: upper-casing must not change the length (German sharp s becomes "SS")
RegionCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,8}$")]


class TitleIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=500)
    kind: Literal["movie", "series", "documentary"]
    genres: list[Text] = Field(default_factory=list, max_length=20)
    release_date: dt.date | None = None
    added_date: dt.date | None = None
    origin_region: RegionCode | None = None
    language: Code | None = None
    regions: list[RegionCode] = Field(default_factory=list, max_length=300)
    # minutes; 0.1 is six seconds, and keeps float32 storage away from underflow
    runtime_min: float | None = Field(None, ge=0.1, le=10_000)
    episodes: int | None = Field(None, gt=0, le=100_000)
    episode_runtime_min: float | None = Field(None, ge=0.1, le=10_000)
    maturity: Code | None = None


class TitleOut(TitleIn):
    title_id: str


class ItemOut(BaseModel):
    title_id: str
    name: str
    kind: str
    genres: list[str]
    slot_kind: Literal["exploit", "explore", "novel"]
    reason: str
    score: float | None = None


class ShelfOut(BaseModel):
    id: str
    title: str
    items: list[ItemOut]


class PageOut(BaseModel):
    user_id: str
    model_version: str
    generated_at: str
    mode: Literal["personal", "cold_start", "fallback"]
    shelves: list[ShelfOut]


Genre = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class OnboardingIn(BaseModel):
    genres: list[Genre] = Field(..., min_length=3, max_length=5)
    region: RegionCode | None = None
    device: Literal["tv", "mobile", "tablet", "web"] | None = None


class UserIn(BaseModel):
    region: RegionCode | None = None
    language: Code | None = None
    device: Literal["tv", "mobile", "tablet", "web"] | None = None


# admin: batch jobs and model versions (reelrec.batch.jobs)
# a version names a folder under the models directory: no leading dot, no slash
VersionId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class TrainIn(BaseModel):
    tune: bool = Field(True, description="grid-search ALS and EASE on a validation window "
                                         "(slower, usually better)")


class JobOut(BaseModel):
    id: str
    kind: Literal["retrain", "publish"]
    trigger: str
    state: Literal["queued", "running", "succeeded", "failed"]
    step: str | None = None
    version: str | None = None
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    result: dict[str, Any] = {}
    error: str | None = None


class ModelVersionOut(BaseModel):
    version: str
    created: str | None = None
    ok: bool
    error: str | None = None
    published: bool = Field(description="the model store's published version")
    serving: bool = Field(description="the version whose pages the cache serves")
    counts: dict[str, Any] = {}
    metrics: dict[str, Any] = {}


class ModelsOut(BaseModel):
    published: str | None
    serving: str | None
    loaded: str | None = Field(description="the version this server process serves pages with")
    refused: list[str] = Field(description="versions this process refused to load (corrupt)")
    running_job: JobOut | None = None
    versions: list[ModelVersionOut]


HOMEPAGE_PATH = "/v1/users/{user_id}/homepage"  # the hot route: first in the router's order


class Metrics:
    """Prometheus metrics of one app (its own registry, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("reelrec_request_seconds", "request latency by route",
                                 ["route", "method"], registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.events = Counter("reelrec_events_total", "events received by outcome", ["outcome"],
                              registry=self.registry)
        self.cache = Counter("reelrec_cache_reads_total", "homepage cache reads", ["result"],
                             registry=self.registry)
        self.speed_lag = Gauge("reelrec_speed_layer_lag_seconds",
                               "age of the newest event the speed layer applied", registry=self.registry)
        self.model_version = Gauge("reelrec_model_info", "serving model version", ["version"],
                                   registry=self.registry)
        # the children every homepage read updates, looked up once (``labels`` takes a lock)
        self.cache_reads = {r: self.cache.labels(r) for r in ("hit", "miss", "error")}
        self._served: set[str] = set()

    def serving(self, version: str) -> None:
        """Record that a page of model ``version`` was served (the gauge is 1 from then on)."""
        if version not in self._served:
            self.model_version.labels(version).set(1)
            self._served.add(version)


def _scope_dependency(scope: str):
    async def check(request: Request) -> None:
        keys: ApiKeys | None = request.app.state.api_keys
        if keys is None:
            return
        presented = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not presented and auth.lower().startswith("bearer "):
            presented = auth[7:].strip()
        scopes = keys.scopes_of(presented)
        if scopes is None:
            raise _HTTPError(401, "unauthorized", "a valid API key is required (X-API-Key header)",
                             {"WWW-Authenticate": "Bearer"})
        if scope not in scopes:
            raise _HTTPError(403, "forbidden", f"this key lacks the {scope!r} scope")
    return Depends(check)


class _HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


_DEPS = {name: _scope_dependency(name) for name in ("read", "write", "admin")}


def scoped(scope: str, **openapi_extra: Any) -> dict[str, Any]:
    """Route keyword arguments that require ``scope`` and record it in the schema as
    ``x-scope`` (tests walk the schema and check every route enforces what it declares)."""
    if scope == "public":
        return {"openapi_extra": {"x-scope": "public", **openapi_extra}}
    return {"dependencies": [_DEPS[scope]], "openapi_extra": {"x-scope": scope, **openapi_extra}}


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > request.app.state.settings.max_body_bytes:
        raise _HTTPError(413, "payload_too_large",
                         f"body is {len(body)} bytes; the limit is {request.app.state.settings.max_body_bytes}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _HTTPError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


def page_response(doc: dict) -> Response:
    """A Page document as the JSON response. The reader builds documents of exactly the
    ``PageOut`` shape (the schema tests hold it to that), so the route hands the bytes over
    instead of validating every page again against the response model."""
    return Response(orjson.dumps(doc), media_type="application/json")


def create_app(settings: Settings | None = None, services: Services | None = None,
               speed_layer: bool | None = None, scheduler: bool | None = None) -> FastAPI:
    """Build the API for ``settings`` (defaults: embedded backends under ./reelrec-data).

    ``speed_layer`` runs the speed layer in this process on the app's own bus, state and cache
    (while the app runs: its lifespan starts and stops the thread). By default it runs when the
    bus is in-process (embedded mode); with Kafka it is a worker process of its own.
    ``scheduler`` runs the retrain schedule (``retrain_interval_s``) while the app runs; by
    default in embedded mode when the interval is not 0 (at scale: ``reelrec train && reelrec
    precompute`` from any scheduler).
    """
    settings = settings or load_settings()
    services = services or Services(settings)
    common = {400: {"model": ErrorResponse, "description": "malformed request body"},
              413: {"model": ErrorResponse, "description": "request body over the size limit"}}
    if settings.api_keys:
        common |= {401: {"model": ErrorResponse, "description": "no valid API key"},
                   403: {"model": ErrorResponse, "description": "the key lacks the route's scope"}}
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker, schedule = app.state.speed_worker, app.state.scheduler
        await asyncio.to_thread(app.state.user_regions.get, "")  # load the users' regions before the first read
        if worker is not None:
            worker.start()
        if schedule is not None:
            schedule.start()
        await asyncio.to_thread(_settle_heap, app.state.reader, app.state.cache)
        yield
        gc.unfreeze()
        if schedule is not None:
            schedule.stop()
        app.state.jobs.close()
        if worker is not None:
            worker.stop()
        await app.state.cache.aclose()

    app = FastAPI(title="reelrec", version=__version__, responses=common, lifespan=lifespan,
                  description="Homepages for a streaming catalog: events in, pages out.")
    app.state.settings = settings
    app.state.services = services
    app.state.api_keys = ApiKeys.parse(settings.api_keys)
    app.state.metrics = metrics = Metrics()

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PUT"], allow_headers=["*"])

    app.add_middleware(_LimitsAndTiming, max_body_bytes=settings.max_body_bytes, latency=metrics.latency)

    @app.exception_handler(_HTTPError)
    async def http_error(_: Request, exc: _HTTPError):
        return _error(exc.status, exc.error, exc.detail, headers=exc.headers)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(_: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)

    @app.exception_handler(InvalidInput)
    async def invalid(_: Request, exc: InvalidInput):
        return _error(422, "invalid_input", str(exc), errors=[e.as_dict() for e in exc.errors])

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound):
        return _error(404, "not_found", str(exc))

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict):
        return _error(409, "conflict", str(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable):
        return _error(503, "unavailable", str(exc), headers={"Retry-After": "5"})

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError):
        errs = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": e["msg"]}
                for e in exc.errors()]
        return _error(422, "invalid_input", "; ".join(f"{e['field']}: {e['reason']}" for e in errs),
                      errors=errs)

    # --- health ---------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"], **scoped("public"))
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorResponse}}, **scoped("public"))
    def readyz():
        checks = {"lake": _check(lambda: services.lake.partitions()), "bus": _check(services.bus.ping)}
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, **scoped("public"))
    def prometheus_metrics():
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    # --- events ---------------------------------------------------------------------------
    @app.post("/v1/events", status_code=202, tags=["events"], response_model=IngestResponse,
              responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                         422: {"model": IngestResponse | ErrorResponse}, 503: {"model": ErrorResponse}},
              **scoped("write", requestBody={"required": True, "content": {"application/json": {
                  "schema": {"oneOf": [event_json_schema(),
                                       {"type": "array", "items": event_json_schema(), "minItems": 1,
                                        "maxItems": settings.max_batch}]}}}}))
    async def post_events(request: Request):
        """One event (an object) or a batch (an array of up to ``max_batch``). 202 means every
        accepted event is durable; rejected ones are listed by index with field and reason."""
        body = await _json_body(request)
        records = body if isinstance(body, list) else [body]
        # Off the event loop: a Kafka publish waits for the broker's acks (up to
        # publish_timeout_s) and an embedded one fsyncs a Parquet file.
        result = await run_in_threadpool(ingest_events, services, records)
        metrics.events.labels("accepted").inc(result.accepted)
        metrics.events.labels("rejected").inc(len({e.index for e in result.rejected}))
        payload = {"accepted": result.accepted, "rejected": [e.as_dict() for e in result.rejected]}
        return JSONResponse(payload, status_code=202 if result.accepted else 422)

    # --- titles ---------------------------------------------------------------------------
    @app.get("/v1/titles/{title_id}", tags=["titles"], response_model=TitleOut,
             responses={404: {"model": ErrorResponse}}, **scoped("read"))
    def get_title(title_id: str):
        return TitleOut(**services.catalog.get(title_id).__dict__)

    @app.put("/v1/titles/{title_id}", tags=["titles"], response_model=TitleOut,
             responses={422: {"model": ErrorResponse}}, **scoped("write"))
    def put_title(title_id: str, body: TitleIn):
        title = upsert_title(services, Title(title_id=title_id, **body.model_dump()))
        return TitleOut(**title.__dict__)

    # --- homepages and users --------------------------------------------------------------
    from reelrec.storage.cache import open_cache
    from reelrec.homepage import HomepageReader
    app.state.cache = cache = open_cache(settings.cache)
    app.state.reader = reader = HomepageReader(settings, cache,
                                               on_read=lambda r: metrics.cache_reads[r].inc(),
                                               on_load=lambda m: _refreeze() if gc.get_freeze_count() else None)
    app.state.user_regions = _UserRegions(settings)
    if speed_layer is None:
        speed_layer = services.embedded
    app.state.speed_worker = _SpeedThread(settings, services, cache, reader, metrics) if speed_layer else None

    @app.get(HOMEPAGE_PATH, tags=["homepage"], response_model=PageOut,
             responses={503: {"model": ErrorResponse}}, **scoped("read"))
    async def get_homepage(user_id: Annotated[str, Path(min_length=1, max_length=200)],
                           device: Literal["tv", "mobile", "tablet", "web"] | None = None,
                           hour: Annotated[int | None, Query(ge=0, le=23)] = None,
                           region: Annotated[str | None, Query(min_length=1, max_length=8)] = None):
        """The user's page with one cache read; an unknown user gets the cold-start page for the
        request's region, device and hour. ``mode`` says which it is."""
        region = (region or app.state.user_regions.get(user_id) or "").upper() or None
        body, version = await reader.aread_json(user_id, region=region, device=device, hour=hour)
        metrics.serving(version)
        return Response(body, media_type="application/json")

    @app.put("/v1/users/{user_id}", tags=["users"], status_code=202,
             responses={422: {"model": ErrorResponse}}, **scoped("write"))
    def put_user(user_id: Annotated[str, Path(min_length=1, max_length=200)], body: UserIn):
        """Change a user's region, language or device. Travels on the bus as a ``profile`` event,
        so the speed layer refreshes the page (a new region brings its shelves)."""
        event = {"user_id": user_id, "type": "profile", "ts": time.time(),
                 **{k: v for k, v in body.model_dump().items() if v is not None}}
        result = ingest_events(services, [event])
        if not result.accepted:
            raise InvalidInput(result.rejected)
        if body.region:
            app.state.user_regions.set(user_id, body.region.upper())
        return {"accepted": 1, "user_id": user_id}

    @app.post("/v1/users/{user_id}/onboarding", tags=["users"], response_model=PageOut,
              responses={422: {"model": ErrorResponse}}, **scoped("write"))
    def onboarding(user_id: Annotated[str, Path(min_length=1, max_length=200)], body: OnboardingIn):
        """Record 3-5 genre picks (an ``onboarding`` event) and return the new page at once."""
        event = {"user_id": user_id, "type": "onboarding", "ts": time.time(),
                 "genres": [g.lower() for g in body.genres]}
        if body.region:
            event["region"] = body.region.upper()
            app.state.user_regions.set(user_id, body.region.upper())
        if body.device:
            event["device"] = body.device
        result = ingest_events(services, [event])
        if not result.accepted:
            raise InvalidInput(result.rejected)
        region = app.state.user_regions.get(user_id)
        return page_response(reader.read(user_id, region=region, device=body.device,
                                         onboarding=tuple(g.lower() for g in body.genres), fresh=True))

    @app.get("/v1/titles/{title_id}/similar", tags=["titles"], response_model=list[TitleOut],
             responses={404: {"model": ErrorResponse}}, **scoped("read"))
    def similar(title_id: str, k: Annotated[int, Query(ge=1, le=100)] = 10):
        """Titles closest to this one in the model's embedding space (content vectors for titles
        the model has not seen interactions on)."""
        model = reader.model()
        ids = model.pipeline.art.title_ids
        idx = model.similar(title_id, k)
        return [TitleOut(**services.catalog.get(str(ids[i])).__dict__) for i in idx
                if str(ids[i]) in services.catalog]

    # --- admin: training, model versions, publishing (reelrec.batch.jobs) -------------------
    from reelrec.batch.jobs import JobRunner, RetrainScheduler
    from reelrec.batch.versions import ModelStore
    app.state.jobs = jobs = JobRunner(settings, cache, reader)
    if scheduler is None:
        scheduler = services.embedded and settings.retrain_interval_s > 0
    app.state.scheduler = RetrainScheduler(jobs, settings) if scheduler else None
    job_responses = {404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                     422: {"model": ErrorResponse}}

    def accepted(job) -> JSONResponse:
        return JSONResponse(job.as_dict(), status_code=202, headers={"Location": f"/v1/admin/jobs/{job.id}"})

    @app.post("/v1/admin/train", status_code=202, tags=["admin"], response_model=JobOut,
              responses=job_responses, **scoped("admin"))
    def admin_train(body: TrainIn | None = None):
        """Start a retrain in the background: train a version from the lake, precompute every
        page into the cache, publish it. 202 with the job; 409 while another job runs; 404 when
        there is nothing to train on."""
        return accepted(jobs.start_retrain(tune=body.tune if body else True, trigger="api"))

    @app.get("/v1/admin/jobs", tags=["admin"], response_model=list[JobOut], **scoped("admin"))
    def admin_jobs():
        """Recent batch jobs, newest first."""
        return [j.as_dict() for j in jobs.list()]

    @app.get("/v1/admin/jobs/{job_id}", tags=["admin"], response_model=JobOut,
             responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}, **scoped("admin"))
    def admin_job(job_id: Annotated[str, Path(min_length=1, max_length=64)]):
        """A job's state (queued, running, succeeded, failed), its current step, result or error."""
        return jobs.get(job_id).as_dict()

    @app.get("/v1/admin/models", tags=["admin"], response_model=ModelsOut,
             responses={503: {"model": ErrorResponse}}, **scoped("admin"))
    def admin_models():
        """Model versions, newest first (each verified against its checksums): which one the
        store publishes, which one the cache serves, which ones this process refused."""
        store = ModelStore(settings.models_dir)
        serving = cache.current_version()
        rows = [{**{k: v for k, v in r.items() if k != "current"}, "published": r["current"],
                 "serving": r["version"] == serving} for r in store.list()]
        active = jobs.active
        return {"published": store.current(), "serving": serving, "loaded": reader.serving(),
                "refused": reader.refused(), "running_job": active.as_dict() if active else None,
                "versions": rows}

    @app.post("/v1/admin/models/{version}/publish", status_code=202, tags=["admin"],
              response_model=JobOut, responses=job_responses, **scoped("admin"))
    def admin_publish(version: VersionId):
        """Put an existing version live: it is loaded and verified first (409 when corrupt: the
        serving version stays), then a job precomputes its pages into the cache, switches the
        cache to it and publishes it."""
        return accepted(jobs.start_publish(version, trigger="api"))


    from reelrec.serve.web import install_web  # here, not at the top: web imports ``scoped``
    install_web(app)
    _first(app, HOMEPAGE_PATH)
    return app


def _first(app: FastAPI, path: str) -> None:
    """Move the route of ``path`` to the front of the router's order. The router tries routes in
    order until one matches, and each failed match costs about 1.6 us (FastAPI 0.165), so the
    homepage, most of the traffic, no longer pays for the ten routes declared before it. No two
    routes' paths overlap, so the order changes no match."""
    routes = app.router.routes
    at = next(i for i, r in enumerate(routes) if getattr(r, "path", None) == path)
    routes.insert(0, routes.pop(at))


class _SpeedThread:
    """The speed layer on a thread of the API process (embedded mode)."""

    def __init__(self, settings: Settings, services: Services, cache, reader, metrics: Metrics):
        self.settings, self.services, self.cache, self.reader, self.metrics = (
            settings, services, cache, reader, metrics)
        self._stop = None
        self._thread = None
        self.last = None  # the last batch's ApplyResult (tests and the dashboard read it)

    def start(self) -> None:
        import threading
        from reelrec.speed.layer import SpeedLayer
        from reelrec.speed.worker import run_speed
        from reelrec.storage.state import open_state
        self._stop = threading.Event()
        self.state = open_state(self.settings.state_url)
        layer = SpeedLayer(self.settings, self.cache, self.state, reader=self.reader)
        layer.warm()  # before the app serves: no request races the model and history loads

        def on_batch(res):
            self.last = res
            if res.lag_s:
                self.metrics.speed_lag.set(max(res.lag_s))

        self._thread = threading.Thread(target=run_speed, args=(layer, self.services.bus, self._stop),
                                        kwargs={"on_batch": on_batch}, name="speed-layer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=10)


class _UserRegions:
    """Each user's region, from the users table and profile changes (embedded scale: in memory)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._map: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._map is None:
            from reelrec.domain.users import load_users
            try:
                t = load_users(self.settings.data_dir).select(["user_id", "region"])
                self._map = {u: r for u, r in zip(t.column("user_id").to_pylist(),
                                                   t.column("region").to_pylist()) if r}
            except NotFound:
                self._map = {}
        return self._map

    def get(self, user_id: str) -> str | None:
        return self._load().get(user_id)

    def set(self, user_id: str, region: str) -> None:
        self._load()[user_id] = region


def _refreeze() -> None:
    """After a model version is loaded while serving (a retrain going live): thaw, collect and
    freeze again, so the new model leaves the collector's full passes too and the model it
    replaced, frozen at start-up or at the last load, can be collected (a frozen cycle is never
    freed). One full pass per model load, on the loading thread."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _settle_heap(reader, cache) -> None:
    """Load the serving model, then move every object alive now (modules, the model, the app)
    out of the garbage collector's reach with ``gc.freeze()``.

    Requests leave a little cyclic garbage behind (the framework's task groups and streams), so
    the collector runs during serving; left alone, each of its full passes walks the whole heap,
    some 120 K objects once the model and its libraries are imported, and holds the GIL for about
    100 ms: 1% of requests waited that long at any load (docs/benchmarks.md, Serving). Frozen,
    a full pass walks only what was made since start-up. The lifespan unfreezes at shutdown, so a
    process that builds several apps (the tests) still collects them."""
    try:
        reader.model(cache.current_version())
    except ReelrecError as exc:  # no model or no cache yet: freeze what there is
        log.info("no model to load before serving", error=str(exc))
    _refreeze()


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # readiness reports any failure of a backend as text
        return f"error: {type(exc).__name__}: {exc}"[:200]


class _LimitsAndTiming:
    """Refuses a declared body over the limit (413) and times every HTTP request into the latency
    histogram by route template.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) wraps each
    request and response in extra objects and tasks, which cost about a third of the server's
    CPU on the cheapest routes and most of the garbage that triggers collector passes."""

    def __init__(self, app, *, max_body_bytes: int, latency: Histogram):
        self.app, self.max_body_bytes, self.latency = app, max_body_bytes, latency

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body_bytes:
                    length = value.decode()
                    await _error(413, "payload_too_large", f"body is {length} bytes; the limit is "
                                 f"{self.max_body_bytes}")(scope, receive, send)
                    return
                break
        start = time.perf_counter()
        await self.app(scope, receive, send)
        route = scope.get("route")  # set by the router on this same scope
        self.latency.labels(getattr(route, "path", "unmatched"), scope["method"]).observe(
            time.perf_counter() - start)


def _error(status: int, error: str, detail: str, errors: list | None = None,
           headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)
