"""Stage 1 of the pipeline for one batch of users: run every recall source, merge, dedupe.

Each source returns scored candidates tagged with its name (``SourceResult``); ``merge`` takes
each source's top ``quota`` and unions them per user into at most ``max_candidates`` titles,
keeping the titles best placed in any source when the union is larger. Everything is arrays over
a batch of users: a user's state (``UserState``) is a row block, so the batch layer scores
thousands of users per call and the speed layer scores one with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from reelrec.errors import InvalidInput
from reelrec.recall.ann import ANNIndex, is_member
from reelrec.recall.als import ALSBlend, ALSParams, fold_in, topk_entries, topk_excluding
from reelrec.recall.popular import TitleStats, genre_affinity, genre_pop_scores, new_scores, trending_scores

SOURCES = ("ann", "ease", "covisit", "trending", "new", "genre_pop")
DEFAULT_QUOTAS = {"ann": 100, "ease": 100, "covisit": 80, "trending": 20, "new": 10, "genre_pop": 30}


@dataclass
class Artifacts:
    """The title side of a trained model: everything stage 1 and the ranker read."""

    title_ids: np.ndarray
    item_factors: np.ndarray  # (N, f) float32, content vectors for untrained titles
    content: np.ndarray  # (N,) bool: vector came from content, not from training
    als: ALSParams | ALSBlend  # what the title vectors were fitted with (the fold-in reads it)
    ann: ANNIndex
    covisit: sp.csr_matrix  # (N, N)
    stats: TitleStats
    ease: np.ndarray | None = None  # (N, N) float32, catalogs up to EASE_MAX_TITLES
    ref_s: float = 0.0  # reference time (end of the training data), epoch seconds
    # further item-item sources by name (recall.itemitem: "rp3beta", "itemknn", "session"), sparse (N, N)
    item_item: dict = field(default_factory=dict)

    def __getstate__(self) -> dict:
        # lists derived from the arrays (``_cached``) are rebuilt where they are used, not shipped
        return {k: v for k, v in self.__dict__.items() if k != "_derived"}


@dataclass
class UserState:
    """What the pipeline needs to know about a batch of users (rows aligned across fields)."""

    positives: sp.csr_matrix  # (B, N) weights
    ts: sp.csr_matrix | None  # (B, N) time of each positive, epoch seconds (aligned)
    exclude: sp.csr_matrix  # (B, N) titles never to return
    vectors: np.ndarray  # (B, f) ALS user vectors
    region: np.ndarray  # (B,) row into stats.regions, -1 unknown
    cluster: np.ndarray  # (B,) user cluster for the similar-users rates
    device: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # share tv/mobile/tablet/web
    hour: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # night/morning/afternoon/evening
    search_genres: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (B, G)
    events_week: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # activity last week
    # (B, 16) share of the user's events in each (device, local daypart) cell (domain.users.context_cell)
    context: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), np.float32))
    # the request being scored for (domain.users.RequestContext): device index (-1 unknown) and
    # local hour (NaN unknown); unknown falls back to the user's most frequent cell of ``context``
    req_device: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    req_hour: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    def __len__(self) -> int:
        return self.positives.shape[0]

    def take(self, rows: np.ndarray) -> "UserState":
        def t(a):
            if a is None:
                return None
            if sp.issparse(a):
                return sp.csr_matrix(a)[rows]
            return a[rows] if len(a) else a
        return UserState(*(t(getattr(self, f)) for f in self.__dataclass_fields__))

    def filled(self, n_genres: int) -> "UserState":
        b = len(self)
        if len(self.device) != b:
            self.device = np.zeros((b, 4), np.float32)
        if len(self.hour) != b:
            self.hour = np.zeros((b, 4), np.float32)
        if self.search_genres.shape != (b, n_genres):
            self.search_genres = np.zeros((b, n_genres), np.float32)
        if len(self.events_week) != b:
            self.events_week = np.zeros(b, np.float32)
        if len(self.context) != b:
            self.context = np.zeros((b, 16), np.float32)
        if len(self.req_device) != b:
            self.req_device = np.full(b, -1, np.int64)
        if len(self.req_hour) != b:
            self.req_hour = np.full(b, np.nan)
        return self

    def with_request(self, request) -> "UserState":
        """The same users scored for ``request`` (a ``RequestContext`` with one row per user;
        None: no request, each user's habitual cell stands in).

        Raises:
            InvalidInput: the request context has another number of rows."""
        if request is None:
            return replace(self, req_device=np.full(len(self), -1, np.int64), req_hour=np.full(len(self), np.nan))
        if len(request) != len(self):
            raise InvalidInput(f"request context for {len(request)} users, state of {len(self)}", field="context")
        return replace(self, req_device=np.asarray(request.device, np.int64),
                       req_hour=np.asarray(request.hour, np.float64))


@dataclass
class SourceResult:
    name: str
    cols: np.ndarray  # (B, k) title columns, -1 padded
    scores: np.ndarray  # (B, k)


@dataclass
class Candidates:
    cols: np.ndarray  # (B, C) title columns, -1 padded
    rank: np.ndarray  # (B, C, S) rank of the title in each source (inf when absent)
    sources: tuple[str, ...]

    @property
    def valid(self) -> np.ndarray:
        return self.cols >= 0


class ScoreBlock:
    """A source's (B, N) score block, computed only where it is read.

    ``at(cols)`` gives the scores of each user's candidates (B, C) (the ranker's features);
    ``rows(r)`` gives whole rows (a search over every title); ``np.asarray(block)`` the whole
    block. Each reads the same float32 values the dense block holds.
    """

    def __init__(self, shape: tuple[int, int], at, rows):
        self.shape, self._at, self._rows = shape, at, rows

    def at(self, cols: np.ndarray) -> np.ndarray:
        c0 = np.maximum(np.asarray(cols, np.int64), 0)
        return self._at(np.arange(c0.shape[0])[:, None], c0)

    def rows(self, r: np.ndarray) -> np.ndarray:
        return self._rows(np.asarray(r, np.int64))

    def __array__(self, dtype=None, copy=None):
        out = self.rows(np.arange(self.shape[0]))
        return out if dtype is None else out.astype(dtype)


def _sparse_block(m: sp.csr_matrix) -> ScoreBlock:
    m = sp.csr_matrix(m)
    m.sum_duplicates()
    n = np.int64(m.shape[1])
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n + m.indices
    data = m.data.astype(np.float32)

    def at(r, c):
        q = (np.broadcast_to(r, c.shape) * n + c).ravel()
        if len(keys) == 0:
            return np.zeros(c.shape, np.float32)
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        return np.where(keys[pos] == q, data[pos], np.float32(0.0)).reshape(c.shape)

    block = ScoreBlock(m.shape, at, lambda r: np.asarray(m[r].todense(), dtype=np.float32))
    block.matrix = m
    return block


def _region_block(art: Artifacts, name: str, state: UserState) -> ScoreBlock:
    _, scores = _region_orders(art, name)
    g = region_rows(art, state)
    return ScoreBlock((len(state), scores.shape[1]), lambda r, c: scores[g[r], c], lambda r: scores[g[r]])


def _genre_pop_block(art: Artifacts, state: UserState) -> ScoreBlock:
    """genre_pop_scores as a block: popularity x the user's top-genre affinity, summed over the
    title's genres in ascending order in float32 (the order the sparse product sums them)."""
    st = art.stats
    aff = genre_affinity(state.positives, st.genres)
    a = aff.copy()
    if a.shape[1] > 3:  # genre_pop_scores' top_genres
        cut = np.partition(a, -3, axis=1)[:, -3][:, None]
        a[a < cut] = 0.0
    pop = np.log1p(st.pop + st.recent)
    cols = _cached(art, "genres_ascending", lambda: _genres_ascending(st.genres))

    def at(r, c):
        out = np.zeros(c.shape, np.float32)
        pc = pop[c].astype(np.float32)
        for j in range(cols.shape[1]):
            g = cols[c, j]
            out += np.where(g >= 0, pc * a[r, np.maximum(g, 0)], np.float32(0.0))
        return out

    block = ScoreBlock((len(state), st.genres.shape[0]), at, lambda r: genre_pop_scores(aff[r], st))
    block.top_affinity = a
    return block


