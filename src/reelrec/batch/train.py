"""``reelrec train``: the nightly batch layer's model build, from the lake to a published version.

lake events -> ``fold_interactions`` -> ``InteractionMatrix`` -> ``fit_pipeline`` (ALS tuned on a
validation window, content vectors for untrained titles, ANN index, co-visitation, EASE on small
catalogs, title statistics, LambdaRank ranker) -> a model version folder with its manifest ->
published by the atomic ``CURRENT`` pointer when it passes its checks.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import numpy as np

from reelrec.batch.pipeline import Pipeline, PipelineConfig, fit_pipeline, load_pipeline, save_pipeline
from reelrec.batch.progress import NullProgress
from reelrec.batch.versions import ModelStore
from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import InteractionMatrix
from reelrec.domain.signals import fold_interactions
from reelrec.errors import Conflict, InvalidInput, NotFound
from reelrec.log import get_logger
from reelrec.recommender import TrainData

log = get_logger(__name__)


@dataclass
class TrainResult:
    version: str
    published: bool
    manifest: dict
    seconds: float


def load_train_data(settings: Settings, start: dt.datetime | None = None, end: dt.datetime | None = None,
                    progress=None) -> TrainData:
    """Events of the lake (optionally a time range), folded into the interaction matrix.

    Raises:
        NotFound: no catalog, or the lake holds no events.
    """
    from reelrec.domain.users import load_users
    from reelrec.storage.lake import open_lake
    progress = progress or NullProgress()
    catalog = Catalog.load(settings.data_dir)
    with progress.step("read lake"):
        events = open_lake(settings.lake).scan(start, end)
    if events.num_rows == 0:
        raise NotFound(f"the lake at {settings.lake} holds no events to train on")
    try:
        users = load_users(settings.data_dir)
    except NotFound:
        users = None
    with progress.step("fold interactions"):
        inter = fold_interactions(events, catalog.table, settings.signals)
        matrix = InteractionMatrix.from_interactions(inter, catalog.ids)
    return TrainData(matrix=matrix, events=events, catalog=catalog, users=users)


def check_pipeline(pipe: Pipeline, report: dict) -> list[str]:
    """Reasons not to publish (empty when good): finite vectors, a ranker, recommendations."""
    problems = []
    if not np.isfinite(pipe.art.item_factors).all():
        problems.append("title vectors are not finite")
    if pipe.users is not None and not np.isfinite(pipe.users.vectors).all():
        problems.append("user vectors are not finite")
    if pipe.ranker is None:
        problems.append("no ranker (no user had a label in the ranker's window)")
    if pipe.users is not None and len(pipe.users):
        recs = pipe.recommend_rows(np.arange(min(len(pipe.users), 64)), 10)
        if (recs < 0).all():
            problems.append("no recommendations for sample users")
    return problems


def train(settings: Settings, config: PipelineConfig | None = None, publish: bool = True,
          progress=None, data: TrainData | None = None) -> TrainResult:
    """Train a model version from the lake and publish it when it passes ``check_pipeline``."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    data = data or load_train_data(settings, progress=progress)
    config = config or PipelineConfig()
    pipe, report = fit_pipeline(data, config, progress)
    problems = check_pipeline(pipe, report)
    manifest = {
        "config": config.as_dict(),
        "params": {"als": report["als"]["chosen"], "ease_lambda": report.get("ease", {}).get("lambda"),
                   "ranker_rounds": report.get("ranker", {}).get("rounds"),
                   "ranker_num_leaves": report.get("ranker", {}).get("num_leaves"),
                   "ranker_min_data_in_leaf": report.get("ranker", {}).get("min_data_in_leaf")},
        "data": report.get("data", {}),
        "counts": {"users": report["users"], "titles": report["titles"], "positives": report["positives"],
                   "content_vectors": int(pipe.art.content.sum()), "ann": pipe.art.ann.kind,
                   "ann_distinct_vectors": pipe.art.ann.distinct},
        "metrics": {"als_window_ndcg@10": report["als"]["window_ndcg@10"],
                    "ease_window_ndcg@10": report.get("ease", {}).get("window_ndcg@10"),
                    "candidates_recall": report.get("candidates_recall"),
                    "ranker_valid_ndcg@10": report.get("ranker", {}).get("valid_ndcg@10")},
        "tuning": {"als": report["als"]["trials"], "ease": report.get("ease", {}).get("trials", [])},
        "features": report.get("ranker", {}).get("features", []),
        "timings_s": {k: round(v, 3) for k, v in progress.timings.items()},
        "checks": problems,
    }
    store = ModelStore(settings.models_dir)
    with progress.step("write version"):
        version = store.write(lambda folder: save_pipeline(pipe, folder), manifest)
    published = False
    if publish and not problems:
        store.publish(version)
        published = True
    elif problems:
        log.warning("version not published", version=version, problems="; ".join(problems))
    return TrainResult(version, published, store.manifest(version), time.perf_counter() - t0)


def load_model(settings: Settings, version: str | None = None) -> Pipeline:
    """Load a version (default: the published one) after verifying its manifest and files.

    Raises:
        NotFound: nothing published and no version named, or no such version.
        Conflict: the version is corrupt or half-written.
    """
    store = ModelStore(settings.models_dir)
    version = version or store.current()
    if version is None:
        raise NotFound(f"no published model under {settings.models_dir}; run `reelrec train` first")
    manifest = store.verify(version)
    try:
        return load_pipeline(store.path(version), manifest["config"])
    except (OSError, ValueError, KeyError) as exc:
        raise Conflict(f"model version {version!r} cannot be loaded: {exc}") from None


__all__ = ["train", "load_train_data", "load_model", "TrainResult", "InvalidInput"]
