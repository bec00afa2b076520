"""The speed layer: events from the bus -> online state -> the user's page, within about a second.

For each micro-batch of events (DESIGN.md, right-hand branch of the data flow):

1. drop event_ids already applied (``state.seen_many``: at-least-once delivery, idempotent effect);
2. fold each event into the online state: the user's log of events since the model's training
   cut, in-progress titles, exposure (impressions), profile fields (region, language, device,
   onboarding picks), trending counters by region, and the bandit's posteriors (an explore
   impression is a trial, a play of that title a success);
3. for every user whose taste or context changed, recompute the page with the same code the batch
   layer uses (``reelrec.homepage.ServingModel``): the user's training row plus the online log
   become the positives, the ALS vector is folded in exactly (title vectors fixed), candidates and
   ranker run on the batch of users at once, composition builds the page, the cache takes it
   under the serving version.

Events older than the model's training cut are already in the model and only update the state.
The training-time interactions of every user are folded once per model version and kept in memory
(``BaseHistory``); at the design's scale that table belongs in the online store (docs/scaling.md).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.compose.bandit import ThompsonBandit
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.events import EVENT_SCHEMA, parse_ts
from reelrec.domain.matrix import index_of
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import load_users
from reelrec.errors import NotFound
from reelrec.homepage import HomepageReader, ServingModel, profiles_from_interactions
from reelrec.log import get_logger
from reelrec.storage.cache import page_key
from reelrec.storage.lake import open_lake

log = get_logger(__name__)
UTC = dt.timezone.utc

LOG_FIELD = "log"  # the user's online event log (JSON lines), since the model's training cut
MAX_LOG = 500
RECOMPUTE_TYPES = frozenset({"play_start", "progress", "complete", "thumbs_up", "thumbs_down", "rating",
                             "watchlist_add", "watchlist_remove", "search", "skip_intro", "skip_recap",
                             "onboarding", "profile"})
PLAY_TYPES = ("play_start", "complete")
LOG_COLUMNS = ("event_id", "user_id", "title_id", "type", "ts", "position_s", "watched_s", "rating",
               "region", "device", "query", "genres")


class BaseHistory:
    """Every user's folded interactions and impressions up to the model's training cut."""

    def __init__(self, settings: Settings, model: ServingModel, catalog: Catalog):
        lake = open_lake(settings.lake)
        ref = dt.datetime.fromtimestamp(model.pipeline.art.ref_s, UTC) if model.pipeline.art.ref_s else None
        events = lake.scan(end=ref, columns=["user_id", "title_id", "type", "ts", "position_s",
                                             "watched_s", "rating"])
        self.interactions = _group(fold_interactions(events, catalog.table, settings.signals))
        self.impressions = _group(lake.scan(end=ref, columns=["user_id", "title_id"], types=["impression"]))
        try:
            self.users = load_users(settings.data_dir)
        except NotFound:
            self.users = None
        self._meta = ({u: r for u, r in zip(self.users.column("user_id").to_pylist(), self.users.to_pylist())}
                      if self.users is not None else {})
        self.ref = ref

    def meta(self, user_id: str) -> dict:
        return self._meta.get(user_id, {"user_id": user_id})


@dataclass
class _Grouped:
    table: pa.Table
    rows: dict[str, tuple[int, int]]

    def of(self, users: list[str]) -> pa.Table:
        parts = []
        for u in users:
            r = self.rows.get(u)
            if r is not None:
                parts.append(self.table.slice(r[0], r[1] - r[0]))
        return pa.concat_tables(parts) if parts else self.table.slice(0, 0)


def _group(table: pa.Table) -> _Grouped:
    """The table sorted by user, with each user's row range."""
    if table.num_rows == 0:
        return _Grouped(table, {})
    table = table.sort_by("user_id")
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return _Grouped(table, {users[s]: (int(s), int(e)) for s, e in zip(starts, ends)})


@dataclass
class ApplyResult:
    events: int = 0
    duplicates: int = 0
    recomputed: list[str] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)  # per recomputed user: now - newest event ts
    seconds: float = 0.0


