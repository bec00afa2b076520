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
    titles = np.asarray(titles, dtype=np.int64)
    if len(titles) == 0 or length <= 0:
        return titles[:0]
    mh = features.genre_multi_hot[titles[: 8 * length]]
    if exempt_genre >= 0:
        mh = mh.copy()
        mh[:, exempt_genre] = False
    head = mh[:length]
    if head.sum(axis=0).max(initial=0) <= cap:  # the common case: nothing to skip
        return titles[:length]
    counts = np.zeros(mh.shape[1], np.int64)
    ok = np.ones(len(mh), bool)
    out: list[int] = []
    while len(out) < length:  # one vectorised step per slot
        i = int(np.argmax(ok))
        if not ok[i]:
            break
        out.append(i)
        counts += mh[i]
        ok[i] = False
        ok &= ~(mh & (counts >= cap)[None, :]).any(axis=1)
    return titles[np.asarray(out, np.int64)]
