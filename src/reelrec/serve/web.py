"""The web interface: homepage preview, onboarding and the operator dashboard.

Place in DESIGN.md: a client of the API like any other, served by the same FastAPI app
(``install_web(app)`` in ``create_app``). The pages are plain HTML with vanilla JavaScript modules
and CSS under ``serve/web/`` (no build step, nothing fetched from the internet); they call the
public API (homepage, onboarding, events, titles, admin models) and the small read-only
``/v1/ui/...`` endpoints below for what the API does not give: user search, the genre list,
catalog stats, live counters parsed from the Prometheus registry, evaluation reports found under
the data directory, and kind-mix / genre-cap adherence over the precomputed pages.

HTML and static routes stay out of the OpenAPI schema; every JSON route declares its scope with
``scoped`` like the rest of the API.
"""

from __future__ import annotations

import math
import re
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from reelrec.errors import InvalidInput, NotFound
from reelrec.serve.api import ErrorResponse, scoped

WEB_DIR = Path(__file__).with_name("web")
# path -> (the page's <main> content, its <title> words, its script, its name in the navigation)
PAGES = {"/": ("home.html", "homepage preview", "home", "Homepage preview"),
         "/onboarding": ("onboarding.html", "onboarding", "onboarding", "Onboarding"),
         "/dashboard": ("dashboard.html", "operator dashboard", "dashboard", "Dashboard")}
REPORT_FILE = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.(png|svg|md|json)$")
HOMEPAGE_ROUTE = re.compile(r"/homepage$")

router = APIRouter()
INVALID = {422: {"model": ErrorResponse, "description": "a query parameter is out of range"}}