def _genres_ascending(genres: sp.csr_matrix) -> np.ndarray:
    g = sp.csr_matrix(genres).tocoo()
    ok = g.data != 0
    rows, cols = g.row[ok], g.col[ok]
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    n_per = np.bincount(rows, minlength=g.shape[0])
    out = np.full((g.shape[0], int(n_per.max(initial=0))), -1, np.int64)
    pos = np.arange(len(rows)) - np.concatenate([[0], np.cumsum(n_per)[:-1]])[rows]
    out[rows, pos] = cols
    return out


def dense_scores(art: Artifacts, state: UserState, sources=SOURCES) -> dict:
    """The score blocks (B, N) of the sources that score every title cheaply: numpy arrays or
    ``ScoreBlock``s, which compute only what is read of them."""
    out: dict = {}
    # the positives as 0/1, a new matrix: the state's own weights are what the ranker reads next
    binary = (sp.csr_matrix(state.positives) != 0).astype(np.float32) \
        if ("ease" in sources and art.ease is not None) or any(n in sources for n in art.item_item) else None
    if "ease" in sources and art.ease is not None:
        out["ease"] = np.asarray(binary @ art.ease, dtype=np.float32)
    if "covisit" in sources:
        from reelrec.recall.covisit import recent_seeds
        out["covisit"] = _sparse_block(recent_seeds(state.positives, state.ts) @ art.covisit)
    if "trending" in sources:
        out["trending"] = _region_block(art, "trending", state)
    if "new" in sources:
        out["new"] = _region_block(art, "new", state)
    if "genre_pop" in sources:
        out["genre_pop"] = _genre_pop_block(art, state)
    for name, w in art.item_item.items():
        if name in sources:
            out[name] = _sparse_block(binary @ w)
    return out


