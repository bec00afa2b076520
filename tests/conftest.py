"""Shared fixtures. Real data sets are read from ../shared/datasets (never copied here)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from reelrec.domain.catalog import Catalog, Title

# Real Redis and Kafka-protocol servers for the storage contract tests.
from fixtures_servers import kafka_server, redis_server, redis_url  # noqa: E402,F401
from fixtures_servers import redis_cluster_server, redis_cluster_url  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(REPO.parent / "shared" / "datasets")
ML100K = DATASETS / "ml-100k"
MLSMALL = DATASETS / "ml-latest-small"
UTC = dt.timezone.utc


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data set not present at {path}")
    return path


@pytest.fixture
def ml100k() -> Path:
    return need(ML100K)


@pytest.fixture
def mlsmall() -> Path:
    return need(MLSMALL)


@pytest.fixture
def small_catalog() -> Catalog:
    return Catalog.from_titles([
        Title("m1", "Heat", "movie", ["crime", "thriller"], runtime_min=120),
        Title("m2", "Up", "movie", ["animation", "family"], runtime_min=90, regions=["US", "GB"]),
        Title("s1", "Narcos", "series", ["crime", "drama"], episodes=3, episode_runtime_min=50),
        Title("d1", "Planet", "documentary", ["nature"], runtime_min=60),
    ])


@pytest.fixture
def now() -> dt.datetime:
    return dt.datetime(2026, 11, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small simulated world, trained and precomputed once per test session: settings for it."""
    from reelrec.batch.precompute import precompute
    from reelrec.batch.train import train
    from reelrec.config import load_settings
    from reelrec.sim.world import SimConfig, simulate
    from reelrec.storage.cache import open_cache
    d = tmp_path_factory.mktemp("tiny-world")
    s = load_settings(data_dir=d)
    simulate(SimConfig(users=300, titles=150, days=4, seed=3, progress=False), s)
    train(s)
    with open_cache(s.cache) as c:
        precompute(s, c)
    return s
