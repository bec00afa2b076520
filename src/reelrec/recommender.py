"""The contract between models and the evaluation harness (and the batch layer).

A model is fitted on ``TrainData`` and recommends top-K title columns for given user rows.
Baselines (popularity, ALS, EASE, co-visitation) and reelrec's own two-stage pipeline all
implement ``Recommender``, so ``reelrec evaluate`` scores them side by side on one split.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import InteractionMatrix
from reelrec.domain.users import RequestContext


@dataclass
class TrainData:
    """What a model may learn from: only events before the split.

    ``matrix`` is built from ``events`` by the signal weighting; its columns follow the catalog
    order and its rows ``matrix.user_ids``. ``cutoff`` is the end of the training window when the
    split is temporal (None for a random split).
    """

    matrix: InteractionMatrix
    events: pa.Table
    catalog: Catalog
    users: pa.Table | None = None
    cutoff: dt.datetime | None = None


@runtime_checkable
class Recommender(Protocol):
    name: str

    def fit(self, data: TrainData) -> "Recommender":
        """Learn from ``data``; returns self."""

    def recommend(self, users: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` title columns for each user row in ``users``: an int array (len(users), k),
        best first, padded with -1. Titles the user interacted with in training (positives and
        exclusions) are never returned."""


@runtime_checkable
class ContextRecommender(Protocol):
    """A model that can score each user for a request's context (device and local hour): the
    temporal protocol passes each test user's (``reelrec.domain.users.RequestContext``)."""

    def recommend_in_context(self, users: np.ndarray, k: int, request: RequestContext) -> np.ndarray:
        """``Recommender.recommend``, each user scored for their row of ``request``."""
