"""The hybrid kind mix: how many movies, series and documentaries a page of n items holds.

A user's kind affinity (sum of positive weights per kind) is smoothed towards uniform with
``kind_smoothing`` pseudo-titles, then squeezed into [floor, 1 - 2 floor] so that every kind keeps
``kind_floor`` of the page: share = floor + (1 - 3 floor) * smoothed. A pure movie watcher gets
0.70 / 0.15 / 0.15 as the smoothing fades. Counts are the largest-remainder rounding of
share * n, so each is within one slot of its real-valued target.
"""

from __future__ import annotations

import numpy as np

from reelrec.compose.config import ComposeConfig


def kind_shares(kind_affinity: np.ndarray, cfg: ComposeConfig) -> np.ndarray:
    """Target share of each kind (3,), summing to 1."""
    a = np.maximum(np.asarray(kind_affinity, dtype=np.float64), 0.0)  # np.clip, without its overhead
    total = a.sum() + cfg.kind_smoothing
    smoothed = (a + cfg.kind_smoothing / 3.0) / total if total > 0 else np.full(3, 1 / 3)
    return cfg.kind_floor + (1.0 - 3.0 * cfg.kind_floor) * smoothed


def largest_remainder(target: np.ndarray, n: int) -> np.ndarray:
    """Integers summing to ``n``, each floor or ceil of ``target`` (which sums to ``n``)."""
    base = np.floor(target).astype(np.int64)
    short = n - int(base.sum())
    if short > 0:
        order = np.argsort(-(target - base), kind="stable")
        base[order[:short]] += 1
    return base


def kind_bounds(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts allowed per kind: within one slot of the real-valued target."""
    lo = np.maximum(0, np.ceil(target - 1.0 - 1e-9)).astype(np.int64)
    hi = np.floor(target + 1.0 + 1e-9).astype(np.int64)
    return lo, hi


def kind_quotas(target: np.ndarray, available: np.ndarray, n: int) -> np.ndarray:
    """Counts to aim for when kind ``k`` has only ``available[k]`` candidates: the rounded target,
    capped by availability, the shortfall moved to kinds with room, largest deficit first."""
    q = np.minimum(largest_remainder(target, n), available)
    while q.sum() < n:
        room = q < available
        if not room.any():
            break
        k = int(np.argmax(np.where(room, target - q, -np.inf)))
        q[k] += 1
    return q


def kind_deviation(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """Slots outside the allowed range, summed over kinds."""
    return int(np.maximum(0, lo - counts).sum() + np.maximum(0, counts - hi).sum())


def least_kind_deviation(lo: np.ndarray, hi: np.ndarray, available: np.ndarray, n: int) -> int:
    """The smallest deviation any page of ``n`` items can reach with these availabilities."""
    under = int(np.maximum(0, lo - available).sum())
    over = max(0, n - int(np.minimum(hi, available).sum()))
    return under + over