class SpeedLayer:
    """Applies event micro-batches to the online state and rewrites the affected pages."""

    def __init__(self, settings: Settings, cache, state, reader: HomepageReader | None = None,
                 seed: int = 0):
        self.settings, self.cache, self.state = settings, cache, state
        self.reader = reader or HomepageReader(settings, cache)
        self.rng = np.random.default_rng(seed)
        self._base: dict[str, BaseHistory] = {}
        self._bandit: dict[str, ThompsonBandit] = {}
        self._catalog: Catalog | None = None

    # --- the serving model and what belongs to it ----------------------------------------------
    def model(self) -> ServingModel:
        version = None
        try:
            version = self.cache.current_version()
        except Exception as exc:  # an unreachable cache: keep using the model we have
            log.warning("cache version unknown", error=str(exc))
        return self.reader.model(version)

    def base(self, model: ServingModel) -> BaseHistory:
        got = self._base.get(model.version)
        if got is None:
            self._catalog = Catalog.load(self.settings.data_dir)
            got = BaseHistory(self.settings, model, self._catalog)
            self._base = {model.version: got}
        return got

    def bandit(self, model: ServingModel) -> ThompsonBandit:
        b = self._bandit.get(model.version)
        if b is None:
            b = ThompsonBandit(model.features.cluster_names)
            arms = [f"{r}|{c}" for r in model.regions + ["GLOBAL"] for c in model.features.cluster_names]
            post = self.state.bandit_posteriors(arms, prior=(0.0, 0.0)) if arms else np.zeros((0, 2))
            for arm, (wins, losses) in zip(arms, post):
                region, cluster = arm.split("|", 1)
                if wins:
                    b.update(None if region == "GLOBAL" else region, cluster, True, float(wins))
                if losses:
                    b.update(None if region == "GLOBAL" else region, cluster, False, float(losses))
            self._bandit = {model.version: b}
        return b

    # --- applying events -------------------------------------------------------------------------
    def apply(self, events: list[dict]) -> ApplyResult:
        """Fold a micro-batch of (validated) events into the state and recompute touched pages."""
        t0 = time.perf_counter()
        res = ApplyResult(events=len(events))
        ids = [str(e.get("event_id")) for e in events]
        dup = self.state.seen_many(ids) if ids else []
        fresh = [e for e, d in zip(events, dup) if not d]
        res.duplicates = len(events) - len(fresh)
        if not fresh:
            return res
        model = self.model()
        base = self.base(model)
        bandit = self.bandit(model)
        ref = base.ref.timestamp() if base.ref else 0.0
        touched: dict[str, float] = {}
        logs: dict[str, list[dict]] = {}
        for e in fresh:
            u = e["user_id"]
            ts = parse_ts(e["ts"]).timestamp()
            etype, title = e["type"], e.get("title_id")
            region = (e.get("region") or self._region_of(u, base) or "GLOBAL").upper()
            if ts >= ref and etype != "impression":
                logs.setdefault(u, []).append({k: e[k] for k in LOG_COLUMNS if e.get(k) is not None})
            if etype == "impression" and title:
                self.state.add_exposure(u, [title])
                if e.get("slot_kind") == "explore":
                    self._bandit_trial(model, bandit, u, region, title)
            elif etype in ("play_start", "progress") and title:
                self.state.set_in_progress(u, title, ts)
                if etype == "play_start":
                    self.state.bump(f"plays:{region}", [title], at=ts)
                    self.state.bump("plays:GLOBAL", [title], at=ts)
                    self._bandit_success(model, bandit, u, region, title)
            elif etype == "complete" and title:
                self.state.clear_in_progress(u, title)
            elif etype == "profile":
                fields = {k: e[k] for k in ("region", "language", "device") if e.get(k)}
                if fields:
                    self.state.set_fields(u, fields)
            elif etype == "onboarding":
                self.state.set_fields(u, {"onboarding": ",".join(e.get("genres") or [])})
            if etype in RECOMPUTE_TYPES:
                touched[u] = max(touched.get(u, 0.0), ts)
        for u, new in logs.items():
            old = self._log(u)
            self.state.set_fields(u, {LOG_FIELD: json.dumps((old + new)[-MAX_LOG:], separators=(",", ":"))})
        if touched:
            users = sorted(touched)
            self.recompute(users, model, base, bandit)
            now = time.time()
            res.recomputed = users
            res.lag_s = [now - touched[u] for u in users]
        res.seconds = time.perf_counter() - t0
        return res

    def _region_of(self, user_id: str, base: BaseHistory) -> str | None:
        return self.state.fields(user_id).get("region") or base.meta(user_id).get("region")

    def _log(self, user_id: str) -> list[dict]:
        raw = self.state.fields(user_id).get(LOG_FIELD)
        return json.loads(raw) if raw else []

    def _bandit_trial(self, model, bandit, user_id, region, title) -> None:
        cluster = self._cluster(model, title)
        if cluster is None:
            return
        self.state.set_fields(user_id, {f"explore:{title}": cluster})
        self.state.bandit_update([f"{region}|{cluster}", f"GLOBAL|{cluster}"], [0, 0], [1, 1])
        bandit.update(region, cluster, False)

    def _bandit_success(self, model, bandit, user_id, region, title) -> None:
        cluster = self.state.fields(user_id).get(f"explore:{title}")
        if not cluster:
            return
        # every explore impression is a trial (beta); a play of the shown title is a success (alpha),
        # so the posterior mean tracks plays per explore impression of the cluster
        self.state.bandit_update([f"{region}|{cluster}", f"GLOBAL|{cluster}"], [1, 1], [0, 0])
        bandit.update(region, cluster, True)
        self.state.set_fields(user_id, {f"explore:{title}": ""})

    @staticmethod
    def _cluster(model: ServingModel, title: str) -> str | None:
        hit = np.flatnonzero(model.features.ids == title)
        return model.features.cluster_names[int(model.features.cluster[hit[0]])] if len(hit) else None

    # --- recomputing pages ------------------------------------------------------------------------
    def recompute(self, users: list[str], model: ServingModel | None = None, base: BaseHistory | None = None,
                  bandit: ThompsonBandit | None = None) -> None:
        """Rebuild and cache the pages of ``users`` from their training row plus their online log."""
        model = model or self.model()
        base = base or self.base(model)
        bandit = bandit or self.bandit(model)
        catalog = self._catalog
        fields = {u: self.state.fields(u) for u in users}
        rows = [dict(r, ts=parse_ts(r["ts"])) for u in users for r in json.loads(fields[u].get(LOG_FIELD) or "[]")]
        online = pa.Table.from_pylist(rows, schema=EVENT_SCHEMA) if rows else EVENT_SCHEMA.empty_table()
        online_inter = fold_interactions(online, catalog.table, self.settings.signals)
        inter = pa.concat_tables([base.interactions.of(users), online_inter.select(base.interactions.table.column_names)]) \
            if base.interactions.table.num_rows else online_inter
        shown = [base.impressions.of(users).select(["user_id", "title_id"])]
        exposure = [(u, t) for u in users for t in self.state.exposure(u)]
        if exposure:
            shown.append(pa.table({"user_id": [u for u, _ in exposure], "title_id": [t for _, t in exposure]},
                                  schema=shown[0].schema))
        impressions = pa.concat_tables(shown)
        regions = {u: (fields[u].get("region") or base.meta(u).get("region")) for u in users}
        meta = []
        for u in users:
            m = dict(base.meta(u))
            m["region"] = regions[u]
            if fields[u].get("onboarding"):
                m["onboarding_genres"] = fields[u]["onboarding"].split(",")
            meta.append({"user_id": u, "region": m.get("region"), "onboarding_genres": m.get("onboarding_genres")})
        users_tbl = pa.Table.from_pylist(meta, schema=pa.schema([("user_id", pa.string()), ("region", pa.string()),
                                                                  ("onboarding_genres", pa.list_(pa.string()))]))
        profiles = profiles_from_interactions(model.features, inter, impressions, users_tbl, regions)

        # the pipeline's view: training positives plus the online ones, vector folded in
        pipe = model.pipeline
        n = len(model.features)
        online_pos = _matrix(online_inter, users, model.features.ids, positive_only=True)
        online_any = _matrix(online_inter, users, model.features.ids, positive_only=False)
        rows_known = [model.user_row.get(u, -1) for u in users]
        train = pipe.users
        pos = sp.lil_matrix((len(users), n), dtype=np.float32)
        exclude = sp.lil_matrix((len(users), n), dtype=np.float32)
        ts = sp.lil_matrix((len(users), n), dtype=np.float64)
        for i, r in enumerate(rows_known):
            if r >= 0:
                pos[i] = train.positives[r]
                exclude[i] = train.exclude[r]
                if train.ts is not None:
                    ts[i] = train.ts[r]
        pos = sp.csr_matrix(pos) + online_pos
        exclude = sp.csr_matrix(exclude).maximum((online_any > 0).astype(np.float32))
        ts = sp.csr_matrix(ts).maximum(_matrix(online_inter, users, model.features.ids, value="last_ts"))
        personal = [i for i, u in enumerate(users) if profiles.get(u).n_engaged > 0 and pos[i].nnz > 0]
        cands: dict[int, object] = {}
        if personal:
            idx = np.asarray(personal)
            vectors = np.vstack([pipe.fold_in(pos[i]) for i in idx])
            st = pipe.state_from_history(pos[idx], ts[idx], exclude[idx], vector=vectors)
            st.region = pipe.art.stats.region_index([regions[users[i]] for i in idx])
            st.filled(len(pipe.art.stats.genre_names))
            for i, c in zip(idx, model.candidates_for_state(st)):
                cands[int(i)] = c
        items = {}
        for i, u in enumerate(users):
            page = model.compose(profiles.get(u, regions[u]), cands.get(i), bandit=bandit, rng=self.rng)
            items[page_key(u)] = model.encode(page)
        self.cache.put(items, version=model.version)
        log.info("pages recomputed", users=len(users), personal=len(cands), version=model.version)


def _matrix(inter: pa.Table, users: list[str], title_ids: np.ndarray, positive_only: bool = True,
            value: str = "weight") -> sp.csr_matrix:
    """(len(users), titles) matrix of one interaction column for the given users."""
    n = len(title_ids)
    if inter.num_rows == 0:
        return sp.csr_matrix((len(users), n), dtype=np.float32 if value == "weight" else np.float64)
    r = index_of(inter.column("user_id"), pa.array(users, pa.string()))
    c = index_of(inter.column("title_id"), pa.array(list(title_ids), pa.string()))
    if value == "last_ts":
        v = pc.cast(inter.column("last_ts"), pa.int64()).to_numpy(zero_copy_only=False) / 1000.0
    else:
        v = inter.column("weight").to_numpy(zero_copy_only=False).astype(np.float32)
    ok = (r >= 0) & (c >= 0)
    if positive_only:
        neg = inter.column("negative").to_numpy(zero_copy_only=False).astype(bool)
        w = inter.column("weight").to_numpy(zero_copy_only=False)
        ok &= (w > 0) & ~neg
    return sp.csr_matrix((v[ok], (r[ok], c[ok])), shape=(len(users), n))
