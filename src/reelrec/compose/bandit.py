"""Explore/exploit: a Thompson-sampling bandit over genre clusters, one posterior per region.

Each arm is a (region, genre cluster) pair with a Beta(alpha, beta) posterior of the probability
that an explore impression of that cluster is engaged with (a click or a play). Composition samples
every cluster's posterior once per page and fills the explore slots from the clusters with the
highest draws; the speed layer calls ``update`` when an impression whose slot kind is ``explore``
is engaged with (or expires unengaged), so the posteriors learn from earlier exploration slots.
A region without observations borrows the pooled posterior of all regions (key ``*``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from reelrec.errors import FieldError, InvalidInput

GLOBAL = "*"


class ThompsonBandit:
    """Beta posteriors per (region, cluster).

    ``clusters`` names the arms (``CatalogFeatures.cluster_names``); ``prior`` is the Beta prior
    every arm starts from.
    """

    def __init__(self, clusters: Sequence[str], prior: tuple[float, float] = (1.0, 1.0)):
        if prior[0] <= 0 or prior[1] <= 0:
            raise InvalidInput(FieldError("prior", "alpha and beta must be positive"))
        self.clusters = list(clusters)
        self._cluster_index = {c: i for i, c in enumerate(self.clusters)}
        self.prior = (float(prior[0]), float(prior[1]))
        self._regions: dict[str, int] = {GLOBAL: 0}
        self._wins = np.zeros((1, len(self.clusters)))
        self._losses = np.zeros((1, len(self.clusters)))
        # region -> (updates seen, posterior): pages draw from the same posterior until an update
        self._updates = 0
        self._draw: dict[str | None, tuple[int, tuple[np.ndarray, np.ndarray]]] = {}

    # --- state ----------------------------------------------------------------------------
    def _row(self, region: str | None, create: bool) -> int:
        key = (region or GLOBAL).upper()
        r = self._regions.get(key)
        if r is None and create:
            r = len(self._regions)
            self._regions[key] = r
            self._wins = np.vstack([self._wins, np.zeros(len(self.clusters))])
            self._losses = np.vstack([self._losses, np.zeros(len(self.clusters))])
        return -1 if r is None else r

    def _cluster(self, cluster: int | str) -> int:
        c = self._cluster_index.get(cluster, -1) if isinstance(cluster, str) else int(cluster)
        if not 0 <= c < len(self.clusters):
            raise InvalidInput(FieldError("cluster", f"unknown cluster {cluster!r}"))
        return c

    def posterior(self, region: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) per cluster for ``region``; the pooled posterior if it has no data."""
        r = self._row(region, create=False)
        if r < 0 or (self._wins[r].sum() + self._losses[r].sum()) == 0:
            r = 0
        return self.prior[0] + self._wins[r], self.prior[1] + self._losses[r]

    def mean(self, region: str | None) -> np.ndarray:
        a, b = self.posterior(region)
        return a / (a + b)

    # --- learning ------------------------------------------------------------------------
    def update(self, region: str | None, cluster: int | str, engaged: bool, weight: float = 1.0) -> None:
        """Record one explore impression of ``cluster`` in ``region``: engaged or not.

        Raises:
            InvalidInput: unknown cluster, negative weight.
        """
        if weight < 0:
            raise InvalidInput(FieldError("weight", "must be >= 0"))
        c = self._cluster(cluster)
        rows = {0, self._row(region, create=True)}
        for r in rows:
            if engaged:
                self._wins[r, c] += weight
            else:
                self._losses[r, c] += weight
        self._updates += 1

    def update_many(self, regions: Iterable[str | None], clusters: np.ndarray, engaged: np.ndarray) -> None:
        """Vectorised ``update`` for a batch of explore impressions (the speed layer's micro-batch)."""
        clusters = np.asarray(clusters, dtype=np.int64)
        engaged = np.asarray(engaged, dtype=bool)
        regions = list(regions)
        if not (len(regions) == len(clusters) == len(engaged)):
            raise InvalidInput(FieldError("regions", "regions, clusters and engaged must have one value each"))
        if len(clusters) and (clusters.min() < 0 or clusters.max() >= len(self.clusters)):
            raise InvalidInput(FieldError("clusters", f"must lie in [0, {len(self.clusters)})"))
        rows = np.asarray([self._row(r, create=True) for r in regions], dtype=np.int64)
        # every impression counts for its region and, once, for the pooled row 0
        regional = rows != 0
        for r, keep in ((rows, regional), (np.zeros_like(rows), np.ones(len(rows), bool))):
            np.add.at(self._wins, (r[keep & engaged], clusters[keep & engaged]), 1.0)
            np.add.at(self._losses, (r[keep & ~engaged], clusters[keep & ~engaged]), 1.0)
        self._updates += 1

    # --- acting ---------------------------------------------------------------------------
    def sample(self, region: str | None, rng: np.random.Generator) -> np.ndarray:
        """One Thompson draw per cluster for ``region``."""
        n = self._updates  # read before the posterior: an update meanwhile makes the entry stale
        got = self._draw.get(region)
        if got is None or got[0] != n:
            if len(self._draw) > 1024:
                self._draw.clear()
            got = self._draw[region] = (n, self.posterior(region))
        return rng.beta(*got[1])

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"clusters": self.clusters, "prior": list(self.prior),
                "regions": {r: {"wins": self._wins[i].tolist(), "losses": self._losses[i].tolist()}
                            for r, i in self._regions.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ThompsonBandit":
        b = cls(d["clusters"], tuple(d["prior"]))
        for r, v in d["regions"].items():
            i = b._row(r, create=True)
            b._wins[i] = np.asarray(v["wins"], dtype=np.float64)
            b._losses[i] = np.asarray(v["losses"], dtype=np.float64)
        b._updates += 1
        return b
