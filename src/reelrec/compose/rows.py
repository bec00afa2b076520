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
    titles = np.asarray(titles, dtype=np.int64)[: 8 * max(length, 0)]
    if len(titles) == 0 or length <= 0:
        return titles[:0]
    head = features.genre_multi_hot[titles[:length]]
    if exempt_genre >= 0:
        head = head.copy()
        head[:, exempt_genre] = False
    if head.sum(axis=0).max(initial=0) <= cap:  # the common case: nothing to skip
        return titles[:length]
    gw = features.genre_words[titles]
    one_word = gw.shape[1] == 1
    gw = gw[:, 0] if one_word else gw
    counts: dict[int, int] = {}
    full = 0
    ok = np.ones(len(titles), bool)
    out: list[int] = []
    tg = features.title_genres
    while len(out) < length:  # one vectorised step per slot
        i = int(ok.argmax())
        if not ok[i]:
            break
        out.append(i)
        ok[i] = False
        for g in tg[titles[i]]:  # a title has a few genres
            if g != exempt_genre:
                counts[g] = counts.get(g, 0) + 1
                if counts[g] >= cap:
                    full |= 1 << g
        if full:
            if one_word:
                ok &= (gw & np.uint64(full)) == 0
            else:
                fw = np.array([(full >> (64 * w)) & (2**64 - 1) for w in range(gw.shape[1])], np.uint64)
                ok &= ~((gw & fw).any(axis=1))
    return titles[np.asarray(out, np.int64)]
