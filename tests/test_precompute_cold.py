"""Precompute's shared cold-start pages (``shared_cold_page``), on the ``tiny_world`` fixture, and
the default shard layout (``default_shard_users``).

Cold-start users with nothing of their own (no engaged, shown, excluded or started title) share
``cold_draws`` explore draws per (region, device, hour band, onboarding picks), each user hashed to
one; a page is still a function of the seed, the profile and the user id alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelrec.batch.precompute import (MAX_SHARD_USERS, cold_start_key, default_shard_users, plan, precompute,
                                      shared_cold_page, user_rng)
from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.config import ComposeConfig
from reelrec.storage.cache import open_cache, page_key

NOW = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.timezone.utc)


def pages_of(cache, version):
    return {k: v for (ver, k), (v, _) in cache._data.items() if ver == version}


def with_draws(settings, n):
    return settings.model_copy(update={"compose": ComposeConfig(cold_draws=n)})


@pytest.fixture(scope="module")
def shared_plan(tiny_world):
    p = plan(with_draws(tiny_world, 2))
    cold = [u for u in p.without if cold_start_key(p.profiles.get(u)) is not None]
    assert len(cold) >= 20
    return p, cold


def test_only_users_with_nothing_of_their_own_have_a_key(shared_plan):
    p, cold = shared_plan
    prof = p.profiles.get(cold[0])
    assert cold_start_key(prof) == ((prof.region or "").upper(), "web", "day",
                                    tuple(g.lower() for g in prof.onboarding_genres))
    for change in ({"impressions": np.array([3])}, {"thumbs_down": np.array([3])},
                   {"finished": np.array([3])}, {"in_progress": np.array([3])},
                   {"recent_positives": np.array([3])}, {"n_engaged": 1},
                   {"kind_affinity": np.array([1.0, 0, 0])}):
        assert cold_start_key(dataclasses.replace(prof, **change)) is None, change


def test_the_key_holds_what_the_page_depends_on(shared_plan):
    """Two hours of one band (and no device against "web") give one key, because they give the
    same page; another band gives another key and its own page."""
    p, cold = shared_plan
    m = p.model
    prof = p.profiles.get(cold[0])

    def page(**change):
        q = dataclasses.replace(prof, **change)
        return m.encode(m.compose(q, None, bandit=ThompsonBandit(m.features.cluster_names),
                                  rng=np.random.default_rng(3), now=NOW))
    seven, eight = dataclasses.replace(prof, device="mobile", hour=7), dataclasses.replace(prof, device="Mobile", hour=8)
    assert cold_start_key(seven) == cold_start_key(eight)
    assert page(device="mobile", hour=7) == page(device="Mobile", hour=8)
    assert cold_start_key(dataclasses.replace(prof, device=None)) == cold_start_key(
        dataclasses.replace(prof, device="web"))
    late = dataclasses.replace(prof, device="mobile", hour=22)
    assert cold_start_key(late) != cold_start_key(seven)
    assert page(device="mobile", hour=22) != page(device="mobile", hour=7)


def test_a_shared_page_depends_on_the_user_alone_not_on_what_was_composed_before(shared_plan):
    p, cold = shared_plan
    m = p.model
    bandit = ThompsonBandit(m.features.cluster_names)
    memo: dict = {}
    together = {u: shared_cold_page(m, p.profiles.get(u), 5, bandit, NOW, memo) for u in cold}
    assert len(memo) <= 2 * len({cold_start_key(p.profiles.get(u)) for u in cold})
    for u in cold[::-1][:10]:  # alone, with an empty memo, in another order
        assert shared_cold_page(m, p.profiles.get(u), 5, bandit, NOW, {}) == together[u]
    # the page of (key, draw) is composed from a generator of the key and the draw
    u = cold[0]
    prof = p.profiles.get(u)
    key, draw = cold_start_key(prof), zlib.crc32(u.encode()) % 2
    rng = np.random.default_rng([5, zlib.crc32(repr(key).encode()), draw])
    assert together[u] == m.encode(m.compose(prof, None, bandit=bandit, rng=rng, now=NOW))
    # users of one key and draw share the page
    by = {}
    for v in cold:
        by.setdefault((cold_start_key(p.profiles.get(v)), zlib.crc32(v.encode()) % 2), set()).add(together[v])
    assert all(len(blobs) == 1 for blobs in by.values())


def test_precompute_writes_the_shared_pages_and_zero_draws_gives_a_draw_per_user(tiny_world, shared_plan):
    p, cold = shared_plan
    c2, c0 = open_cache("memory://"), open_cache("memory://")
    rep = precompute(with_draws(tiny_world, 2), c2, now=NOW, seed=5)
    precompute(with_draws(tiny_world, 0), c0, now=NOW, seed=5)
    got2, got0 = pages_of(c2, rep.version), pages_of(c0, rep.version)
    m = p.model
    bandit = ThompsonBandit(m.features.cluster_names)
    for u in cold[:10]:
        prof = p.profiles.get(u)
        assert got2[page_key(u)] == shared_cold_page(m, prof, 5, bandit, NOW, {})
        own = m.encode(m.compose(prof, None, bandit=bandit, rng=user_rng(5, u), now=NOW))
        assert got0[page_key(u)] == own
    # every other page is the same either way
    others = set(got2) - {page_key(u) for u in cold}
    assert others and all(got2[k] == got0[k] for k in others)
    m0 = plan(with_draws(tiny_world, 0)).model
    assert shared_cold_page(m0, p.profiles.get(cold[0]), 5, bandit, NOW, {}) is None


@given(n=st.integers(1, 2_000_000), workers=st.integers(1, 64), batch=st.integers(1, 5000))
def test_default_shards_are_whole_batches_so_every_engine_scores_the_same_batches(n, workers, batch):
    # a shard of whole batches starts on a batch boundary, so one process and any number of Ray
    # workers score each user in the same batch of the same users (batched float arithmetic can
    # depend on the batch: 5 of 20,240 pages differed on the 100 K-title world before)
    size = default_shard_users(n, workers, batch)
    assert size >= 1 and size % batch == 0
    assert size < min(MAX_SHARD_USERS, -(-n // (8 * workers))) + batch  # rounded up, by less than a batch
