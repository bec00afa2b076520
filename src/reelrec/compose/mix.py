"""The hybrid kind mix: how many movies, series and documentaries a page of n items holds.

A user's kind affinity (sum of positive weights per kind) is smoothed towards uniform with
``kind_smoothing`` pseudo-titles, then squeezed into [floor, 1 - 2 floor] so that every kind keeps
``kind_floor`` of the page: share = floor + (1 - 3 floor) * smoothed. A pure movie watcher gets
0.70 / 0.15 / 0.15 as the smoothing fades. Counts are the largest-remainder rounding of
share * n, so each is within one slot of its real-valued target.
"""

from __future__ import annotations

import math

import numpy as np

from reelrec.compose.config import ComposeConfig


# Every function here works on three numbers (one per kind) and runs several times per page:
# plain Python floats and ints, in the same IEEE operations and order as the numpy expressions
# they replaced (a three-element numpy sum adds left to right, as ``sum`` does), so the results
# are bit for bit the same at half the cost (38 -> 20 us a page over the five calls).


def kind_shares(kind_affinity: np.ndarray, cfg: ComposeConfig) -> np.ndarray:
    """Target share of each kind (3,), summing to 1."""
    a = [max(x, 0.0) for x in np.asarray(kind_affinity, dtype=np.float64).tolist()]
    total = sum(a) + cfg.kind_smoothing
    if total > 0:
        third = cfg.kind_smoothing / 3.0
        smoothed = [(x + third) / total for x in a]
    else:
        smoothed = [1 / 3] * len(a)
    floor, rest = cfg.kind_floor, 1.0 - 3.0 * cfg.kind_floor
    return np.array([floor + rest * x for x in smoothed])


def largest_remainder(target: np.ndarray, n: int) -> np.ndarray:
    """Integers summing to ``n``, each floor or ceil of ``target`` (which sums to ``n``)."""
    return np.array(_largest_remainder(np.asarray(target, np.float64).tolist(), n), np.int64)


def _largest_remainder(target: list[float], n: int) -> list[int]:
    base = [math.floor(x) for x in target]
    short = n - sum(base)
    if short > 0:
        order = sorted(range(len(target)), key=lambda k: -(target[k] - base[k]))  # stable, as argsort
        for k in order[:short]:
            base[k] += 1
    return base


def kind_bounds(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts allowed per kind: within one slot of the real-valued target."""
    t = np.asarray(target, np.float64).tolist()
    lo = [max(0, math.ceil(x - 1.0 - 1e-9)) for x in t]
    hi = [math.floor(x + 1.0 + 1e-9) for x in t]
    return np.array(lo, np.int64), np.array(hi, np.int64)


def kind_quotas(target: np.ndarray, available: np.ndarray, n: int) -> np.ndarray:
    """Counts to aim for when kind ``k`` has only ``available[k]`` candidates: the rounded target,
    capped by availability, the shortfall moved to kinds with room, largest deficit first."""
    t, av = np.asarray(target, np.float64).tolist(), np.asarray(available).tolist()
    q = [min(x, a) for x, a in zip(_largest_remainder(t, n), av)]
    while sum(q) < n:
        best, k = -math.inf, -1
        for j in range(len(q)):  # the first of equal deficits, as argmax
            if q[j] < av[j] and t[j] - q[j] > best:
                best, k = t[j] - q[j], j
        if k < 0:
            break
        q[k] += 1
    return np.array(q, np.int64)


def kind_deviation(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """Slots outside the allowed range, summed over kinds."""
    return int(np.maximum(0, lo - counts).sum() + np.maximum(0, counts - hi).sum())


def least_kind_deviation(lo: np.ndarray, hi: np.ndarray, available: np.ndarray, n: int) -> int:
    """The smallest deviation any page of ``n`` items can reach with these availabilities."""
    lo, hi, av = np.asarray(lo).tolist(), np.asarray(hi).tolist(), np.asarray(available).tolist()
    under = sum(max(0, a - b) for a, b in zip(lo, av))
    over = max(0, n - sum(min(a, b) for a, b in zip(hi, av)))
    return under + over
