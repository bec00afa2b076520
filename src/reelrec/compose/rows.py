"""Filling one shelf from an ordered list of titles under a per-shelf genre cap.

Shared by the personal shelves (Because you watched X, genre rows, the kind row) and the shared
per-region shelves (Trending, New releases).
"""

from __future__ import annotations

import numpy as np

from reelrec.compose.features import CatalogFeatures


def dedupe_keep_order(titles: np.ndarray) -> np.ndarray:
    titles = np.asarray(titles, dtype=np.int64)
    _, first = np.unique(titles, return_index=True)
    return titles[np.sort(first)]


def fill_row(features: CatalogFeatures, titles: np.ndarray, length: int, cap: int,
             exempt_genre: int = -1) -> np.ndarray:
    """The first ``length`` of ``titles`` (already filtered, in preference order) such that no genre
    other than ``exempt_genre`` appears more than ``cap`` times. Titles that would break the cap
    are skipped; if too few remain, the row is shorter rather than over the cap."""
    titles = np.asarray(titles, dtype=np.int64)[: 4 * max(length, 0)]
    if len(titles) == 0 or length <= 0:
        return titles[:0]
    mh = features.genre_multi_hot[titles].view(np.int8)  # a copy: fancy indexing
    if exempt_genre >= 0:
        mh[:, exempt_genre] = 0
    if mh[:length].sum(axis=0).max(initial=0) <= cap:  # the common case: nothing to skip
        return titles[:length]
    counts = np.zeros(mh.shape[1], np.int64)
    ok = np.ones(len(titles), bool)
    out: list[np.ndarray] = []
    taken = 0
    while taken < length:
        # take the longest prefix of the remaining titles that keeps every genre within the cap:
        # the titles one-at-a-time greedy would take, in a few vectorised steps
        rest = np.flatnonzero(ok)
        if not len(rest):
            break
        within = ((counts[None, :] + np.cumsum(mh[rest], axis=0)) <= cap).all(axis=1)
        j = len(rest) if within.all() else int(np.argmin(within))
        got = rest[: min(j, length - taken)]
        out.append(got)
        taken += len(got)
        counts += mh[got].sum(axis=0)
        ok[got] = False
        ok &= ~(mh[:, counts >= cap] > 0).any(axis=1)
    return titles[np.concatenate(out)] if out else titles[:0]
