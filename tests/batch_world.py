"""A tiny world with a known structure for the batch-layer tests.

Two taste groups: group A (region GB) watches drama titles t00-t19, group B (region US) comedy
titles t20-t39. Each user completes ``per_user`` titles of their block on a tv or a phone, over
``days`` days. Title t40 is a drama nobody watched (a new release: content vector only); t41 is a
comedy available only in GB.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from reelrec.domain.catalog import Catalog, Title
from reelrec.domain.events import EVENT_SCHEMA
from reelrec.domain.matrix import InteractionMatrix
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import USER_SCHEMA
from reelrec.recommender import TrainData

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)


def catalog() -> Catalog:
    titles = []
    for i in range(40):
        genre = "drama" if i < 20 else "comedy"
        kind = "series" if i % 10 == 9 else "movie"
        titles.append(Title(f"t{i:02d}", f"Title {i}", kind, [genre],
                            release_date=dt.date(2020, 1, 1) + dt.timedelta(days=30 * i),
                            runtime_min=None if kind == "series" else 100.0,
                            episodes=2 if kind == "series" else None,
                            episode_runtime_min=40.0 if kind == "series" else None))
    titles.append(Title("t40", "New drama", "movie", ["drama"], release_date=dt.date(2026, 9, 30),
                        runtime_min=100.0))
    titles.append(Title("t41", "GB comedy", "movie", ["comedy"], runtime_min=90.0, regions=["GB"]))
    return Catalog.from_titles(titles)


def users(n: int = 60) -> pa.Table:
    rows = [{"user_id": f"u{u:02d}", "region": "GB" if u < n // 2 else "US"} for u in range(n)]
    return pa.Table.from_pylist(rows, schema=USER_SCHEMA)


def events(n_users: int = 60, per_user: int = 8, days: int = 10, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cat = catalog()
    rows = []
    k = 0
    for u in range(n_users):
        block = np.arange(20) if u < n_users // 2 else np.arange(20, 40)
        picks = rng.choice(block, size=per_user, replace=False)
        device = "tv" if u % 2 == 0 else "mobile"
        for t in picks:
            tid = f"t{t:02d}"
            ts = T0 + dt.timedelta(seconds=float(rng.uniform(0, days * 86400)))
            title = cat.get(tid)
            n_complete = title.episodes if title.kind == "series" else 1
            rows.append(dict(event_id=f"e{k}", user_id=f"u{u:02d}", title_id=tid, type="play_start", ts=ts,
                             device=device))
            k += 1
            for c in range(n_complete):
                rows.append(dict(event_id=f"e{k}", user_id=f"u{u:02d}", title_id=tid, type="complete",
                                 ts=ts + dt.timedelta(minutes=100 + c), device=device))
                k += 1
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def train_data(ev: pa.Table | None = None, cutoff: dt.datetime | None = None, **kw) -> TrainData:
    cat = catalog()
    ev = events(**kw) if ev is None else ev
    inter = fold_interactions(ev, cat.table)
    m = InteractionMatrix.from_interactions(inter, cat.ids)
    return TrainData(matrix=m, events=ev, catalog=cat, users=users(kw.get("n_users", 60)), cutoff=cutoff)
