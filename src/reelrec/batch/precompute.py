"""``reelrec precompute``: every user's homepage into the cache, then one atomic version switch.

For the published model version: the shared shelves of every region are written once; users are
cut into shards, each shard scored in batches (candidates -> ranker, vectorised per batch), each
page composed and encoded, and the pages written in pipelined batches under the version's keys.
Only when every page is written does the cache pointer move to the new version (DESIGN.md, cache
write), so a reader sees the old pages or the new ones, never a mix. Users without history get
their cold-start page.

One function does a shard's work, ``compose_shard``, and both engines call it:

* ``engine="local"`` (the default) runs the shards one after another in this process;
* ``engine="ray"`` runs them on Ray actors, one per core (``reelrec.batch.precompute_ray``).

A page depends only on the model, the user's profile, the seed and the user id (each user draws
from their own seeded generator), never on which shard, batch or engine composed it. So the two
engines write the same bytes, and a shard that is retried after a failure rewrites exactly the
keys and values it wrote before: cache writes are idempotent.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from reelrec.batch.progress import NullProgress
from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.coldstart import hour_band
from reelrec.compose.features import UserProfile
from reelrec.compose.mix import kind_bounds, kind_deviation, kind_shares
from reelrec.compose.shelves import TOP_PICKS
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import load_users
from reelrec.errors import InvalidInput, NotFound
from reelrec.homepage import Profiles, ServingModel, profiles_from_interactions
from reelrec.log import get_logger
from reelrec.recall.candidates import UserState
from reelrec.storage.cache import HomepageCache, page_key
from reelrec.storage.lake import open_lake

log = get_logger(__name__)

ENGINES = ("local", "ray")
MAX_SHARD_USERS = 4096  # a shard's pages (~250 B each) and state stay a few MB per task


@dataclass
class PrecomputeReport:
    version: str
    users: int = 0
    personal: int = 0
    cold_start: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (the driver's only, with engine "ray")
    page_bytes_mean: float = 0.0
    page_bytes_max: int = 0
    shared_shelves: int = 0
    # composition bars over every page (docs/evaluation.md)
    genre_cap_violations: int = 0
    kind_mix_off_by_more_than_one: int = 0
    kind_mix_checked: int = 0
    slot_counts: dict = field(default_factory=dict)
    # how the work was spread
    engine: str = "local"
    workers: int = 1
    shards: int = 0
    prepare_seconds: float = 0.0  # model load, lake scan and profiles, before the first shard
    compose_seconds: float = 0.0  # from the first shard submitted to the last page written
    page_bytes_total: int = 0
    shard_cpu_seconds: float = 0.0  # CPU time spent inside compose_shard, summed over shards

    @property
    def users_per_s(self) -> float:
        return self.users / self.seconds if self.seconds else 0.0

    @property
    def compose_users_per_s(self) -> float:
        return self.users / self.compose_seconds if self.compose_seconds else 0.0

    def add(self, part: "ShardResult") -> None:
        """Fold one shard's counts into the report."""
        r = part.counts
        self.personal += r.personal
        self.cold_start += r.cold_start
        self.genre_cap_violations += r.genre_cap_violations
        self.kind_mix_off_by_more_than_one += r.kind_mix_off_by_more_than_one
        self.kind_mix_checked += r.kind_mix_checked
        for k, n in r.slot_counts.items():
            self.slot_counts[k] = self.slot_counts.get(k, 0) + n
        self.users += r.users
        self.page_bytes_total += r.page_bytes_total
        self.page_bytes_max = max(self.page_bytes_max, r.page_bytes_max)
        self.shard_cpu_seconds += r.shard_cpu_seconds
        self.shards += 1


@dataclass
class Shard:
    """One unit of precompute work: users in order, the first ``n_personal`` with history.

    ``state`` holds the pipeline state of those first ``n_personal`` users (rows aligned);
    ``profiles`` one profile per user."""

    index: int
    users: list[str]
    profiles: list[UserProfile]
    n_personal: int
    state: UserState | None


@dataclass
class ShardResult:
    """What a shard produced: its counts and, unless a worker wrote them itself, its pages."""

    index: int
    counts: PrecomputeReport
    items: dict[str, bytes] | None