def install_web(app: FastAPI) -> None:
    """Add the pages, their static files and the ``/v1/ui`` endpoints to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")


# --- pages ------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _page_html(path: str) -> str:
    """A page: the shared frame (pages/_layout.html: head, header, navigation with this page
    marked current, the page's script) around the page's own <main> content, whose
    ``{context}`` is the shared context fields (pages/_context.html)."""
    name, title, script, _ = PAGES[path]
    current = ' aria-current="page"'
    nav = "\n".join(f'    <a href="{p}"{current if p == path else ""}>{label}</a>'
                    for p, (_, _, _, label) in PAGES.items())
    frame = (WEB_DIR / "pages" / "_layout.html").read_text(encoding="utf-8")
    # the device / hour / region fields the homepage preview and onboarding both offer
    context = (WEB_DIR / "pages" / "_context.html").read_text(encoding="utf-8").removesuffix("\n")
    main = (WEB_DIR / "pages" / name).read_text(encoding="utf-8").replace("{context}", context)
    # replace, not format: the content may hold braces
    return (frame.replace("{title}", title).replace("{nav}", nav).replace("{script}", script)
            .replace("{main}", main))


def _page_route(path: str) -> None:
    @router.get(path, include_in_schema=False, response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(_page_html(path), headers={"Cache-Control": "no-cache"})


for _path in PAGES:
    _page_route(_path)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(WEB_DIR / "static" / "favicon.svg", media_type="image/svg+xml")


# --- cached views of the data directory ---------------------------------------------------------
class _Memo:
    """One value, recomputed when its key changes. Keys are tuples of plain values (an mtime)
    compared by value and objects (the catalog's table) compared by identity; holding the objects
    keeps their ids from being reused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._value: Any = None

    @staticmethod
    def _same(a: tuple | None, b: tuple) -> bool:
        plain = (int, float, str, bytes, type(None))
        return a is not None and len(a) == len(b) and all(
            x is y or (isinstance(x, plain) and isinstance(y, plain) and x == y) for x, y in zip(a, b))

    def get(self, key: tuple, compute):
        with self._lock:
            if not self._same(self._key, key):
                self._value = compute()
                self._key = key
            return self._value


def _memo(request: Request, name: str) -> _Memo:
    state = request.app.state
    memos = getattr(state, "ui_memos", None)
    if memos is None:
        memos = state.ui_memos = {}
    return memos.setdefault(name, _Memo())


def _users_table(request: Request) -> pa.Table | None:
    from reelrec.domain.users import load_users, users_path
    path = users_path(request.app.state.services.settings.data_dir)
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return None
    return _memo(request, "users").get(key, lambda: load_users(path.parent.parent).select(
        ["user_id", "region", "signup_device", "onboarding_genres"]))


def _catalog(request: Request):
    return request.app.state.services.catalog


def _value_counts(values: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Counts of each non-null value, most frequent first."""
    vc = pc.value_counts(values.drop_null() if hasattr(values, "drop_null") else values)
    if len(vc) == 0:
        return {}
    names = vc.field("values").to_pylist()
    counts = np.asarray(vc.field("counts"))
    order = np.lexsort((np.array(names, dtype=object).astype(str), -counts))
    return {names[i]: int(counts[i]) for i in order}


# --- users and genres -------------------------------------------------------------------------
@router.get("/v1/ui/users", tags=["ui"], responses=INVALID, **scoped("read"))
def search_users(request: Request,
                 q: str = Query("", max_length=200, description="user id prefix (case-sensitive)"),
                 region: str | None = Query(None, max_length=8),
                 limit: int = Query(20, ge=1, le=200)) -> dict:
    """Users whose id starts with ``q``, optionally in one region, in table order."""
    table = _users_table(request)
    if table is None:
        return {"total": 0, "users": [], "regions": []}
    mask = None
    if q:
        mask = pc.starts_with(table.column("user_id"), q)
    if region:
        r = pc.equal(table.column("region"), region.upper())
        mask = r if mask is None else pc.and_(mask, r)
    hits = table if mask is None else table.filter(mask)
    regions = _memo(request, "user_regions").get((table,), lambda: sorted(
        r for r in pc.unique(table.column("region")).to_pylist() if r))
    return {"total": hits.num_rows, "users": hits.slice(0, limit).to_pylist(), "regions": regions}


@router.get("/v1/ui/genres", tags=["ui"], **scoped("read"))
def genres(request: Request) -> dict:
    """Every genre of the catalog with its title count, most common first (onboarding's list)."""
    catalog = _catalog(request)

    def compute():
        counts = _value_counts(pc.list_flatten(catalog.table.column("genres")))
        return {"genres": [{"name": g, "titles": n} for g, n in counts.items()]}
    return _memo(request, "genres").get((catalog.table,), compute)


# --- catalog stats ----------------------------------------------------------------------------
def catalog_stats(catalog, users: pa.Table | None, top_genres: int = 12) -> dict:
    """Counts the dashboard shows: titles by kind and genre, availability, runtimes, users."""
    t = catalog.table
    n = t.num_rows
    out: dict[str, Any] = {"titles": n, "by_kind": _value_counts(t.column("kind")),
                           "by_genre": dict(list(_value_counts(pc.list_flatten(t.column("genres"))).items())[:top_genres]),
                           "genres": int(len(pc.unique(pc.list_flatten(t.column("genres"))))) if n else 0}
    if n:
        everywhere = pc.equal(pc.fill_null(pc.list_value_length(t.column("regions")), 0), 0)
        out["available_everywhere"] = int(pc.sum(everywhere).as_py() or 0)
        runtime = np.asarray(pc.fill_null(t.column("runtime_min"), np.nan).to_numpy(zero_copy_only=False),
                             dtype=np.float64)
        kinds = np.asarray(t.column("kind").to_numpy(zero_copy_only=False))
        films = runtime[(kinds != "series") & np.isfinite(runtime)]
        out["median_runtime_min"] = round(float(np.median(films)), 1) if films.size else None
        added = t.column("added_date")
        if added.null_count < n:
            newest = pc.max(added).as_py()
            out["newest_added"] = newest.isoformat()
            cutoff = pa.scalar(newest.toordinal() - 719163 - 90, pa.int32()).cast(pa.date32())
            out["added_last_90_days"] = int(pc.sum(pc.greater(added, cutoff)).as_py() or 0)
    if users is not None:
        out["users"] = users.num_rows
        out["users_by_region"] = _value_counts(users.column("region"))
        onboarded = pc.greater(pc.fill_null(pc.list_value_length(users.column("onboarding_genres")), 0), 0)
        out["users_onboarded"] = int(pc.sum(onboarded).as_py() or 0)
    return out


@router.get("/v1/ui/catalog", tags=["ui"], **scoped("read"))
def catalog_route(request: Request) -> dict:
    """Catalog and user counts (recomputed only when the catalog or the user table changes)."""
    catalog, users = _catalog(request), _users_table(request)
    lake = request.app.state.services.lake
    stats = _memo(request, "catalog").get((catalog.table, users),
                                          lambda: catalog_stats(catalog, users))
    return stats | {"lake_partitions": len(lake.partitions())}


# --- live counters ------------------------------------------------------------------------------
def histogram_quantile(q: float, upper: np.ndarray, cumulative: np.ndarray) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the
    q-th observation; the highest finite bound when it falls in the +Inf bucket."""
    total = float(cumulative[-1]) if cumulative.size else 0.0
    if total <= 0:
        return None
    rank = q * total
    i = int(np.searchsorted(cumulative, rank, side="left"))
    i = min(i, cumulative.size - 1)
    if math.isinf(upper[i]):
        return float(upper[i - 1]) if i > 0 else None
    lo_bound = 0.0 if i == 0 else float(upper[i - 1])
    lo_count = 0.0 if i == 0 else float(cumulative[i - 1])
    in_bucket = float(cumulative[i]) - lo_count
    if in_bucket <= 0:
        return float(upper[i])
    return lo_bound + (float(upper[i]) - lo_bound) * (rank - lo_count) / in_bucket


def registry_stats(registry) -> dict:
    """The dashboard's counters from a prometheus_client registry: events, cache reads, speed
    lag, model version, and homepage latency p50/p99 (from the request histogram's buckets)."""
    events: dict[str, float] = {}
    cache: dict[str, float] = {}
    gauges: dict[str, float] = {}
    version = None
    requests = 0.0
    buckets: dict[float, float] = {}
    homepage_count = 0.0
    homepage_sum = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "reelrec_events_total":
                events[labels.get("outcome", "")] = events.get(labels.get("outcome", ""), 0) + value
            elif name.startswith("reelrec_cache_") and name.endswith("_total"):
                key = labels.get("result") or name
                cache[key] = cache.get(key, 0) + value
            elif name == "reelrec_model_info" and value:
                version = labels.get("version")
            elif name == "reelrec_request_seconds_count":
                requests += value
                if HOMEPAGE_ROUTE.search(labels.get("route", "")) and labels.get("method") == "GET":
                    homepage_count += value
            elif name == "reelrec_request_seconds_sum":
                if HOMEPAGE_ROUTE.search(labels.get("route", "")) and labels.get("method") == "GET":
                    homepage_sum += value
            elif name == "reelrec_request_seconds_bucket":
                if HOMEPAGE_ROUTE.search(labels.get("route", "")) and labels.get("method") == "GET":
                    le = float(labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + value
            elif metric.type == "gauge" and name.startswith("reelrec_") and not labels:
                gauges[name.removeprefix("reelrec_")] = value
    upper = np.array(sorted(buckets), dtype=np.float64)
    cumulative = np.array([buckets[u] for u in upper], dtype=np.float64)
    hits = cache.get("hit", 0.0)
    reads = sum(cache.values())
    lag = gauges.get("speed_layer_lag_seconds")
    return {
        "time": time.time(),
        "events_accepted": events.get("accepted", 0.0),
        "events_rejected": events.get("rejected", 0.0),
        "requests": requests,
        "cache_reads": reads,
        "cache_hits": hits,
        "cache_hit_ratio": hits / reads if reads else None,
        "speed_layer_lag_s": lag,
        "model_version": version,
        "homepage_requests": homepage_count,
        "homepage_mean_ms": 1000 * homepage_sum / homepage_count if homepage_count else None,
        "homepage_p50_ms": _ms(histogram_quantile(0.50, upper, cumulative)),
        "homepage_p99_ms": _ms(histogram_quantile(0.99, upper, cumulative)),
        "gauges": gauges,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 3)


@router.get("/v1/ui/stats", tags=["ui"], **scoped("read"))
def stats(request: Request) -> dict:
    """Live counters of this process (the same registry /metrics exposes), as JSON. Rates are
    left to the caller: two readings and their ``time`` give events per second."""
    return registry_stats(request.app.state.metrics.registry)


# --- evaluation reports -----------------------------------------------------------------------
def find_reports(data_dir: Path, max_depth: int = 3) -> dict[str, Path]:
    """Folders under ``data_dir`` holding a ``report.md`` of ``reelrec evaluate``, by their path
    relative to ``data_dir`` (the lake's partitions are skipped)."""
    data_dir = Path(data_dir)
    found: dict[str, Path] = {}
    if not data_dir.is_dir():
        return found
    frontier = [data_dir]
    for _ in range(max_depth + 1):
        nxt = []
        for d in frontier:
            if (d / "report.md").is_file():
                rel = d.relative_to(data_dir).as_posix()
                found["." if rel == "." else rel] = d
            try:
                nxt += [c for c in d.iterdir() if c.is_dir() and not c.name.startswith((".", "date="))]
            except OSError:
                continue
        frontier = sorted(nxt)
    return dict(sorted(found.items()))


def parse_report(text: str) -> dict:
    """The title, the first markdown table (header and rows), the prose and the images of a
    report.md."""
    lines = text.splitlines()
    title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
    header: list[str] = []
    rows: list[list[str]] = []
    prose: list[str] = []
    images = re.findall(r"!\[([^\]]*)\]\(([^)\s]+)\)", text)
    in_table = done = False
    for ln in lines:
        s = ln.strip()
        if s.startswith("|") and not done:
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not in_table:
                header, in_table = cells, True
            elif not all(set(c) <= set(":-") for c in cells):
                rows.append(cells)
            continue
        if in_table:
            done = True
        if s and not s.startswith(("#", "![")):
            prose.append(s)
    return {"title": title, "header": header, "rows": rows, "text": prose,
            "images": [{"alt": a, "file": f} for a, f in images if REPORT_FILE.match(f)]}


@router.get("/v1/ui/reports", tags=["ui"], **scoped("read"))
def reports(request: Request) -> dict:
    """Evaluation reports found under the data directory, each parsed into a table."""
    out = []
    for rid, folder in find_reports(request.app.state.services.settings.data_dir).items():
        doc = parse_report((folder / "report.md").read_text(encoding="utf-8", errors="replace"))
        doc["images"] = [i for i in doc["images"] if (folder / i["file"]).is_file()]
        out.append({"id": rid, **doc})
    return {"reports": out}


@router.get("/v1/ui/report-file", tags=["ui"], response_class=FileResponse, **scoped("read"),
            responses={**INVALID, 404: {"model": ErrorResponse, "description": "no such report or file"},
                       200: {"description": "the file", "content": {
                           "image/png": {}, "image/svg+xml": {}, "text/markdown": {}, "application/json": {}}}})
def report_file(request: Request, report: str = Query(..., max_length=300),
                name: str = Query(..., max_length=110)):
    """One plot (or the markdown) of a report found by ``/v1/ui/reports``."""
    if not REPORT_FILE.match(name):
        raise InvalidInput("must be a plain file name ending .png, .svg, .md or .json", field="name")
    folder = find_reports(request.app.state.services.settings.data_dir).get(report)
    if folder is None or not (folder / name).is_file():
        raise NotFound(f"no file {name!r} in report {report!r}")
    return FileResponse(folder / name)


# --- composition adherence over the precomputed pages ------------------------------------------
ADHERENCE_SAMPLE = 1000


def page_adherence(features, cfg, blobs: list[bytes]) -> dict:
    """Genre-cap and kind-mix adherence of the Top picks of cached pages.

    One sparse page x title matrix of the Top picks, multiplied by the titles' genre and kind
    indicators, gives every page's per-genre and per-kind counts at once. The kind check is the
    part of "each kind within one slot of the user's target" that holds for every user: no kind
    below its floor share (``kind_floor``) by more than one slot, since every target is at least
    the floor. The full per-user check needs each user's affinity and is done by
    ``reelrec precompute`` when it writes the pages.
    """
    import scipy.sparse as sp

    from reelrec.compose.mix import kind_bounds
    from reelrec.compose.page import decode_page
    from reelrec.compose.toppicks import SLOT_KINDS

    tops, slots, modes = [], [], {}
    for blob in blobs:
        page = decode_page(blob, features)
        modes[page.mode] = modes.get(page.mode, 0) + 1
        top = page.top_picks
        tops.append(np.asarray(top.titles, np.int64))
        slots.append(np.asarray(top.slots if top.slots is not None else np.zeros(len(top.titles)), np.int64))
    lengths = np.array([len(t) for t in tops], dtype=np.int64)
    keep = lengths > 0
    n_pages = int(keep.sum())
    out: dict[str, Any] = {"pages": n_pages, "modes": modes, "genre_cap": cfg.genre_cap,
                           "page_size": cfg.page_size, "kind_floor": cfg.kind_floor}
    if not n_pages:
        return out | {"pages_over_genre_cap": 0, "kind_floor_held": None, "max_genre_count": {},
                      "kind_share_mean": {}, "slots_mean": {k: 0.0 for k in SLOT_KINDS}}
    titles = np.concatenate([t for t in tops if len(t)])
    rows = np.repeat(np.arange(n_pages), lengths[keep])
    pages = sp.csr_matrix((np.ones(len(titles), np.float32), (rows, titles)),
                          shape=(n_pages, len(features)))
    per_genre = np.asarray((pages @ sp.csr_matrix(features.genre_multi_hot.astype(np.float32))).todense())
    kind_hot = sp.csr_matrix((np.ones(len(features), np.float32),
                              (np.arange(len(features)), np.clip(features.kind, 0, 2))),
                             shape=(len(features), 3))
    per_kind = np.asarray((pages @ kind_hot).todense())
    n = lengths[keep].astype(np.float64)
    caps = np.array([cfg.genre_cap_for(int(k)) for k in np.unique(n)], dtype=np.int64)
    cap_of = dict(zip(np.unique(n).astype(int).tolist(), caps.tolist()))
    cap = np.array([cap_of[int(k)] for k in n])
    max_genre = per_genre.max(axis=1).astype(np.int64)
    floor_lo = np.stack([kind_bounds(np.full(3, cfg.kind_floor * k))[0] for k in n])
    kinds = ("movie", "series", "documentary")
    slot_counts = np.bincount(np.concatenate(slots), minlength=len(SLOT_KINDS))
    return out | {
        "pages_over_genre_cap": int((max_genre > cap).sum()),
        "max_genre_count": {str(int(k)): int(c) for k, c in zip(*np.unique(max_genre, return_counts=True))},
        "kind_floor_held": float((per_kind >= floor_lo).all(axis=1).mean()),
        "kind_share_mean": {k: float(v) for k, v in zip(kinds, (per_kind / n[:, None]).mean(axis=0))},
        "slots_mean": {k: float(slot_counts[i]) / n_pages for i, k in enumerate(SLOT_KINDS)},
        "top_picks_mean": float(n.mean()),
    }


def _homepage_reader(request: Request):
    """The app's ``HomepageReader``: its cache and its model (``create_app`` sets it)."""
    reader = getattr(request.app.state, "reader", None)
    if reader is None:
        raise NotFound("this server has no homepage cache")
    return reader


@router.get("/v1/ui/adherence", tags=["ui"], responses={404: {"model": ErrorResponse}}, **scoped("read"))
def adherence(request: Request) -> dict:
    """Genre-cap and kind-mix adherence over the cached pages of up to ``ADHERENCE_SAMPLE`` users
    (every ``k``-th user of the user table), read with one ``get_many``; recomputed when the
    published version changes, and at most every 30 seconds otherwise, since the speed layer
    rewrites pages."""
    from reelrec.storage.cache import page_key
    reader = _homepage_reader(request)
    users = _users_table(request)
    if users is None or users.num_rows == 0:
        return {"pages": 0, "note": "no users yet"}
    step = max(1, -(-users.num_rows // ADHERENCE_SAMPLE))
    ids = users.column("user_id").take(pa.array(np.arange(0, users.num_rows, step))).to_pylist()
    version = reader.cache.current_version()

    def compute():
        got = reader.cache.get_many([page_key(u) for u in ids])
        if got.version is None:
            return {"pages": 0, "note": "no pages precomputed yet (`reelrec precompute`)"}
        model = reader.model(got.version)
        out = page_adherence(model.features, model.cfg, [b for b in got.values if b is not None])
        return out | {"model_version": got.version, "users": len(ids), "sampled": step > 1,
                      "cached_pages": sum(b is not None for b in got.values)}
    return _memo(request, "adherence").get((version, users, int(time.time() // 30)), compute)
