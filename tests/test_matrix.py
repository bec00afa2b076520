import pyarrow as pa

from reelrec.domain.events import events_to_table, parse_event
from reelrec.domain.matrix import InteractionMatrix
from reelrec.domain.signals import fold_interactions


def test_matrix_separates_positives_negatives_and_finished(small_catalog):
    specs = [("a", "m1", "complete"), ("b", "m2", "thumbs_down"), ("b", "d1", "watchlist_add"),
             ("c", "zz", "play_start")]
    evs = [parse_event({"user_id": u, "title_id": t, "type": ty, "ts": "2026-10-01T00:00:00Z"})
           for u, t, ty in specs]
    inter = fold_interactions(events_to_table(evs), small_catalog.table)
    m = InteractionMatrix.from_interactions(inter, small_catalog.ids)
    assert list(m.user_ids) == ["a", "b"]  # c only touched an unknown title
    assert m.shape == (2, 4)
    assert m.positives[0, 0] == 4.0 and m.positives[1, 3] == 0.5
    assert m.negatives[1, 1] == 1.0 and m.positives[1, 1] == 0
    assert m.finished[0, 0] == 1.0
    assert m.exclusions().nnz == 2 and m.exclusions(include_finished=False).nnz == 1


def test_given_user_order_is_kept_and_strangers_dropped(small_catalog):
    inter = pa.table({"user_id": ["x", "y"], "title_id": ["m1", "m2"], "weight": [1.0, 2.0],
                      "negative": [False, False], "finished": [False, False]})
    m = InteractionMatrix.from_interactions(inter, small_catalog.ids, user_ids=["y", "q"])
    assert list(m.user_ids) == ["y", "q"]
    assert m.positives.toarray()[0, 1] == 2.0 and m.positives[1].nnz == 0