def page_checks(model: ServingModel, page, profile, rep: PrecomputeReport) -> None:
    """Count composition-rule breaches on one page's top picks: genre cap, kind mix (for users past
    the cold-start blend, whose target is their own affinity), slot kinds."""
    top = next((s for s in page.shelves if s.type == TOP_PICKS), None)
    if top is None or len(top.titles) == 0:
        return
    f, cfg = model.features, model.cfg
    t = np.asarray(top.titles, np.int64)
    per_genre = f.genre_multi_hot[t].sum(axis=0)
    if (per_genre > cfg.genre_cap_for(len(t))).any():
        rep.genre_cap_violations += 1
    if profile.n_engaged >= cfg.personal_after:
        target = kind_shares(profile.kind_affinity, cfg) * len(t)
        counts = np.bincount(np.clip(f.kind[t], 0, 2), minlength=3)
        if kind_deviation(counts, *kind_bounds(target)) > 0:
            rep.kind_mix_off_by_more_than_one += 1
        rep.kind_mix_checked += 1
    for code, n in enumerate(np.bincount(np.asarray(top.slots), minlength=3).tolist()):
        if n:
            name = ("exploit", "explore", "novel")[code]
            rep.slot_counts[name] = rep.slot_counts.get(name, 0) + n


def user_rng(seed: int, user_id: str) -> np.random.Generator:
    """The generator a user's page draws from (explore slots): a function of the seed and the user
    alone, so a page does not depend on the shard, batch or engine that composed it."""
    return np.random.default_rng([seed, zlib.crc32(user_id.encode())])


def cold_start_key(profile: UserProfile) -> tuple | None:
    """What a cold-start page depends on besides its explore draw, or None when the user has
    anything of their own (an engaged, excluded, shown or started title, or an affinity): the
    region, device, hour band and onboarding picks, read as the cold-start priors read them
    (``reelrec.compose.coldstart``). Users with the same key get the same page for the same
    draw."""
    p = profile
    if (p.n_engaged or len(p.impressions) or len(p.thumbs_down) or len(p.finished) or len(p.in_progress)
            or len(p.recent_positives)):
        return None
    if np.any(p.kind_affinity) or (p.genre_affinity is not None and np.any(p.genre_affinity)):
        return None
    return ((p.region or "").upper(), (p.device or "web").lower(), hour_band(p.hour),
            tuple(g.lower() for g in p.onboarding_genres))


COLD_MEMO_MAX = 4096  # (key, draw) -> page blob; onboarding picks make many keys: keep it bounded


def shared_cold_page(model: ServingModel, profile: UserProfile, seed: int, bandit: ThompsonBandit,
                     now: dt.datetime, memo: dict) -> bytes | None:
    """The encoded cold-start page of a user without anything of their own (``cold_start_key``),
    None for any other user (or when ``cfg.cold_draws`` is 0).

    Such pages differ only by the bandit's explore draw, so the users of one key share
    ``cold_draws`` draws, each user hashed to one, and each (key, draw) page is composed and
    encoded once (``memo`` keeps the blobs: a blob holds neither the user id nor anything else
    of the user's). The page is still a function of the seed, the profile and the user id
    alone, so it does not depend on the shard, batch or engine that composed it. The trade:
    cold-start users of one segment see at most ``cold_draws`` different explore picks instead
    of one draw each (docs/composition.md)."""
    draws = model.cfg.cold_draws
    key = cold_start_key(profile) if draws else None
    if key is None:
        return None
    draw = zlib.crc32(profile.user_id.encode()) % draws
    got = memo.pop((key, draw), None)
    if got is None:
        rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode()), draw])
        got = model.encode(model.compose(profile, None, bandit=bandit, rng=rng, now=now))
        if len(memo) >= COLD_MEMO_MAX:
            del memo[next(iter(memo))]
    # least recently used first: the keys without onboarding picks (a few per region, hit all run
    # long) stay while the near-unique keys of users with picks pass through. Clearing the memo
    # when full instead dropped them each time: 6,556 pages composed for 6,022 (key, draw) pairs
    # on the 100 K-title world, against 6,031 now.
    memo[(key, draw)] = got
    return got


