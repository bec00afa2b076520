"""From a trained model to homepages: the one place that turns the pipeline's ranked candidates
into composed, encoded pages (DESIGN.md, pipeline steps 1-4).

``ServingModel`` is one model version ready to serve: the pipeline (candidates -> ranker), the
catalog features composition needs, cold-start priors, the shared shelves of every region, the
co-visitation neighbours behind "Because you watched X", and the page assembler. Precompute (every
user, in batches), the speed layer (one user after an event) and the API (a cache miss) all build
pages through ``ServingModel.pages``, so the three cannot drift apart.

User profiles come from folded interactions (``reelrec.domain.signals``) with the same rules
everywhere: ``profiles_from_interactions``.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.batch.pipeline import Pipeline, load_pipeline
from reelrec.batch.versions import ModelStore
from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.coldstart import ColdStartPriors
from reelrec.compose.config import ComposeConfig
from reelrec.compose.features import SOURCE, Candidates, CatalogFeatures, UserProfile, affinities
from reelrec.compose.page import Assembler, decode_page, decode_shared, encode_page, encode_shared
from reelrec.compose.shelves import (SHARED_TYPES, ComposedPage, SharedShelf, shared_key, build_shared_shelves, compose_fallback,
                                     compose_page, shared_keys)
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import index_of
from reelrec.domain.users import RequestContext
from reelrec.errors import Conflict, NotFound, Unavailable
from reelrec.log import get_logger
from reelrec.storage.cache import page_key, shelf_key

log = get_logger(__name__)
UTC = dt.timezone.utc

# the pipeline's source names -> composition's source codes (reasons depend on them)
_SOURCE_MAP = {"ann": "ann", "ease": "covisit", "covisit": "covisit", "trending": "trending",
               "new": "new", "genre_pop": "genre", "rp3beta": "covisit", "itemknn": "covisit",
               "session": "covisit"}
CANDIDATES_PER_USER = 150
STRONG_POSITIVE = 2.0  # weight from which a title can seed "Because you watched X"
RECENT_POSITIVES = 5


class Neighbours(Mapping):
    """Top co-visitation neighbours of a title, read lazily from the sparse matrix."""

    def __init__(self, covisit: sp.csr_matrix, k: int = 40):
        self.m, self.k = sp.csr_matrix(covisit), k

    def __getitem__(self, title: int) -> np.ndarray:
        lo, hi = self.m.indptr[title], self.m.indptr[title + 1]
        cols, vals = self.m.indices[lo:hi], self.m.data[lo:hi]
        order = np.argsort(-vals, kind="stable")[: self.k]
        return cols[order].astype(np.int64)

    def __iter__(self):
        return iter(range(self.m.shape[0]))

    def __len__(self) -> int:
        return self.m.shape[0]


def aligned_catalog(catalog: Catalog, title_ids: np.ndarray) -> Catalog:
    """The catalog rows in the model's title order.

    Raises:
        Conflict: a title the model knows is missing from the catalog.
    """
    idx = index_of(pa.array(list(title_ids), pa.string()), catalog.table.column("title_id"))
    if (idx < 0).any():
        missing = [str(t) for t in np.asarray(title_ids)[idx < 0][:5]]
        raise Conflict(f"the catalog lacks {int((idx < 0).sum())} titles of the model (e.g. {missing})")
    return Catalog(catalog.table.take(pa.array(idx)))


@dataclass
class Profiles:
    """Profiles of a batch of users, by user id (built by ``profiles_from_interactions``)."""

    by_user: dict[str, UserProfile] = field(default_factory=dict)

    def get(self, user_id: str, region: str | None = None) -> UserProfile:
        p = self.by_user.get(user_id)
        return p if p is not None else UserProfile(user_id=user_id, region=region)


def profiles_from_interactions(features: CatalogFeatures, interactions: pa.Table,
                               impressions: pa.Table | None = None, users: pa.Table | None = None,
                               regions: Mapping[str, str | None] | None = None) -> Profiles:
    """One ``UserProfile`` per user seen in ``interactions`` or ``users``.

    ``interactions`` is ``fold_interactions`` output; ``impressions`` has ``user_id, title_id``
    (titles shown); ``users`` is the users table (region, onboarding picks); ``regions`` overrides
    a user's region (the latest one seen on their events).
    """
    ids = pa.array(list(features.ids), pa.string())
    col = index_of(interactions.column("title_id"), ids)
    t = interactions.filter(pa.array(col >= 0))
    col = col[col >= 0]
    # users in sorted order (UTF-8 bytes sort as code points: the order of Python's str) and each
    # row's user, by Arrow's string kernels rather than sorts of Python objects
    seen = pc.unique(t.column("user_id"))
    seen = seen.take(pc.sort_indices(seen))
    users_seen = np.asarray(seen.to_pylist(), dtype=object) if len(seen) else np.zeros(0, object)
    row = index_of(t.column("user_id"), seen)
    weight = t.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    negative = t.column("negative").to_numpy(zero_copy_only=False).astype(bool)
    finished = t.column("finished").to_numpy(zero_copy_only=False).astype(bool)
    thumbs = t.column("thumbs").to_numpy(zero_copy_only=False)
    rewatches = t.column("rewatches").to_numpy(zero_copy_only=False)
    completion = t.column("best_completion").to_numpy(zero_copy_only=False).astype(np.float64)
    plays = t.column("plays").to_numpy(zero_copy_only=False)
    last = pc.cast(t.column("last_ts"), pa.int64()).to_numpy(zero_copy_only=False)
    positive = (weight > 0) & ~negative
    pos = sp.csr_matrix((np.where(positive, weight, 0.0), (row, col)), shape=(len(users_seen), len(features)))
    kind_aff, genre_aff = affinities(features, pos)

    order = np.lexsort((-last, row))  # per user, newest first
    bounds = np.searchsorted(row[order], np.arange(len(users_seen) + 1))
    shown: dict[str, np.ndarray] = {}
    if impressions is not None and impressions.num_rows:
        ic = index_of(impressions.column("title_id"), ids)
        ok = ic >= 0
        iu = impressions.column("user_id").filter(pa.array(ok))
        ic = ic[ok]
        names = pc.unique(iu)
        code = index_of(iu, names)
        # each user's distinct titles, ascending (np.unique of theirs), as slices of one array
        o = np.lexsort((ic, code))
        code, ic = code[o], ic[o]
        first = np.ones(len(ic), bool)
        first[1:] = (code[1:] != code[:-1]) | (ic[1:] != ic[:-1])
        code, ic = code[first], ic[first]
        at = np.searchsorted(code, np.arange(len(names) + 1)).tolist()
        for j, u in enumerate(names.to_pylist()):
            shown[u] = ic[at[j]:at[j + 1]]

    meta: dict[str, dict] = {}
    if users is not None and users.num_rows:
        for r in users.select([c for c in ("user_id", "region", "onboarding_genres")
                               if c in users.column_names]).to_pylist():
            meta[r["user_id"]] = r
    out = Profiles()
    empty = np.zeros(0, np.int64)
    for i, u in enumerate(users_seen):
        sel = order[bounds[i]:bounds[i + 1]]
        c = col[sel]
        rejected = negative[sel] | (thumbs[sel] < 0)
        strong = positive[sel] & (weight[sel] >= STRONG_POSITIVE)
        progress = (completion[sel] > 0) & (completion[sel] < 0.9) & ~finished[sel] & ~rejected & (plays[sel] > 0)
        m = meta.get(u, {})
        region = (regions or {}).get(u) or m.get("region")
        out.by_user[u] = UserProfile(
            user_id=u, region=region, kind_affinity=kind_aff[i], genre_affinity=genre_aff[i],
            impressions=shown.get(u, empty), thumbs_down=c[rejected], finished=c[finished[sel]],
            rewatcher=bool((rewatches[sel] > 0).any()), in_progress=c[progress],
            recent_positives=c[strong][:RECENT_POSITIVES], n_engaged=int(positive[sel].sum()),
            onboarding_genres=tuple(m.get("onboarding_genres") or ()))
    for u, m in meta.items():
        if u not in out.by_user:
            region = (regions or {}).get(u) or m.get("region")
            out.by_user[u] = UserProfile(user_id=u, region=region, impressions=shown.get(u, empty),
                                         onboarding_genres=tuple(m.get("onboarding_genres") or ()))
    return out


class ServingModel:
    """One model version, ready to compose and assemble pages."""

    def __init__(self, version: str, pipeline: Pipeline, features: CatalogFeatures,
                 cfg: ComposeConfig | None = None, today: dt.date | None = None):
        self.version, self.pipeline, self.features = version, pipeline, features
        self.cfg = cfg or ComposeConfig()
        st = pipeline.art.stats
        self.regions = [str(r) for r in st.regions]
        pop_region = {r: st.pop_region[i] for i, r in enumerate(self.regions)}
        self.cold = ColdStartPriors(features, pop_region, self.cfg)
        self.neighbours = Neighbours(pipeline.art.covisit)
        self.assembler = Assembler(features)
        self._shared_decoded: dict[bytes, SharedShelf] = {}
        self.today = today or dt.datetime.fromtimestamp(pipeline.art.ref_s or 0, UTC).date()
        self.shared: dict[str, SharedShelf] = {}
        for region in sorted(set(self.regions) | set(features.regions)) + [None]:
            i = self.regions.index(region) if region in self.regions else None
            self.shared.update(build_shared_shelves(
                features, region, today=self.today,
                trending=st.trend_region[i] if i is not None else st.trend_week,
                popularity=st.pop_region[i] if i is not None else None, cfg=self.cfg))
        self._unit: np.ndarray | None = None
        self.user_row = ({u: i for i, u in enumerate(pipeline.user_ids)}
                         if pipeline.user_ids is not None else {})
        self.title_col = {str(t): i for i, t in enumerate(features.ids)}

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings, version: str | None = None) -> "ServingModel":
        """Load (and verify) a model version; the published one by default.

        Raises:
            NotFound: no version published or no such version.
            Conflict: the version is corrupt or half-written, or the catalog lacks its titles.
        """
        store = ModelStore(settings.models_dir)
        version = version or store.current()
        if version is None:
            raise NotFound(f"no published model under {settings.models_dir}; run `reelrec train`")
        manifest = store.verify(version)
        pipeline = load_pipeline(store.path(version), manifest["config"])
        catalog = aligned_catalog(Catalog.load(settings.data_dir), pipeline.art.title_ids)
        st = pipeline.art.stats
        features = CatalogFeatures.from_catalog(catalog, popularity=np.asarray(st.pop, np.float32))
        return cls(version, pipeline, features, settings.compose)

    # --- candidates ------------------------------------------------------------------------
    def candidates_for_rows(self, rows: np.ndarray, k: int = CANDIDATES_PER_USER,
                            request: RequestContext | None = None) -> list[Candidates]:
        """Ranked candidates of training users (pipeline rows), one batch, scored for their rows
        of ``request`` (None, as precompute: each user's most frequent device and daypart)."""
        state = self.pipeline.users.take(np.asarray(rows, np.int64)).with_request(request)
        return self.candidates_for_state(state, k)

    def candidates_for_state(self, state, k: int = CANDIDATES_PER_USER) -> list[Candidates]:
        cols, scores, sources = self.pipeline.score(state, k, with_sources=True)
        # source names -> composition's codes, one comparison per distinct name over the batch
        codes = np.full(sources.shape, SOURCE["ann"], np.uint8)
        for name in set(sources.ravel().tolist()):
            code = SOURCE[_SOURCE_MAP.get(name, "ann")]
            if code != SOURCE["ann"]:
                codes[sources == name] = code
        out = []
        for c, s, src in zip(cols, scores, codes):
            ok = c >= 0
            out.append(Candidates.of(c[ok], s[ok], src[ok]))
        return out

    def similar(self, title_id: str, k: int = 10) -> np.ndarray:
        """Title columns nearest to ``title_id`` by cosine of title vectors (content vectors for
        titles without interactions). Cosine, not inner product: the raw product favours
        popular titles, whose vectors are long.

        Raises:
            NotFound: the model does not know the title.
        """
        i = self.title_col.get(title_id)
        if i is None:
            raise NotFound(f"title {title_id!r} is not in model version {self.version}")
        if self._unit is None:
            v = self.pipeline.art.item_factors.astype(np.float32)
            self._unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        sims = self._unit @ self._unit[i]
        sims[i] = -np.inf
        k = min(k, len(sims) - 1)
        top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
        return top[np.argsort(-sims[top], kind="stable")]

    # --- composing -------------------------------------------------------------------------
    def compose(self, profile: UserProfile, candidates: Candidates | None,
                bandit: ThompsonBandit | None = None, rng: np.random.Generator | None = None,
                now: dt.datetime | None = None) -> ComposedPage:
        region_shared = {k: self.shared[k] for k in shared_keys(profile.region) if k in self.shared}
        if profile.n_engaged == 0:
            candidates = None
        return compose_page(self.features, profile, candidates, cfg=self.cfg, bandit=bandit, rng=rng,
                            neighbours=self.neighbours, cold=self.cold, shared=region_shared, now=now)

    def fallback(self, user_id: str, region: str | None) -> ComposedPage:
        region_shared = {k: self.shared[k] for k in shared_keys(region) if k in self.shared}
        return compose_fallback(self.features, user_id, region, region_shared, cfg=self.cfg)

    def encode(self, page: ComposedPage) -> bytes:
        return encode_page(page, self.features)

    def shared_items(self) -> dict[str, bytes]:
        """Every shared shelf as cache items (``shelf_key`` -> bytes)."""
        return {shelf_key(k): encode_shared(s, self.features) for k, s in self.shared.items()}

    # --- assembling --------------------------------------------------------------------------
    def document(self, page: ComposedPage) -> dict:
        region_shared = {k: self.shared[k] for k in shared_keys(page.region) if k in self.shared}
        return self.assembler.document(page, self.version, region_shared)

    def _decode_shared(self, blob: bytes) -> SharedShelf:
        """A shared shelf from its bytes, decoded once while the bytes stay the same (every read
        of a region carries the same few shelves; the same object lets the assembler reuse the
        shelf's rendered items)."""
        got = self._shared_decoded.get(blob)
        if got is None:
            if len(self._shared_decoded) > 1024:
                self._shared_decoded.clear()
            got = self._shared_decoded[bytes(blob)] = decode_shared(blob)
        return got

    def document_json(self, page: ComposedPage) -> bytes:
        """``document`` as JSON bytes (``Assembler.json``)."""
        region_shared = {k: self.shared[k] for k in shared_keys(page.region) if k in self.shared}
        return self.assembler.json(page, self.version, region_shared)

    def assemble(self, user_id: str, blob: bytes, shared: Mapping[str, bytes | None],
                 region: str | None = None) -> dict:
        """The Page document from a cached page and the shelves read with it (``shelf_key``
        names); a shared shelf missing from the read falls back to this model's copy. A request
        ``region`` other than the page's brings that region's shared shelves (the personal shelves
        stay until the speed layer recomposes the page)."""
        page, region_shared = self._cached_page(decode_page(blob, self.features, user_id), shared, region)
        return self.assembler.document(page, self.version, region_shared)

    def assemble_json(self, user_id: str, blob: bytes, shared: Mapping[str, bytes | None],
                      region: str | None = None) -> bytes:
        """``assemble`` as JSON bytes, the same document byte for byte as ``orjson.dumps`` of
        ``assemble``'s: the blob is read and the document spliced from fragments encoded once
        per model version in one pass (``Assembler.blob_json``)."""
        return self.assembler.blob_json(blob, user_id, self.version,
                                        lambda r: self._region_shared(r, shared), region)

    def _cached_page(self, page: ComposedPage, shared: Mapping[str, bytes | None],
                     region: str | None) -> tuple[ComposedPage, dict[str, SharedShelf]]:
        """A page read from the cache, moved to the request's ``region``, and the region's
        shared shelves from the read (this model's own where the read lacks one)."""
        if region and region != page.region:
            page.region = region
            for shelf in page.shelves:
                if shelf.type in SHARED_TYPES:
                    shelf.key = shared_key(shelf.type, region)
        return page, self._region_shared(page.region, shared)

    def _region_shared(self, region: str | None, shared: Mapping[str, bytes | None]) -> dict[str, SharedShelf]:
        """The shared shelves of ``region`` by ``shared_key``: from the read (``shelf_key``
        names), this model's own where the read lacks one."""
        region_shared: dict[str, SharedShelf] = {}
        for k, sk in _region_keys(region):
            got = shared.get(sk)
            if got is not None:
                region_shared[k] = self._decode_shared(got)
            elif k in self.shared:
                region_shared[k] = self.shared[k]
        return region_shared


def read_keys(user_id: str, region: str | None) -> list[str]:
    """The keys of one homepage read: the user's page and the region's shared shelves."""
    return [page_key(user_id), *(sk for _, sk in _region_keys(region))]


@functools.lru_cache(maxsize=4096)  # a few per region, wanted twice by every read
def _region_keys(region: str | None) -> tuple[tuple[str, str], ...]:
    """The region's shared shelves: (``shared_key``, its cache key ``shelf_key``) each."""
    return tuple((k, shelf_key(k)) for k in shared_keys(region))


def model_path(settings: Settings, version: str) -> Path:
    return ModelStore(settings.models_dir).path(version)


class HomepageReader:
    """Serving a homepage: one cache read, the page assembled in process.

    The cache read (user page + the region's shared shelves) carries the published version; the
    reader loads that model version when it changes (hot swap, no restart) and keeps serving the
    previous one when the new one fails to load. A user without a page gets a cold-start page
    composed on the spot; a cache that cannot be reached gives a fallback page (the region's
    shared shelves), flagged ``mode: fallback`` — never an error.
    """

    def __init__(self, settings: Settings, cache, on_read=None, on_load=None):
        """``on_read(result)`` counts each read ("hit", "miss", "error"); ``on_load(model)`` is
        called after each model version is loaded and kept (the API re-settles its heap there)."""
        self.settings, self.cache = settings, cache
        # at most two models: the live one (whose pages the cache last served) and the newest
        # loaded (preloaded before its pages go live, so a swap never waits on a load); a
        # refused version falls back to the live one
        self._models: dict[str, ServingModel] = {}
        self._live: str | None = None
        self._bad: set[str] = set()
        # one load at a time: request threads that see a new version together load it once
        self._load_lock = threading.Lock()
        self.on_read = on_read or (lambda result: None)
        self.on_load = on_load or (lambda model: None)

    def _keep(self, m: ServingModel) -> None:
        others = {k: v for k, v in self._models.items() if k != m.version}
        keep = {self._live: others[self._live]} if self._live in others else dict(list(others.items())[-1:])
        self._models = {**keep, m.version: m}
        self.on_load(m)

    def _fallback(self) -> ServingModel:
        live = self._models.get(self._live) if self._live else None
        return live if live is not None else next(reversed(self._models.values()))

    def preload(self, version: str) -> ServingModel:
        """Load ``version`` now (before its pages are published, so the swap costs requests
        nothing), even if it was refused before.

        Raises:
            NotFound: no such version.
            Conflict: the version is corrupt, half-written, or does not fit the catalog.
        """
        with self._load_lock:
            if version in self._models:
                return self._models[version]
            m = ServingModel.load(self.settings, version)
            self._bad.discard(version)
            self._keep(m)
            return m

    def refused(self) -> list[str]:
        """Versions this reader refused to load (corrupt or not fitting the catalog)."""
        return sorted(self._bad)

    def serving(self) -> str | None:
        """The version this reader serves pages with (None before the first read)."""
        return self._live

    def model(self, version: str | None = None) -> ServingModel:
        """The model of ``version`` (or the newest usable one), loading it once.

        Raises:
            Unavailable: no usable model at all.
        """
        got = self._models.get(version) if version else None
        if got is not None:
            self._live = version
            return got
        with self._load_lock:
            if version and version in self._models:
                self._live = version
                return self._models[version]
            if version and version not in self._bad:
                try:
                    m = ServingModel.load(self.settings, version)
                    self._keep(m)
                    self._live = version
                    return m
                except (Conflict, NotFound) as exc:
                    self._bad.add(version)
                    log.error("model version refused; the previous one keeps serving",
                              version=version, error=str(exc))
            if self._models:
                return self._fallback()
            try:
                m = ServingModel.load(self.settings)  # the published model in the store
            except (NotFound, Conflict) as exc:
                raise Unavailable(f"no model to serve yet: {exc}") from None
            self._keep(m)
            self._live = self._live or m.version
            return m

    def read(self, user_id: str, region: str | None = None, onboarding: tuple[str, ...] = (),
             device: str | None = None, hour: int | None = None, fresh: bool = False) -> dict:
        """The Page document of ``user_id`` (``region``: where the request comes from).

        ``fresh`` (after onboarding): a user without a personal page gets a cold-start page
        composed now from ``onboarding`` rather than a cached one."""
        try:
            got = self.cache.get_many(read_keys(user_id, region))
        except Unavailable as exc:
            return self._fallback_page(user_id, region, exc)
        return self._page(user_id, region, got, onboarding, device, hour, fresh)

    async def aread(self, user_id: str, region: str | None = None, device: str | None = None,
                    hour: int | None = None) -> dict:
        """``read`` for an event loop (see ``aread_json``)."""
        return orjson.loads((await self.aread_json(user_id, region, device, hour))[0])

    async def aread_json(self, user_id: str, region: str | None = None, device: str | None = None,
                         hour: int | None = None) -> tuple[bytes, str]:
        """The Page document of ``user_id`` as JSON bytes, and its model version, for an event
        loop: the one cache read awaits the cache's asyncio client (no worker thread per
        request); a model version this process has not loaded yet is loaded on a worker thread,
        so the loop keeps serving while it loads. Assembly is CPU work of a fraction of a
        millisecond and runs on the loop: the cached page is read into its JSON document in one
        pass (``ServingModel.assemble_json``)."""
        import asyncio
        keys = read_keys(user_id, region)
        try:
            got = await self.cache.aget_many(keys)
        except Unavailable as exc:
            if not self._models:
                await asyncio.to_thread(self.model)
            return self._fallback_page(user_id, region, exc, as_json=True)
        if got.version not in self._models and got.version not in self._bad:
            await asyncio.to_thread(self.model, got.version)
        return self._page(user_id, region, got, (), device, hour, False, as_json=True, keys=keys)

    def _fallback_page(self, user_id: str, region: str | None, exc: Exception, as_json: bool = False):
        log.warning("cache unavailable; serving the fallback page", error=str(exc))
        self.on_read("error")
        model = self.model()
        page = model.fallback(user_id, region)
        return (model.document_json(page), model.version) if as_json else model.document(page)

    def _page(self, user_id: str, region: str | None, got, onboarding: tuple[str, ...],
              device: str | None, hour: int | None, fresh: bool, as_json: bool = False,
              keys: list[str] | None = None):
        """The document (``as_json``: its JSON bytes and model version) from a cache read of
        ``keys`` (``read_keys``)."""
        keys = keys or read_keys(user_id, region)
        model = self.model(got.version)
        if got.version is not None and model.version != got.version:
            # the published pages belong to a model this reader refused: serve the previous
            # model's own pages (page blobs index that model's titles), still in the cache. A
            # second, blocking read, also from aread: only while a refused version is published
            got = self.cache.get_many(keys, version=model.version)
        blob = got.values[0]
        if blob is not None and fresh:
            doc = model.assemble(user_id, blob, dict(zip(keys[1:], got.values[1:])),
                                 region)
            if doc["mode"] == "personal":
                return doc
            blob = None
        if blob is None:
            self.on_read("miss")
            profile = UserProfile(user_id=user_id, region=region, onboarding_genres=onboarding,
                                  device=device, hour=hour)
            page = model.compose(profile, None)
            return (model.document_json(page), model.version) if as_json else model.document(page)
        self.on_read("hit")
        shared = dict(zip(keys[1:], got.values[1:]))
        if as_json:
            return model.assemble_json(user_id, blob, shared, region), model.version
        return model.assemble(user_id, blob, shared, region)
