"""``reelrec precompute``: every user's homepage into the cache, then one atomic version switch.

For the published model version: the shared shelves of every region are written once; users are
scored in batches (candidates -> ranker, vectorised per batch), each page composed and encoded,
and the pages written in pipelined batches under the version's keys. Only when every page is
written does the cache pointer move to the new version (DESIGN.md, cache write), so a reader sees
the old pages or the new ones, never a mix. Users without history get their cold-start page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.mix import kind_bounds, kind_deviation, kind_shares
from reelrec.compose.shelves import TOP_PICKS
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import load_users
from reelrec.errors import NotFound
from reelrec.homepage import ServingModel, profiles_from_interactions
from reelrec.log import get_logger
from reelrec.storage.cache import HomepageCache, page_key
from reelrec.storage.lake import open_lake

log = get_logger(__name__)


@dataclass
class PrecomputeReport:
    version: str
    users: int = 0
    personal: int = 0
    cold_start: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    page_bytes_mean: float = 0.0
    page_bytes_max: int = 0
    shared_shelves: int = 0
    # composition bars over every page (docs/evaluation.md)
    genre_cap_violations: int = 0
    kind_mix_off_by_more_than_one: int = 0
    kind_mix_checked: int = 0
    slot_counts: dict = field(default_factory=dict)

    @property
    def users_per_s(self) -> float:
        return self.users / self.seconds if self.seconds else 0.0


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
    for code, n in zip(*np.unique(np.asarray(top.slots), return_counts=True)):
        name = ("exploit", "explore", "novel")[int(code)]
        rep.slot_counts[name] = rep.slot_counts.get(name, 0) + int(n)


def precompute(settings: Settings, cache: HomepageCache, version: str | None = None,
               batch_users: int = 256, progress=None, seed: int = 0,
               model: ServingModel | None = None) -> PrecomputeReport:
    """Write every user's page for ``version`` (the published model by default) and publish it.

    ``model``: that version already loaded (the API's reader preloads it before its pages go
    live, so the swap does not wait on a load).

    Raises:
        NotFound: no model is published, or the data directory has no catalog.
        Conflict: the model version is corrupt.
        Unavailable: the cache cannot be written (nothing is published then).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    if model is None or (version is not None and model.version != version):
        model = ServingModel.load(settings, version)
    rep = PrecomputeReport(model.version)
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
    bandit = ThompsonBandit(model.features.cluster_names)
    rng = np.random.default_rng(seed)

    shared = model.shared_items()
    cache.put(shared, version=model.version)
    rep.shared_shelves = len(shared)

    known = model.user_row
    everyone = sorted(set(profiles.by_user) | set(known))
    sizes: list[int] = []
    items: dict[str, bytes] = {}

    def flush() -> None:
        if items:
            cache.put(items, version=model.version)
            items.clear()

    with_history = [u for u in everyone if u in known and profiles.get(u).n_engaged > 0]
    without = [u for u in everyone if not (u in known and profiles.get(u).n_engaged > 0)]
    if progress:
        progress.start(len(everyone))
    for lo in range(0, len(with_history), batch_users):
        chunk = with_history[lo: lo + batch_users]
        cands = model.candidates_for_rows(np.asarray([known[u] for u in chunk]))
        for u, c in zip(chunk, cands):
            page = model.compose(profiles.get(u), c, bandit=bandit, rng=rng)
            blob = model.encode(page)
            items[page_key(u)] = blob
            sizes.append(len(blob))
            page_checks(model, page, profiles.get(u), rep)
            rep.personal += 1
        flush()
        if progress:
            progress.advance(len(chunk))
    for lo in range(0, len(without), batch_users):
        chunk = without[lo: lo + batch_users]
        for u in chunk:
            page = model.compose(profiles.get(u), None, bandit=bandit, rng=rng)
            blob = model.encode(page)
            items[page_key(u)] = blob
            sizes.append(len(blob))
            rep.cold_start += 1
        flush()
        if progress:
            progress.advance(len(chunk))
    cache.publish(model.version)
    rep.users = len(sizes)
    rep.page_bytes_mean = float(np.mean(sizes)) if sizes else 0.0
    rep.page_bytes_max = int(max(sizes)) if sizes else 0
    rep.seconds = time.perf_counter() - t0
    rep.cpu_seconds = time.process_time() - c0
    log.info("pages precomputed", version=model.version, users=rep.users, seconds=round(rep.seconds, 2))
    return rep