def compose_shard(model: ServingModel, shard: Shard, seed: int = 0, batch_users: int = 256,
                  advance=None, now: dt.datetime | None = None, cold_memo: dict | None = None) -> ShardResult:
    """Compose and encode the pages of one shard: the work both engines share.

    Users with history are scored ``batch_users`` at a time (candidates and ranker vectorised over
    the batch); ``advance(n)`` is called after each batch of ``n`` pages. ``now`` is the run's
    time, stamped on every page (the current time if None). ``cold_memo`` keeps the shared
    cold-start pages (``shared_cold_page``) across the shards of one run, model, seed and
    ``now``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    c0 = time.process_time()
    counts = PrecomputeReport(model.version)
    items: dict[str, bytes] = {}
    bandit = ThompsonBandit(model.features.cluster_names)
    memo = {} if cold_memo is None else cold_memo
    k = shard.n_personal
    for lo in range(0, len(shard.users), batch_users):
        hi = min(lo + batch_users, len(shard.users))
        cands: Sequence = [None] * (hi - lo)
        if lo < k:
            cands = model.candidates_for_state(shard.state.take(np.arange(lo, min(hi, k))))
            cands = list(cands) + [None] * (hi - min(hi, k))
        for u, prof, c in zip(shard.users[lo:hi], shard.profiles[lo:hi], cands):
            blob = shared_cold_page(model, prof, seed, bandit, now, memo) if c is None else None
            if blob is None:
                page = model.compose(prof, c, bandit=bandit, rng=user_rng(seed, u), now=now)
                blob = model.encode(page)
            items[page_key(u)] = blob
            counts.page_bytes_total += len(blob)
            counts.page_bytes_max = max(counts.page_bytes_max, len(blob))
            if c is not None:
                page_checks(model, page, prof, counts)
                counts.personal += 1
            else:
                counts.cold_start += 1
        counts.users += hi - lo
        if advance:
            advance(hi - lo)
    counts.shard_cpu_seconds = time.process_time() - c0
    return ShardResult(shard.index, counts, items)


@dataclass
class Plan:
    """Everything the driver knows before the first shard: the model, profiles and user order."""

    model: ServingModel
    profiles: Profiles
    with_history: list[str]
    without: list[str]

    @property
    def n_users(self) -> int:
        return len(self.with_history) + len(self.without)

    def n_shards(self, shard_users: int) -> int:
        return -(-self.n_users // shard_users)

    def shards(self, shard_users: int) -> Iterator[Shard]:
        """Shards of ``shard_users`` users, built lazily (the driver holds one or a few at a
        time); users with history first, so most shards are all-personal or all-cold-start."""
        order = self.with_history + self.without
        n_hist = len(self.with_history)
        users_state = self.model.pipeline.users
        row = self.model.user_row
        for i, lo in enumerate(range(0, len(order), shard_users)):
            users = order[lo: lo + shard_users]
            k = max(0, min(n_hist - lo, len(users)))
            state = users_state.take(np.asarray([row[u] for u in users[:k]], np.int64)) if k else None
            yield Shard(i, users, [self.profiles.get(u) for u in users], k, state)


def plan(settings: Settings, version: str | None = None, model: ServingModel | None = None) -> Plan:
    """Load the model version (unless ``model`` is it already) and build every user's profile
    from the lake."""
    if model is None or (version is not None and model.version != version):
        model = ServingModel.load(settings, version)
    lake = open_lake(settings.lake)
    catalog = Catalog.load(settings.data_dir)
    interactions = fold_interactions(lake.scan(columns=["user_id", "title_id", "type", "ts", "position_s",
                                                        "watched_s", "rating"]),
                                     catalog.table, settings.signals)
    impressions = lake.scan(columns=["user_id", "title_id"], types=["impression"])
    try:
        users_table = load_users(settings.data_dir)
    except NotFound:
        users_table = None
    profiles = profiles_from_interactions(model.features, interactions, impressions, users_table)
    known = model.user_row
    everyone = sorted(set(profiles.by_user) | set(known))
    with_history = [u for u in everyone if u in known and profiles.get(u).n_engaged > 0]
    without = [u for u in everyone if not (u in known and profiles.get(u).n_engaged > 0)]
    return Plan(model, profiles, with_history, without)


def default_shard_users(n_users: int, workers: int, batch_users: int = 256) -> int:
    """About eight shards per worker (so a slow shard or a retry does not leave the others idle),
    at most ``MAX_SHARD_USERS`` users each, rounded up to whole batches of ``batch_users``.

    Whole batches make every shard start on a batch boundary, so each user is scored in the same
    batch of the same users whatever the engine and the number of workers. Batched arithmetic
    can differ in its last bits with the batch (a BLAS product's blocking; the ANN search takes
    one BLAS product for 20 or more queries of a region in a batch, FAISS's own search for fewer),
    and a near tie then flips: with shards sized by the workers alone, 5 of the 20,240 pages of
    the 100 K-title benchmark world differed between one process and two Ray workers."""
    size = int(max(1, min(MAX_SHARD_USERS, -(-n_users // (8 * max(1, workers))))))
    b = max(1, int(batch_users))
    return -(-size // b) * b


def precompute(settings: Settings, cache: HomepageCache, version: str | None = None,
               batch_users: int = 256, progress=None, seed: int = 0, engine: str = "local",
               address: str | None = None, workers: int | None = None,
               cache_url: str | None = None, shard_users: int | None = None,
               now: dt.datetime | None = None, _crash_once=None,
               model: ServingModel | None = None) -> PrecomputeReport:
    """Write every user's page for ``version`` (the published model by default) and publish it.

    ``model``: that version already loaded (the API's reader preloads it before its pages go
    live, so the swap does not wait on a load).

    ``engine``: ``"local"`` (this process) or ``"ray"`` (Ray actors; ``address`` of a running
    cluster, or a local Ray with ``workers`` processes, one per core by default). With Ray, pass
    the cache's ``cache_url``: a ``redis://`` or ``redis+cluster://`` cache is written by the
    workers themselves; a ``memory://`` cache (or none named) gets the pages back through the
    driver, which writes them. ``now`` (the run's start by default) is the time every page is
    stamped with: one time for the whole run, so a retried shard writes the same bytes.
    ``progress`` is a batch progress (``reelrec.batch.progress``: ``step(name, total)`` yields an
    ``advance(n)``); its step counts pages with the local engine, shards with Ray. ``_crash_once`` is a fault-injection hook for tests
    (see ``reelrec.batch.precompute_ray``).

    Raises:
        InvalidInput: an unknown engine, a bad worker or shard count, Ray not installed.
        NotFound: no model is published, or the data directory has no catalog.
        Conflict: the model version is corrupt.
        Unavailable: the cache cannot be written, a shard failed after its retries, or the Ray
            cluster cannot be reached (nothing is published then).
    """
    if engine not in ENGINES:
        raise InvalidInput(f"must be one of {', '.join(ENGINES)}, got {engine!r}", field="engine")
    for name, v in (("workers", workers), ("shard_users", shard_users), ("batch_users", batch_users)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidInput(f"must be an integer >= 1, got {v!r}", field=name)
    if engine == "local" and address:
        raise InvalidInput("only applies to engine 'ray'", field="address")
    t0, c0 = time.perf_counter(), time.process_time()
    now = now or dt.datetime.now(dt.timezone.utc)
    p = plan(settings, version, model)
    model = p.model
    rep = PrecomputeReport(model.version, engine=engine)

    shared = model.shared_items()
    cache.put(shared, version=model.version)
    rep.shared_shelves = len(shared)
    rep.prepare_seconds = time.perf_counter() - t0

    if engine == "ray":
        from reelrec.batch.precompute_ray import run_ray
        run_ray(p, cache, rep, seed=seed, batch_users=batch_users, address=address, workers=workers,
                cache_url=cache_url, shard_users=shard_users, progress=progress, now=now,
                crash_once=_crash_once)
    else:
        t1 = time.perf_counter()
        size = shard_users or default_shard_users(p.n_users, 1, batch_users)
        memo: dict = {}
        with (progress or NullProgress()).step("precompute pages", p.n_users) as advance:
            for shard in p.shards(size):
                part = compose_shard(model, shard, seed, batch_users, advance=advance, now=now, cold_memo=memo)
                cache.put(part.items, version=model.version)
                rep.add(part)
        rep.compose_seconds = time.perf_counter() - t1
    cache.publish(model.version)
    rep.page_bytes_mean = rep.page_bytes_total / rep.users if rep.users else 0.0
    rep.seconds = time.perf_counter() - t0
    rep.cpu_seconds = time.process_time() - c0
    log.info("pages precomputed", version=model.version, users=rep.users, engine=engine,
             workers=rep.workers, shards=rep.shards, seconds=round(rep.seconds, 2))
    return rep