def exclusion_block(art: Artifacts, state: UserState) -> sp.csr_matrix:
    """The state's exclusions plus titles unavailable in each user's region."""
    un = art.stats.unavailable
    if un.nnz == 0:
        return sp.csr_matrix(state.exclude)
    rows = np.where(state.region >= 0, state.region, un.shape[0] - 1)
    return sp.csr_matrix(state.exclude).maximum(sp.csr_matrix(un)[rows]).tocsr()


def run_sources(art: Artifacts, state: UserState, quotas: dict[str, int],
                dense: dict[str, np.ndarray] | None = None,
                exclude: sp.csr_matrix | None = None) -> list[SourceResult]:
    """Each source's top ``quota`` candidates for every user of the batch (best first, equal
    scores in title-column order), without the user's exclusions and the titles unavailable in
    their region (``exclusion_block``; ``exclude``, when given, must be that block).

    Sources whose scores are the same for every user of a region (trending, new) read a sorted
    title list per region, built once per model; co-visitation takes its top entries from the
    sparse product; the ANN search skips the region's titles inside FAISS. Each gives what
    ``topk_excluding`` over the source's dense score block gives (tests/test_recall.py), without
    a pass over users x titles.
    """
    dense = dense_scores(art, state, tuple(quotas)) if dense is None else dense
    out = []
    for name, q in quotas.items():
        if q <= 0:
            if name in art.item_item and name in dense:  # quota 0: scored for the ranker, no candidates
                b = len(state)
                out.append(SourceResult(name, np.full((b, 0), -1, np.int64), np.zeros((b, 0), np.float32)))
            continue
        if name == "ann":
            un = art.stats.unavailable
            if un.nnz:  # the region's blocked titles inside the search, the user's own after it
                cols, sc = art.ann.search(state.vectors, q, sp.csr_matrix(state.exclude), unavailable=un,
                                          groups=region_rows(art, state))
            else:
                exclude = exclusion_block(art, state) if exclude is None else exclude
                cols, sc = art.ann.search(state.vectors, q, exclude)
        elif name in ("trending", "new") and name in dense:
            cols, sc = shared_topk(art, name, state, q)
        elif (name == "covisit" or name in art.item_item) and name in dense:
            cols, sc = covisit_topk(art, state, q, dense[name])
        elif name == "genre_pop" and name in dense:
            cols, sc = genre_pop_topk(art, state, q, dense[name], exclude)
        elif name in dense:
            exclude = exclusion_block(art, state) if exclude is None else exclude
            cols, sc = topk_excluding(np.asarray(dense[name]), exclude, q)
        else:
            continue
        out.append(SourceResult(name, cols, sc))
    return out


