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
   under the serving version. The ranker scores for the session in progress: the request
   context is the device and local hour of the user's latest logged event, and the user's
   habits (device, daypart and cell shares) are those of their training row.

Events older than the model's training cut are already in the model and only update the state.
The training-time interactions of every user are folded once per model version and kept in memory
(``BaseHistory``); at the design's scale that table belongs in the online store (docs/scaling.md).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from reelrec.compose.bandit import ThompsonBandit
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.events import EVENT_SCHEMA, parse_ts
from reelrec.domain.matrix import index_of, seconds
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import RequestContext, first_event_context, load_users
from reelrec.errors import NotFound
from reelrec.homepage import HomepageReader, ServingModel, profiles_from_interactions
from reelrec.log import get_logger
from reelrec.recall.als import fold_in
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
        self._duck = None  # one DuckDB connection for the fold of every micro-batch
        self._threads = ThreadpoolController()  # finding the BLAS libraries once costs ~20 ms

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

    def warm(self) -> None:
        """Load the serving model, the base history, the bandit and the DuckDB connection now,
        so the first event after a start does not wait for them (seconds on a large lake)."""
        try:
            model = self.model()
        except Exception as exc:  # noqa: BLE001 - nothing to serve yet: the first batch retries
            log.warning("speed layer not warmed: no model yet", error=str(exc))
            return
        self.base(model)
        self.bandit(model)
        self._connection()

    def _connection(self):
        if self._duck is None:
            import duckdb
            # one thread: a micro-batch is a few thousand rows, and DuckDB's worker threads
            # only contend with the speed layer's own on a small machine
            self._duck = duckdb.connect(config={"threads": 1})
        return self._duck

    # --- applying events -------------------------------------------------------------------------
    def apply(self, events: list[dict]) -> ApplyResult:
        """Fold a micro-batch of (validated) events into the state and recompute touched pages.

        Effects are ordered so that a crash at any point, followed by redelivery of the batch,
        neither loses an event nor counts one twice. What proves an event applied:

        * an event kept in the user's online log (every event since the training cut but
          impressions): its id in the log, which is written only after the user's page;
        * an event that adds to a counter that is not idempotent (a play: trending and a bandit
          success; an explore impression: a bandit trial), or an older event that is not
          logged: its ``seen`` marker, set after the pages; only the call that sets the marker
          (``seen_many``, set-if-absent) adds to the counters;
        * anything else (a plain impression: exposure) is idempotent and simply applied again.

        So the order is: read logs and markers; idempotent state (exposure, in-progress,
        profile); recompute the pages of users with events not yet in a page; write the logs;
        mark; count. A crash before the log write recomputes on redelivery; a crash between the
        marks and the counter writes leaves those counters short by that batch (at most once
        for counters, exactly once for pages and logs). Only about one event in twenty carries
        a marker, which keeps the per-event round trips to the state off the hot path.
        """
        t0 = time.perf_counter()
        res = ApplyResult(events=len(events))
        uniq: dict[str, dict] = {}
        for e in events:
            uniq.setdefault(str(e.get("event_id")), e)
        res.duplicates = len(events) - len(uniq)
        if not uniq:
            return res
        model = self.model()
        base = self.base(model)
        bandit = self.bandit(model)
        ref = base.ref.timestamp() if base.ref else 0.0
        by_user: dict[str, list[tuple[float, dict]]] = {}
        with_mark: list[str] = []
        for i, e in uniq.items():
            ts = parse_ts(e["ts"]).timestamp()
            by_user.setdefault(e["user_id"], []).append((ts, e))
            if _counted(e) or (ts < ref and e["type"] in RECOMPUTE_TYPES):
                with_mark.append(i)
        marked = {i for i, m in zip(with_mark, self.state.seen_check(with_mark)) if m}
        users = sorted(by_user)
        fields = self.state.fields_many(users)
        touched: dict[str, float] = {}
        logs: dict[str, str] = {}
        unmarked = set(with_mark) - marked
        to_count: list[tuple[dict, dict]] = []
        set_f: dict[str, dict[str, str]] = {}
        shown: dict[str, list[str]] = {}
        for u in users:
            done, log_json = self._apply_user(u, by_user[u], fields[u], ref, marked, model, base,
                                              touched, set_f, shown)
            res.duplicates += done
            if log_json is not None:
                logs[u] = log_json
            to_count += [(e, fields[u]) for _, e in by_user[u] if str(e["event_id"]) in unmarked]
        # one round trip each for every user of the batch
        self.state.set_fields_many(set_f)
        self.state.add_exposure_many(shown)
        if touched:
            changed = sorted(touched)
            self.recompute(changed, model, base, bandit, fields={u: fields[u] for u in changed})
            now = time.time()
            res.recomputed = changed
            res.lag_s = [now - touched[u] for u in changed]
        # after the pages: a logged event is in a page
        self.state.set_fields_many({u: {LOG_FIELD: v} for u, v in logs.items()})
        if to_count:
            first = self.state.seen_many([str(e["event_id"]) for e, _ in to_count])
            self._count([p for p, again in zip(to_count, first) if not again], model, base, bandit)
        res.seconds = time.perf_counter() - t0
        return res

    def _apply_user(self, u: str, events: list[tuple[float, dict]], f: dict[str, str], ref: float,
                    marked: set[str], model: ServingModel, base: BaseHistory,
                    touched: dict[str, float], set_fields: dict[str, dict[str, str]],
                    exposure: dict[str, list[str]]) -> tuple[int, str | None]:
        """The idempotent effects of one user's events. ``f`` (their fields) is updated in place,
        the merged online log included, which the caller writes after the page; the fields and
        exposure to write go to ``set_fields`` and ``exposure`` (the caller writes them for the
        whole batch at once). Returns how many events were applied before, and the new log
        (None when unchanged)."""
        set_f: dict[str, str] = {}
        shown: list[str] = []
        progress: dict[str, float | None] = {}  # title -> last play time, None once finished
        old = json.loads(f[LOG_FIELD]) if f.get(LOG_FIELD) else []
        before = {r.get("event_id") for r in old}  # in the log, so in the page already
        in_log = set(before)
        new_log: list[dict] = []
        done = 0
        for ts, e in events:
            etype, title, eid = e["type"], e.get("title_id"), str(e["event_id"])
            logged = ts >= ref and etype != "impression"
            if logged:
                seen = eid in in_log and (not _counted(e) or eid in marked)
                if eid not in in_log:
                    new_log.append({k: e[k] for k in LOG_COLUMNS if e.get(k) is not None})
                    in_log.add(eid)
            else:
                seen = eid in marked
            done += seen
            if etype == "impression" and title:
                shown.append(title)
                if e.get("slot_kind") == "explore":
                    cluster = self._cluster(model, title)
                    if cluster is not None:
                        set_f[f"explore:{title}"] = cluster
            elif etype in ("play_start", "progress") and title:
                progress[title] = ts
            elif etype == "complete" and title:
                progress[title] = None
            elif etype == "profile":
                set_f.update({k: str(e[k]) for k in ("region", "language", "device") if e.get(k)})
            elif etype == "onboarding":
                set_f["onboarding"] = ",".join(e.get("genres") or [])
            in_page = eid in before if logged else eid in marked
            if etype in RECOMPUTE_TYPES and not in_page:
                touched[u] = max(touched.get(u, 0.0), ts)
        log_json = None
        if new_log:
            log_json = json.dumps((old + new_log)[-MAX_LOG:], separators=(",", ":"))
            f[LOG_FIELD] = log_json
        if set_f:
            set_fields[u] = set_f
            f.update(set_f)
        if shown:
            exposure[u] = shown
        for title, ts in progress.items():
            if ts is None:
                self.state.clear_in_progress(u, title)
            else:
                self.state.set_in_progress(u, title, ts)
        if not f.get("region"):
            region = base.meta(u).get("region")
            if region:
                f["region"] = region  # in memory only: the batch's default region for counters
        return done, log_json

    def _count(self, events: list[tuple[dict, dict]], model: ServingModel, base: BaseHistory,
               bandit: ThompsonBandit) -> None:
        """Counters for events marked by this call only: plays by region, bandit evidence."""
        plays: dict[tuple[str, int], dict[str, float]] = {}
        at: dict[tuple[str, int], float] = {}
        arms: dict[str, list[float]] = {}
        cleared: dict[str, dict[str, str]] = {}
        for e, f in events:
            etype, title = e["type"], e.get("title_id")
            if not title or etype not in ("impression", "play_start"):
                continue
            region = (e.get("region") or f.get("region") or "GLOBAL").upper()
            if etype == "impression":
                if e.get("slot_kind") != "explore":
                    continue
                cluster = self._cluster(model, title)
                if cluster is None:
                    continue
                for arm in (f"{region}|{cluster}", f"GLOBAL|{cluster}"):
                    arms.setdefault(arm, [0.0, 0.0])[1] += 1
                bandit.update(region, cluster, False)
                continue
            ts = parse_ts(e["ts"]).timestamp()
            bucket = int(ts // self.state.bucket_s)
            for counter in {f"plays:{region}", "plays:GLOBAL"}:
                key = (counter, bucket)
                plays.setdefault(key, {})
                plays[key][title] = plays[key].get(title, 0.0) + 1.0
                at[key] = ts
            cluster = f.get(f"explore:{title}")
            if cluster:
                # every explore impression is a trial (beta); a play of the shown title is a
                # success (alpha), so the posterior mean tracks plays per explore impression
                for arm in (f"{region}|{cluster}", f"GLOBAL|{cluster}"):
                    arms.setdefault(arm, [0.0, 0.0])[0] += 1
                bandit.update(region, cluster, True)
                f[f"explore:{title}"] = ""
                cleared.setdefault(e["user_id"], {})[f"explore:{title}"] = ""
        for (counter, _), counts in plays.items():
            self.state.bump(counter, list(counts), at=at[(counter, _)],
                            weights=list(counts.values()))
        if arms:
            names = list(arms)
            self.state.bandit_update(names, [arms[a][0] for a in names],
                                     [arms[a][1] for a in names])
        self.state.set_fields_many(cleared)

    def _log(self, user_id: str) -> list[dict]:
        raw = self.state.fields(user_id).get(LOG_FIELD)
        return json.loads(raw) if raw else []

    @staticmethod
    def _cluster(model: ServingModel, title: str) -> str | None:
        i = model.title_col.get(title)
        return None if i is None else model.features.cluster_names[int(model.features.cluster[i])]

    # --- recomputing pages ------------------------------------------------------------------------
    def recompute(self, users: list[str], model: ServingModel | None = None,
                  base: BaseHistory | None = None, bandit: ThompsonBandit | None = None,
                  fields: dict[str, dict[str, str]] | None = None) -> None:
        """Rebuild and cache the pages of ``users`` from their training row plus their online log."""
        model = model or self.model()
        pages = self.pages(users, model, base, bandit, fields)
        self.cache.put({page_key(u): model.encode(p) for u, p in pages.items()}, version=model.version)
        log.debug("pages recomputed", users=len(users), version=model.version)

    def pages(self, users: list[str], model: ServingModel | None = None,
              base: BaseHistory | None = None, bandit: ThompsonBandit | None = None,
              fields: dict[str, dict[str, str]] | None = None,
              request: tuple[str | None, int | None] | None = None,
              region: str | None = None) -> dict:
        """The pages of ``users`` (user id -> ``Page``) composed now from their training row plus
        their online log, written nowhere.

        Without ``request`` each page is scored for the session in progress (the device and
        local hour of the user's latest logged event), as the cached pages are. ``request``
        (device, local hour; either may be None) scores every page of the batch for that
        request instead, and reaches cold-start pages as their device and hour priors;
        ``region`` stands for every user's region. ``reelrec homepage --device --hour`` reads
        pages this way: a cached page was composed for the user's own latest session.

        Everything runs on the whole batch of users at once: one fold of the online logs, one
        fold-in call, one candidates + ranker pass; only composition is per user."""
        model = model or self.model()
        base = base or self.base(model)
        bandit = bandit or self.bandit(model)
        catalog = self._catalog
        fields = fields if fields is not None else self.state.fields_many(users)
        rows = [dict(r, ts=parse_ts(r["ts"])) for u in users for r in json.loads(fields[u].get(LOG_FIELD) or "[]")]
        online = pa.Table.from_pylist(rows, schema=EVENT_SCHEMA) if rows else EVENT_SCHEMA.empty_table()
        online_inter = fold_interactions(online, catalog.table, self.settings.signals,
                                         con=self._connection())
        inter = pa.concat_tables([base.interactions.of(users), online_inter.select(base.interactions.table.column_names)]) \
            if base.interactions.table.num_rows else online_inter
        shown = [base.impressions.of(users).select(["user_id", "title_id"])]
        exposure = [(u, t) for u, ts in self.state.exposure_many(users).items() for t in ts]
        if exposure:
            shown.append(pa.table({"user_id": [u for u, _ in exposure], "title_id": [t for _, t in exposure]},
                                  schema=shown[0].schema))
        impressions = pa.concat_tables(shown)
        regions = {u: (region or fields[u].get("region") or base.meta(u).get("region")) for u in users}
        meta = []
        for u in users:
            onboarding = fields[u].get("onboarding") or base.meta(u).get("onboarding_genres")
            if isinstance(onboarding, str):
                onboarding = onboarding.split(",")
            meta.append({"user_id": u, "region": regions[u],
                         "onboarding_genres": onboarding or None})
        users_tbl = pa.Table.from_pylist(meta, schema=pa.schema([("user_id", pa.string()), ("region", pa.string()),
                                                                  ("onboarding_genres", pa.list_(pa.string()))]))
        profiles = profiles_from_interactions(model.features, inter, impressions, users_tbl, regions)

        # the pipeline's view: training positives plus the online ones, vector folded in
        pipe = model.pipeline
        n = len(model.features)
        online_pos = _matrix(online_inter, users, model.features.ids, positive_only=True)
        online_any = _matrix(online_inter, users, model.features.ids, positive_only=False)
        train = pipe.users
        known = np.array([model.user_row.get(u, -1) for u in users], dtype=np.int64)
        has = np.flatnonzero(known >= 0)

        def lift(m: sp.spmatrix | None, dtype) -> sp.csr_matrix:
            """The training rows of the known users, placed at their rows of the batch."""
            if m is None or not len(has):
                return sp.csr_matrix((len(users), n), dtype=dtype)
            pick = sp.csr_matrix((np.ones(len(has), dtype), (has, np.arange(len(has)))),
                                 shape=(len(users), len(has)))
            return sp.csr_matrix(pick @ sp.csr_matrix(m)[known[has]], dtype=dtype)

        pos = (lift(train.positives, np.float32) + online_pos).tocsr()
        exclude = lift(train.exclude, np.float32).maximum(
            (online_any > 0).astype(np.float32)).tocsr()
        ts = lift(train.ts, np.float64).maximum(
            _matrix(online_inter, users, model.features.ids, value="last_ts")).tocsr()
        engaged = np.array([profiles.get(u).n_engaged > 0 for u in users]) \
            & (np.diff(pos.indptr) > 0)
        personal = np.flatnonzero(engaged)
        cands: dict[int, object] = {}
        if len(personal):
            with self._threads.limit(limits=1, user_api="blas"):
                # FAISS's OpenMP threads spin after a search; a threaded BLAS solve next to them
                # runs ~100x slower on a small machine, and one f x f solve needs no threads
                vectors = fold_in(pipe.art.item_factors, pos[personal], pipe.art.als)
                # the session in progress (the user's latest logged event) is the request the
                # page is recomputed for; the habits are those of the training window
                if request is None:
                    req = first_event_context(online, [users[i] for i in personal],
                                              [regions[users[i]] for i in personal], last=True)
                else:
                    req = RequestContext.of(request[0], request[1], len(personal))
                st = pipe.state_from_history(pos[personal], ts[personal], exclude[personal],
                                             vector=vectors, request=req)
                st.region = pipe.art.stats.region_index([regions[users[i]] for i in personal])
                rows = known[personal]
                for name in ("device", "hour", "context"):
                    habits = getattr(train, name)
                    if len(habits) == len(train):
                        got = np.zeros((len(personal), habits.shape[1]), habits.dtype)
                        got[rows >= 0] = habits[rows[rows >= 0]]
                        setattr(st, name, got)
                st.filled(len(pipe.art.stats.genre_names))
                for i, c in zip(personal, model.candidates_for_state(st)):
                    cands[int(i)] = c
        out = {}
        for i, u in enumerate(users):
            profile = profiles.get(u, regions[u])
            if request is not None:
                profile = replace(profile, device=request[0], hour=request[1])
            out[u] = model.compose(profile, cands.get(i), bandit=bandit, rng=self.rng)
        return out


def _counted(e: dict) -> bool:
    """Whether the event adds to a counter that is not idempotent (it carries a seen marker)."""
    return bool(e.get("title_id")) and (e["type"] == "play_start" or (
        e["type"] == "impression" and e.get("slot_kind") == "explore"))


def _matrix(inter: pa.Table, users: list[str], title_ids: np.ndarray, positive_only: bool = True,
            value: str = "weight") -> sp.csr_matrix:
    """(len(users), titles) matrix of one interaction column for the given users."""
    n = len(title_ids)
    if inter.num_rows == 0:
        return sp.csr_matrix((len(users), n), dtype=np.float32 if value == "weight" else np.float64)
    r = index_of(inter.column("user_id"), pa.array(users, pa.string()))
    c = index_of(inter.column("title_id"), pa.array(list(title_ids), pa.string()))
    if value == "last_ts":
        v = seconds(inter.column("last_ts"))  # DuckDB hands back microseconds, the lake milliseconds
    else:
        v = inter.column("weight").to_numpy(zero_copy_only=False).astype(np.float32)
    ok = (r >= 0) & (c >= 0)
    if positive_only:
        neg = inter.column("negative").to_numpy(zero_copy_only=False).astype(bool)
        w = inter.column("weight").to_numpy(zero_copy_only=False)
        ok &= (w > 0) & ~neg
    return sp.csr_matrix((v[ok], (r[ok], c[ok])), shape=(len(users), n))
