"""Train/test splits for ``reelrec evaluate``: the evaluator's view of the behavioural lake.

Splits operate on events (the lake's Arrow table), so the training side is exactly what the batch
layer would see: the events before the split, folded by the signal weighting into an
``InteractionMatrix`` over the catalog order and wrapped in a ``reelrec.recommender.TrainData``.

* ``msr-stratified``: the Microsoft Recommenders ``python_stratified_split`` protocol. Each user's
  (user, title) interactions are shuffled with the seed and the first ``round(0.75 * n)`` go to
  training; every held-out title the user did not reject is relevant. All events of one
  (user, title) pair fall on the same side, so a held-out title is never a training title.
* ``temporal``: cut at the 80th percentile of interaction time; train on the events before the cut,
  test on the later ones for users seen in training. A test title is relevant when, folded over
  the test window, it was rated >= 4, completed to >= 90 %, thumbed up or rewatched, and the user
  had not already interacted with it in training (those can never be recommended). Each test
  user's request context is the device and local hour of their first test event
  (``Split.request``): what a request at the start of the test period would carry. With
  ``test_window="session"`` only the events of each user's first test session count (the
  session of their first test event: its ``session_id``, or where the event has none, the events
  that follow it without a gap of more than ``SESSION_GAP_S``); relevance is folded over those
  events alone, so the relevant titles are the ones the request's session engaged with.

``holdout_rows`` splits a training matrix the same way for tuning (EASE lambda, ALS).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reelrec.config import SignalWeights
from reelrec.domain.catalog import Catalog
from reelrec.domain.matrix import InteractionMatrix, index_of, seconds
from reelrec.domain.signals import fold_interactions
from reelrec.domain.users import RequestContext, first_event_context, table_regions
from reelrec.errors import FieldError, InvalidInput
from reelrec.recommender import TrainData

PROTOCOLS = ("msr-stratified", "temporal")
TEST_WINDOWS = ("all", "session")  # temporal: the whole test period, or each user's first session
SESSION_GAP_S = 30 * 60  # without a session id, a session ends at 30 minutes of inactivity
TRAIN_RATIO = 0.75
TEMPORAL_QUANTILE = 0.8
POSITIVE_RATING = 4.0
POSITIVE_COMPLETION = 0.9
UTC = dt.timezone.utc


@dataclass
class Split:
    """One split: what models learn from, and what they are scored against.

    ``test_rows`` are row indices into ``train.matrix`` (users seen in training with at least one
    relevant test title); ``relevant`` is a binary CSR matrix (len(test_rows) x titles).
    """

    protocol: str
    seed: int
    train: TrainData
    test_events: pa.Table
    test_rows: np.ndarray
    relevant: sp.csr_matrix
    cold_test_users: int = 0  # users with relevant test titles but no training row
    # temporal: the request each test user is scored for, the device and local hour of their
    # first test event (row-aligned with ``test_rows``); None for msr-stratified (no time order)
    request: RequestContext | None = None
    test_window: str = "all"


def _sorted_codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Integer codes for ``col`` that follow the sorted order of its distinct values, so that
    seeded shuffles do not depend on the order events were written in."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    values = enc.dictionary
    order = pc.array_sort_indices(values).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return rank[codes], values.take(pa.array(order))


def _interaction_mask(events: pa.Table) -> np.ndarray:
    """Events that say something about a (user, title) pair: titled and not a bare impression."""
    has_title = pc.is_valid(events.column("title_id")).to_numpy(zero_copy_only=False)
    not_impr = pc.not_equal(events.column("type"), "impression").fill_null(True)
    return has_title & not_impr.to_numpy(zero_copy_only=False)


def stratified_split_events(events: pa.Table, ratio: float = TRAIN_RATIO,
                            seed: int = 42) -> tuple[pa.Table, pa.Table]:
    """Per user, shuffle the (user, title) pairs with ``seed`` and send the first
    ``round(ratio * n)`` to training. Events without a title (searches, onboarding) and pairs
    with only impressions stay in training. Returns (train_events, test_events)."""
    if not 0 < ratio < 1:
        raise InvalidInput(FieldError("ratio", f"must be between 0 and 1, got {ratio}"))
    n = events.num_rows
    if n == 0:
        return events, events
    inter = _interaction_mask(events)
    titled = pc.is_valid(events.column("title_id")).to_numpy(zero_copy_only=False)
    user_code, _ = _sorted_codes(events.column("user_id"))
    title_code, titles = _sorted_codes(events.column("title_id").fill_null(""))
    pair_code = user_code * (len(titles) + 1) + title_code
    pairs, inverse = np.unique(pair_code, return_inverse=True)
    pair_inter = np.bincount(inverse, weights=inter, minlength=len(pairs)) > 0
    pair_user = pairs // (len(titles) + 1)

    # the random key is drawn over pairs in sorted (user, title) order: stable for a given lake
    key = np.random.default_rng(seed).random(len(pairs))
    cand = np.flatnonzero(pair_inter)
    order = cand[np.lexsort((key[cand], pair_user[cand]))]
    users_sorted = pair_user[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    # np.rint rounds half to even, like Python's round() in the Recommenders split
    n_train = np.repeat(np.rint(ratio * counts).astype(np.int64), counts)
    pair_test = np.zeros(len(pairs), dtype=bool)
    pair_test[order[rank >= n_train]] = True

    test = pair_test[inverse] & titled
    return events.filter(pa.array(~test)), events.filter(pa.array(test))


def temporal_cut(events: pa.Table, quantile: float = TEMPORAL_QUANTILE) -> dt.datetime:
    """The ``quantile`` of interaction-event time (impressions and titleless events ignored)."""
    if not 0 < quantile < 1:
        raise InvalidInput(FieldError("quantile", f"must be between 0 and 1, got {quantile}"))
    ts = pc.cast(events.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
    ts = ts[_interaction_mask(events)]
    if len(ts) == 0:
        raise InvalidInput(FieldError("data", "the lake holds no interaction events to split"))
    ms = int(np.quantile(ts, quantile, method="higher"))
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def temporal_split_events(events: pa.Table, quantile: float = TEMPORAL_QUANTILE
                          ) -> tuple[pa.Table, pa.Table, dt.datetime]:
    """Events strictly before the cut train; events at or after it test.
    Returns (train_events, test_events, cutoff)."""
    cutoff = temporal_cut(events, quantile)
    before = pc.less(events.column("ts"), pa.scalar(cutoff, events.schema.field("ts").type))
    before = before.fill_null(False)
    return events.filter(before), events.filter(pc.invert(before)), cutoff


def test_window_error(protocol: str, test_window: str) -> FieldError | None:
    """Why ``test_window`` cannot go with ``protocol`` (None: it can)."""
    if test_window in TEST_WINDOWS and (test_window == "all" or protocol == "temporal"):
        return None
    return FieldError("test_window", f"must be one of {', '.join(TEST_WINDOWS)} (session: temporal "
                                     f"only), got {test_window!r}")


def first_session_events(events: pa.Table, gap_s: float = SESSION_GAP_S) -> pa.Table:
    """Each user's first session in ``events``: the session of their first event (the one
    ``first_event_context`` reads the request from). Events count when they carry that event's
    ``session_id``; where it has none, the user's events from it on until the first gap of more
    than ``gap_s`` seconds. Events are returned in their original order."""
    if events.num_rows == 0:
        return events
    user, _ = _sorted_codes(events.column("user_id"))
    t = seconds(events.column("ts"))
    order = np.lexsort((t, user))  # by user, then time; ties keep the lake's order
    u, ts = user[order], t[order]
    start = np.r_[True, u[1:] != u[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(u)), 0))  # each row's user's first
    if "session_id" in events.column_names:
        sid, _ = _sorted_codes(events.column("session_id").fill_null(""))
        has = pc.is_valid(events.column("session_id")).to_numpy(zero_copy_only=False)
        sid, has = sid[order], has[order]
    else:
        sid, has = np.zeros(len(u), np.int64), np.zeros(len(u), bool)
    by_id = has[first] & has & (sid == sid[first])
    # gap rule: a row is in the first session while no gap > gap_s separates it from the first
    breaks = np.cumsum(~start & (np.diff(ts, prepend=ts[0]) > gap_s))
    by_gap = ~has[first] & (breaks == breaks[first])
    keep = np.zeros(len(u), bool)
    keep[order] = by_id | by_gap
    return events.filter(pa.array(keep))


def build_train(events: pa.Table, catalog: Catalog, users: pa.Table | None = None,
                cutoff: dt.datetime | None = None,
                weights: SignalWeights | None = None) -> TrainData:
    """Fold training events into the interaction matrix (rows: users with a folded interaction,
    sorted; columns: catalog order)."""
    inter = fold_interactions(events, catalog.table, weights)
    matrix = InteractionMatrix.from_interactions(inter, catalog.ids)
    return TrainData(matrix=matrix, events=events, catalog=catalog, users=users, cutoff=cutoff)


def _relevance(inter: pa.Table, matrix: InteractionMatrix, seen: sp.csr_matrix
               ) -> tuple[np.ndarray, sp.csr_matrix, int]:
    """Relevant (user, title) rows of ``inter`` -> (test_rows, CSR over those rows, cold users)."""
    rows = index_of(inter.column("user_id"), pa.array(list(matrix.user_ids), pa.string()))
    cols = index_of(inter.column("title_id"), pa.array(list(matrix.title_ids), pa.string()))
    cold = len(np.unique(inter.column("user_id").to_numpy(zero_copy_only=False)[(rows < 0)]))
    keep = (rows >= 0) & (cols >= 0)
    rows, cols = rows[keep], cols[keep]
    if len(rows):
        # a title the user already had in training can never be recommended: not a test target
        already = np.asarray(seen[rows, cols]).ravel() > 0
        rows, cols = rows[~already], cols[~already]
    test_rows = np.unique(rows)
    local = np.searchsorted(test_rows, rows)
    rel = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (local, cols)),
                        shape=(len(test_rows), matrix.shape[1]))
    rel.sum_duplicates()
    rel.data[:] = 1.0
    return test_rows, rel, cold


def seen_matrix(matrix: InteractionMatrix) -> sp.csr_matrix:
    """Every title a user interacted with in training (positives and exclusions)."""
    m = (matrix.positives != 0).astype(np.float32)
    m = m.maximum(matrix.negatives).maximum(matrix.finished)
    return sp.csr_matrix(m)


def make_split(events: pa.Table, catalog: Catalog, protocol: str, seed: int = 42,
               users: pa.Table | None = None, weights: SignalWeights | None = None,
               test_window: str = "all") -> Split:
    """Split the lake's events by ``protocol`` and build both sides. ``test_window``
    (temporal only): ``"all"`` scores against the whole test period, ``"session"`` against each
    user's first test session (``first_session_events``); the training side is the same.

    Raises:
        InvalidInput: unknown protocol or test window, or nothing left to test on.
    """
    weights = weights or SignalWeights()
    bad = test_window_error(protocol, test_window)
    if bad is not None:
        raise InvalidInput(bad)
    if protocol == "msr-stratified":
        train_ev, test_ev = stratified_split_events(events, TRAIN_RATIO, seed)
        cutoff = None
    elif protocol == "temporal":
        train_ev, test_ev, cutoff = temporal_split_events(events, TEMPORAL_QUANTILE)
    else:
        raise InvalidInput(FieldError("protocol", f"must be one of {', '.join(PROTOCOLS)}, "
                                                  f"got {protocol!r}"))
    train = build_train(train_ev, catalog, users, cutoff, weights)
    if protocol == "temporal":
        known = pa.array(list(train.matrix.user_ids), pa.string())
        test_ev = test_ev.filter(pc.is_in(test_ev.column("user_id"), value_set=known))
        if test_window == "session":
            test_ev = first_session_events(test_ev)
    inter = fold_interactions(test_ev, catalog.table, weights)
    negative = inter.column("negative")
    if protocol == "msr-stratified":
        positive = pc.invert(negative)
    else:
        positive = pc.and_(pc.invert(negative), pc.or_(
            pc.or_(pc.greater_equal(inter.column("rating").fill_null(0), POSITIVE_RATING),
                   pc.greater_equal(inter.column("best_completion"), POSITIVE_COMPLETION)),
            pc.or_(pc.greater(inter.column("thumbs"), 0), pc.greater(inter.column("rewatches"), 0))))
    inter = inter.filter(positive)
    test_rows, rel, cold = _relevance(inter, train.matrix, seen_matrix(train.matrix))
    if len(test_rows) == 0:
        raise InvalidInput(FieldError("data", f"the {protocol} split leaves no test user with a "
                                              "relevant title; the lake holds too little data"))
    request = None
    if protocol == "temporal":
        ids = train.matrix.user_ids[test_rows]
        request = first_event_context(test_ev, ids, table_regions(users, ids))
    return Split(protocol, seed, train, test_ev, test_rows, rel, cold, request, test_window)


def holdout_rows(x: sp.csr_matrix, ratio: float = TRAIN_RATIO, seed: int = 0
                 ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each row's nonzeros ``ratio`` / rest at random (the stratified protocol on a matrix),
    for tuning hyper-parameters on training data only. Returns (fit, validation)."""
    x = sp.csr_matrix(x)
    counts = np.diff(x.indptr)
    rng = np.random.default_rng(seed)
    row_of = np.repeat(np.arange(x.shape[0]), counts)
    order = np.lexsort((rng.random(x.nnz), row_of))
    rank = np.empty(x.nnz, dtype=np.int64)
    rank[order] = np.arange(x.nnz) - np.repeat(x.indptr[:-1], counts)
    keep = rank < np.repeat(np.rint(ratio * counts).astype(np.int64), counts)
    coo = x.tocoo()
    fit = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=x.shape)
    val = sp.csr_matrix((coo.data[~keep], (coo.row[~keep], coo.col[~keep])), shape=x.shape)
    return fit, val