def region_rows(art: Artifacts, state: UserState) -> np.ndarray:
    """Each user's row of ``stats.unavailable`` (the last row: region unknown, nothing blocked)."""
    return np.where(state.region >= 0, state.region, art.stats.unavailable.shape[0] - 1).astype(np.int64)


def _cached(art: Artifacts, key, build):
    cache = art.__dict__.setdefault("_derived", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _allowed(art: Artifacts) -> np.ndarray:
    """(regions + 1, titles) bool: available in the region (dense, a few MB at most)."""
    return _cached(art, "allowed", lambda: ~np.asarray(sp.csr_matrix(art.stats.unavailable).todense(), bool))


def _region_orders(art: Artifacts, name: str) -> tuple[np.ndarray, np.ndarray]:
    """For a source scored per region (trending, new): each region row's available titles by
    score, best first, ties in column order (-1 padded), and the scores (rows x titles)."""
    def build():
        allowed = _allowed(art)
        n_rows, n = allowed.shape
        regions = np.array([r if r < len(art.stats.regions) else -1 for r in range(n_rows)], np.int64)
        scores = (trending_scores(art.stats, regions) if name == "trending"
                  else new_scores(art.stats, n_rows)).astype(np.float32)
        lists = []
        for r in range(n_rows):
            ok = allowed[r] & (scores[r] > -np.inf)
            cols = np.flatnonzero(ok)
            lists.append(cols[np.lexsort((cols, -scores[r, cols]))])
        width = max((len(x) for x in lists), default=0)
        orders = np.full((n_rows, width), -1, np.int64)
        for r, x in enumerate(lists):
            orders[r, :len(x)] = x
        return orders, scores
    return _cached(art, ("orders", name), build)


def shared_topk(art: Artifacts, name: str, state: UserState, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a per-region source (trending, new) for each user: the region's sorted list
    without the user's own exclusions (a prefix of k + their exclusion count is enough)."""
    orders, scores = _region_orders(art, name)
    g = region_rows(art, state)
    b = len(g)
    pex = sp.csr_matrix(state.exclude)
    width = min(orders.shape[1], k + int(np.diff(pex.indptr).max(initial=0)))
    p = orders[g, :width]
    bad = p < 0
    if pex.nnz and width:
        bad |= is_member(pex, np.repeat(np.arange(b), width), np.maximum(p, 0).ravel()).reshape(b, width)
    sel = np.argsort(bad, axis=1, kind="stable")[:, :k]
    cols = np.take_along_axis(p, sel, axis=1)
    ok = ~np.take_along_axis(bad, sel, axis=1)
    cols = np.where(ok, cols, -1)
    vals = np.where(ok, scores[g[:, None], np.maximum(cols, 0)], -np.inf).astype(np.float32)
    if cols.shape[1] < k:
        cols = np.pad(cols, ((0, 0), (0, k - cols.shape[1])), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, k - vals.shape[1])), constant_values=-np.inf)
    return cols, vals


