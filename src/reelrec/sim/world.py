"""``reelrec simulate``: a synthetic streaming service written into a data directory.

It writes what a real deployment would hold (DESIGN.md, "Data flow"): the catalog
(``<data>/catalog/titles.parquet``), the users (``<data>/users/users.parquet``) and days of
behavioural events appended to the lake in chunks, plus what no real deployment has, the ground
truth (``<data>/sim/``, read back by ``reelrec.sim.truth.load_truth``), so that the ranker, the
bandit and the speed layer can be scored against users' true preferences.

Users are simulated in blocks of ``chunk_users``; each block runs through every day before the
next starts, so memory is bounded by one block's events (1 M users x 100 K titles x 1 day stays
well under 8 GB). Each (block, day) draws from its own generator seeded by (seed, block, day):
the same configuration gives the same lake contents, event ids included.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.events import EVENT_SCHEMA
from reelrec.domain.users import DEVICES, save_users
from reelrec.errors import Conflict, FieldError, InvalidInput
from reelrec.log import get_logger
from reelrec.sim import vocab as V
from reelrec.sim.catalog import make_catalog
from reelrec.sim.population import make_population
from reelrec.sim.sessions import (QUERIES, SHELF_NAMES, SLOT_KINDS, TYPES, DayContext, History,
                                  Shelves, day_events)
from reelrec.sim.truth import Truth, truth_dir
from reelrec.storage.lake import open_lake

log = get_logger(__name__)
DEFAULT_START = dt.date(2026, 10, 5)  # a Monday; fixed so that a seed always gives the same lake


@dataclass
class SimConfig:
    users: int = 2000
    titles: int = 1000
    days: int = 7
    seed: int = 1
    start: dt.date = DEFAULT_START
    chunk_users: int = 20_000
    joiners_per_day: float = 0.01  # newcomers per day, as a share of ``users``
    new_titles_per_day: float = 0.004  # new releases per day, as a share of ``titles``
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    replace: bool = False  # allow writing into a lake that already holds events

    def validate(self) -> "SimConfig":
        """Raises InvalidInput naming each bad field."""
        errs = []
        for name, lo in (("users", 1), ("titles", 10), ("days", 1), ("chunk_users", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                errs.append(FieldError(name, f"must be an integer >= {lo}, got {v!r}"))
        for name in ("joiners_per_day", "new_titles_per_day"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                errs.append(FieldError(name, f"must be between 0 and 1, got {v!r}"))
        if not isinstance(self.start, dt.date):
            errs.append(FieldError("start", "must be a date"))
        if errs:
            raise InvalidInput(errs)
        return self


@dataclass
class SimSummary:
    events: int
    users: int
    titles: int
    seconds: float
    new_users: int = 0
    new_titles: int = 0
    sessions: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    truth_dir: str = ""


def _counts(cfg: SimConfig) -> tuple[int, int]:
    n_new = int(round(cfg.titles * cfg.new_titles_per_day * cfg.days))
    n_join = int(round(cfg.users * cfg.joiners_per_day * cfg.days))
    return n_new, n_join


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(idx), pa.string()), "")


def _vocab(values, codes: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(codes, mask=codes < 0))


def _to_table(cols: dict[str, np.ndarray], user_ids: pa.Array, title_ids: pa.Array,
              picks: pa.ListArray, tag: str) -> pa.Table:
    n = len(cols["ts_ms"])
    return pa.Table.from_arrays([
        _ids(f"e{tag}.", np.arange(n)),
        user_ids.take(pa.array(cols["user"])),
        title_ids.take(pa.array(cols["title"], mask=cols["title"] < 0)),
        _vocab(TYPES, cols["type"].astype(np.int64)),
        pa.array(cols["ts_ms"]).cast(EVENT_SCHEMA.field("ts").type),
        _vocab(DEVICES, cols["device"].astype(np.int64)),
        _vocab(V.REGIONS, cols["region"].astype(np.int64)),
        _ids(f"s{tag}.", cols["sess"]),
        pa.array(cols["position_s"], pa.float32(), from_pandas=True),
        pa.array(cols["watched_s"], pa.float32(), from_pandas=True),
        pa.nulls(n, pa.float32()),
        _vocab(QUERIES, cols["query"]),
        picks.take(pa.array(cols["onboard"], mask=cols["onboard"] < 0)),
        _vocab(SHELF_NAMES, cols["shelf"]),
        pa.array(cols["position"].astype(np.int32), mask=cols["position"] < 0),
        _vocab(SLOT_KINDS, cols["slot"]),
        pa.nulls(n, pa.string()),
    ], schema=EVENT_SCHEMA)


def simulate(cfg: SimConfig, settings: Settings) -> SimSummary:
    """Simulate a world into ``settings.data_dir`` and its lake; returns what was written.

    Raises:
        InvalidInput: a configuration value is out of range.
        Conflict: the lake already holds events (set ``replace`` to add to it anyway).
    """
    cfg.validate()
    t_start = time.perf_counter()
    lake = open_lake(settings.lake)
    if lake.files() and not cfg.replace:
        raise Conflict(f"the lake at {settings.lake} already holds events; simulate into an empty "
                       "data directory so the ground truth matches every event")
    n_new, n_join = _counts(cfg)
    start_s = (cfg.start - dt.date(1970, 1, 1)).days * 86400
    end_s = start_s + cfg.days * 86400
    cat = make_catalog(np.random.default_rng([cfg.seed, 1]), cfg.titles, n_new, cfg.start, cfg.days)
    pop = make_population(np.random.default_rng([cfg.seed, 2]), cfg.users, n_join, cfg.start,
                          cfg.days)
    as_str = lambda col: np.asarray(col.to_numpy(zero_copy_only=False), dtype=str)  # noqa: E731
    truth = Truth(
        user_ids=as_str(pop.table.column("user_id")),
        user_region=pop.region, taste=pop.taste, kind_share=pop.kind_share,
        user_factors=pop.factors,
        title_ids=as_str(cat.table.column("title_id")),
        title_kind=cat.kind, title_origin=cat.origin, genre_idx=cat.genre_idx,
        genre_w=cat.genre_w, title_factors=cat.factors, quality=cat.quality, avail=cat.avail,
        added_s=cat.added_s, start_s=start_s, end_s=end_s)
    Catalog(cat.table).save(settings.data_dir)
    save_users(pop.table, settings.data_dir)
    truth.save(settings.data_dir, {
        "users": cfg.users, "titles": cfg.titles, "days": cfg.days, "seed": cfg.seed,
        "start": cfg.start.isoformat(), "new_users": n_join, "new_titles": n_new,
        "chunk_users": cfg.chunk_users,
        "spike_titles": truth.title_ids[cat.spike > 0].tolist(),
    })

    prior = np.array([V.PRIMARY_WEIGHT.get(g, 1.0) for g in V.GENRES])
    prior = np.where(V.FICTION_MASK, prior / prior[V.FICTION_MASK].sum() * (1 - V.KIND_SHARES[2]),
                     prior / prior[V.DOC_MASK].sum() * V.KIND_SHARES[2])
    ctx = DayContext(cat=cat, pop=pop, truth=truth, shelves=Shelves(cat, start_s), start_s=start_s,
                     end_s=end_s, genre_prior=prior)
    user_ids = pop.table.column("user_id").combine_chunks()
    title_ids = cat.table.column("title_id").combine_chunks()

    n_chunks = -(-pop.n // cfg.chunk_users)
    show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    events = sessions = 0
    by_type = np.zeros(len(TYPES), np.int64)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(),
                  TimeRemainingColumn(), disable=not show, transient=False) as bar:
        task = bar.add_task("sim", total=n_chunks * cfg.days, events=0)
        for c in range(n_chunks):
            users = np.arange(c * cfg.chunk_users, min((c + 1) * cfg.chunk_users, pop.n))
            history = History.empty()
            for d in range(cfg.days):
                rng = np.random.default_rng([cfg.seed, 3, c, d])
                cols, stats, history = day_events(ctx, rng, users, d, history)
                by_type += np.bincount(cols["type"], minlength=len(TYPES))
                table = _to_table(cols, user_ids, title_ids, pop.picks, f"{cfg.seed}.{c}.{d}")
                events += lake.append(table)
                sessions += stats["sessions"]
                bar.update(task, advance=1, events=events)
    seconds = time.perf_counter() - t_start
    log.info("world simulated", users=pop.n, titles=cat.n, days=cfg.days, events=events,
             seconds=round(seconds, 1))
    return SimSummary(events=events, users=pop.n, titles=cat.n, seconds=seconds, new_users=n_join,
                      new_titles=n_new, sessions=sessions,
                      by_type={t: int(k) for t, k in zip(TYPES, by_type) if k},
                      truth_dir=str(truth_dir(settings.data_dir)))