def covisit_topk(art: Artifacts, state: UserState, k: int, block: ScoreBlock | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` co-visitation candidates from the sparse product seeds @ covisit: its positive
    entries that the user may see (the same as the dense block's top-k, where the rest is -inf)."""
    m = getattr(block, "matrix", None)
    if m is None:
        from reelrec.recall.covisit import recent_seeds
        m = sp.csr_matrix(recent_seeds(state.positives, state.ts) @ art.covisit)
        m.sum_duplicates()
    b = m.shape[0]
    rows = np.repeat(np.arange(b), np.diff(m.indptr))
    cols = m.indices.astype(np.int64)
    vals = m.data.astype(np.float32)
    keep = vals > 0
    if art.stats.unavailable.nnz:
        keep &= _allowed(art)[region_rows(art, state)[rows], cols]
    pex = sp.csr_matrix(state.exclude)
    if pex.nnz:
        keep &= ~is_member(pex, rows, cols)
    return topk_entries(rows[keep], cols[keep], vals[keep], b, k)


@dataclass
class GenreLists:
    """For each (region row, genre): the genre's titles available in the region by popularity,
    highest first, ties in column order; ragged (one flat array, a start and a length each)."""

    flat: np.ndarray  # int32
    start: np.ndarray  # (regions + 1, genres)
    length: np.ndarray  # (regions + 1, genres)

    @property
    def longest(self) -> int:
        return int(self.length.max(initial=0))

    def prefix(self, rows: np.ndarray, genres: np.ndarray, m: int) -> np.ndarray:
        """The first ``m`` titles of lists (rows, genres) (broadcast together), -1 padded."""
        i = np.arange(m)
        st, ln = self.start[rows, genres][..., None], self.length[rows, genres][..., None]
        at = np.minimum(st + i, max(len(self.flat) - 1, 0))
        return np.where(i < ln, self.flat[at] if len(self.flat) else -1, -1).astype(np.int64)


def _genre_orders(art: Artifacts) -> tuple[GenreLists, np.ndarray]:
    """``genre_pop``'s lists (``GenreLists``) and its popularity (float32, per title)."""
    def build():
        st = art.stats
        pop = np.log1p(st.pop + st.recent).astype(np.float32)
        allowed = _allowed(art)
        g = sp.csc_matrix(st.genres)
        parts, start, length = [], np.zeros((allowed.shape[0], g.shape[1]), np.int64), \
            np.zeros((allowed.shape[0], g.shape[1]), np.int64)
        at = 0
        for r in range(allowed.shape[0]):
            for j in range(g.shape[1]):
                t = np.sort(g.indices[g.indptr[j]:g.indptr[j + 1]])
                t = t[allowed[r, t]]
                parts.append(t[np.lexsort((t, -pop[t]))].astype(np.int32))
                start[r, j], length[r, j] = at, len(t)
                at += len(t)
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return GenreLists(flat, start, length), pop
    return _cached(art, "genre_orders", build)


def _subset_bound(aff: np.ndarray, p_end: np.ndarray) -> float:
    """max over non-empty genre sets S of sum(aff[S]) * min(p_end[S]): the highest score a title
    outside every prefix can have (sorting by p_end, S is a suffix)."""
    o = np.argsort(p_end)
    return float((np.cumsum(aff[o][::-1])[::-1] * p_end[o]).max(initial=0.0))


def _genre_pop_batch(orders: GenreLists, pop: np.ndarray, a: np.ndarray, g: np.ndarray, pex: sp.csr_matrix,
                     k: int, block, users: np.ndarray | None = None, deeper: int = 1
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``genre_pop_topk``'s batched step: one prefix depth for every user (``deeper`` x (4k + the
    most exclusions among them)), top-k of the prefixes, and which users' bound holds (the rest
    go deeper). ``users`` are the rows of ``block`` that ``a``, ``g`` and ``pex`` describe (all
    of them by default)."""
    b = len(g)
    out_c = np.full((b, k), -1, np.int64)
    out_v = np.full((b, k), -np.inf, np.float32)
    n_top = (a > 0).sum(axis=1)
    width = int(n_top.max(initial=0))
    m = min(orders.longest, deeper * (4 * k + int(np.diff(pex.indptr).max(initial=0))))
    if b == 0 or width == 0 or m == 0:
        return out_c, out_v, np.zeros(b, bool)
    top = np.argsort(~(a > 0), axis=1, kind="stable")[:, :width]  # each user's top genres first
    has = np.take_along_axis(a, top, axis=1) > 0  # (B, W)
    pre = orders.prefix(g[:, None], top, m)  # (B, W, m)
    pre = np.where(has[:, :, None], pre, -1)
    cand = np.sort(pre.reshape(b, -1), axis=1)
    dup = np.zeros_like(cand, bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    rows = np.repeat(np.arange(b), cand.shape[1])
    cols = cand.ravel()
    keep = (cols >= 0) & ~dup.ravel()
    rows, cols = rows[keep], cols[keep]
    if pex.nnz:
        ok = ~is_member(pex, rows, cols)
        rows, cols = rows[ok], cols[ok]
    at = rows if users is None else np.asarray(users, np.int64)[rows]
    if isinstance(block, ScoreBlock):
        vals = block._at(at[:, None], cols[:, None])[:, 0]
    else:
        vals = np.asarray(block)[at, cols]
    c, v = topk_entries(rows, cols, vals, b, k)
    last = pre[:, :, -1]
    p_end = np.where(last >= 0, pop[np.maximum(last, 0)], 0.0).astype(np.float64)  # (B, W)
    o = np.argsort(p_end, axis=1)
    aff = np.where(has, np.take_along_axis(a, top, axis=1), 0.0).astype(np.float64)
    suffix = np.cumsum(np.take_along_axis(aff, o, axis=1)[:, ::-1], axis=1)[:, ::-1]
    bound = (suffix * np.take_along_axis(p_end, o, axis=1)).max(axis=1)
    done = (n_top > 0) & (v[:, -1] > 0) & (v[:, -1] > bound * (1 + 1e-4))
    out_c[done], out_v[done] = c[done], v[done]
    return out_c, out_v, done


def genre_pop_topk(art: Artifacts, state: UserState, k: int, block, exclude: sp.csr_matrix | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``genre_pop`` (popularity x affinity over the user's top genres).

    A title's score is its popularity times the summed affinity of its genres among the user's
    top ones, so every title outside the first m = 4k + (exclusions) of each top genre's
    popularity list scores at most the m-th popularity of its top genres times their summed
    affinity (``_subset_bound``). The titles of those prefixes are scored from ``block`` (the
    source's dense block or ``ScoreBlock``); when the k-th best of them beats that bound, they
    hold the top k, else the prefixes grow. Where they cannot (scores of zero) the user's row of
    ``block`` is searched whole, as ``topk_excluding`` does (``exclude``: the batch's
    ``exclusion_block``, built when needed if None).
    """
    st = art.stats
    orders, pop = _genre_orders(art)
    a = getattr(block, "top_affinity", None)
    if a is None:
        a = genre_affinity(state.positives, st.genres)
        if a.shape[1] > 3:  # genre_pop_scores' top_genres
            cut = np.partition(a, -3, axis=1)[:, -3][:, None]
            a = np.where(a < cut, 0.0, a).astype(np.float32)
    if isinstance(block, ScoreBlock):
        values = lambda u, t: block._at(np.array([[u]]), t[None, :])[0]  # noqa: E731
    else:
        values = lambda u, t: block[u, t]  # noqa: E731
    g = region_rows(art, state)
    pex = sp.csr_matrix(state.exclude)
    out_c, out_v, done = _genre_pop_batch(orders, pop, a, g, pex, k, block)
    # the users whose prefixes did not prove their top k: twice as deep, all of them at once, while
    # the prefixes are shorter than the longest list (a proven top k is the top k at any depth)
    base = min(orders.longest, 4 * k + int(np.diff(pex.indptr).max(initial=0)))
    deeper = 2
    while not done.all() and 0 < base and base * deeper // 2 < orders.longest:
        rest = np.flatnonzero(~done)
        c, v, ok = _genre_pop_batch(orders, pop, a[rest], g[rest], pex[rest], k, block, users=rest, deeper=deeper)
        out_c[rest[ok]], out_v[rest[ok]] = c[ok], v[ok]
        done[rest[ok]] = True
        deeper *= 2
    slow = []
    for u in np.flatnonzero(~done).tolist():  # the prefixes did not prove it: deeper, user by user
        top = np.flatnonzero(a[u] > 0)
        mine = pex.indices[pex.indptr[u]:pex.indptr[u + 1]]
        m = 4 * k + len(mine)  # deeper than k: popularity ties would make the bound meet the k-th score
        exhausted = len(top) == 0
        while not exhausted:
            pre = orders.prefix(g[u], top, m)  # (genres, m)
            cand = np.unique(pre[pre >= 0])
            if len(mine):
                cand = cand[~np.isin(cand, mine)]
            c, v = topk_entries(np.zeros(len(cand), np.int64), cand, values(u, cand), 1, k)
            # a title outside the prefixes, with top genres S, has popularity <= min over S of
            # the popularity at each prefix's end (a genre listed whole: no title outside it)
            last = pre[:, -1]
            p_end = np.where(last >= 0, pop[np.maximum(last, 0)], 0.0)
            bound = _subset_bound(a[u, top].astype(np.float64), p_end.astype(np.float64))
            if v[0, -1] > 0 and v[0, -1] > bound * (1 + 1e-4):
                out_c[u], out_v[u] = c[0], v[0]
                break
            exhausted = m >= orders.longest
            m *= 4
        if exhausted:
            slow.append(u)
    if slow:
        rows = np.asarray(slow, np.int64)
        ex = sp.csr_matrix(exclude)[rows] if exclude is not None else exclusion_block(art, state.take(rows))
        full = block.rows(rows) if isinstance(block, ScoreBlock) else block[rows]
        out_c[rows], out_v[rows] = topk_excluding(full, ex, k)
    return out_c, out_v


def merge(results: list[SourceResult], max_candidates: int = 300) -> Candidates:
    """Union per user, dedupe, keep the ``max_candidates`` best placed (by best rank in any source)."""
    names = tuple(r.name for r in results)
    b = results[0].cols.shape[0] if results else 0
    if b == 0:
        return Candidates(np.zeros((0, 0), np.int64), np.zeros((0, 0, len(names)), np.float32), names)
    cols = np.concatenate([r.cols for r in results], axis=1)
    src = np.concatenate([np.full(r.cols.shape[1], i) for i, r in enumerate(results)])
    rnk = np.concatenate([np.arange(r.cols.shape[1]) for r in results]).astype(np.float32)
    rows = np.repeat(np.arange(b), cols.shape[1])
    flat = cols.ravel()
    ok = flat >= 0
    rows, flat = rows[ok], flat[ok]
    src = np.tile(src, b)[ok]
    rnk = np.tile(rnk, b)[ok]
    n = np.int64(max(int(flat.max(initial=0)) + 1, 1))
    keys, inv = np.unique(rows.astype(np.int64) * n + flat, return_inverse=True)
    ranks = np.full((len(keys), len(names)), np.inf, dtype=np.float32)
    ranks[inv, src] = rnk
    p_rows, p_cols = keys // n, keys % n
    best = ranks.min(axis=1)
    order = np.lexsort((best, p_rows))
    p_rows, p_cols, ranks = p_rows[order], p_cols[order], ranks[order]
    first = np.searchsorted(p_rows, np.arange(b))
    pos = np.arange(len(p_rows)) - first[p_rows]
    keep = pos < max_candidates
    width = int(min(max_candidates, pos[keep].max(initial=-1) + 1))
    out_cols = np.full((b, width), -1, dtype=np.int64)
    out_rank = np.full((b, width, len(names)), np.inf, dtype=np.float32)
    out_cols[p_rows[keep], pos[keep]] = p_cols[keep]
    out_rank[p_rows[keep], pos[keep]] = ranks[keep]
    return Candidates(out_cols, out_rank, names)


def user_vectors_for(art: Artifacts, positives: sp.csr_matrix) -> np.ndarray:
    """Fold-in of each row of ``positives`` against the title vectors (new or changed users)."""
    return fold_in(art.item_factors, positives, art.als)
