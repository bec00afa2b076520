"""The user x title confidence matrix built from folded interactions.

Rows are users (``user_ids``), columns are titles in catalog order (``title_ids``). ``positives``
holds the positive weights (the ALS confidence); ``negatives`` marks titles a user rejected
(negative weight or thumbs down), remembered as exclusions; ``finished`` marks titles finished
and not rewatched (excluded from the page unless the user is a rewatcher).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp


def index_of(values: pa.Array | pa.ChunkedArray, ids: list[str] | pa.Array) -> np.ndarray:
    """Position of each value in ``ids`` (-1 when absent), vectorised."""
    idx = pc.index_in(values, value_set=pa.array(ids, pa.string()) if isinstance(ids, list) else ids)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class InteractionMatrix:
    user_ids: np.ndarray  # object array of str, row order
    title_ids: np.ndarray  # object array of str, column order (catalog order)
    positives: sp.csr_matrix  # float32 confidence weights > 0
    negatives: sp.csr_matrix  # 1.0 where the user rejected the title
    finished: sp.csr_matrix  # 1.0 where finished and not rewatched

    @property
    def shape(self) -> tuple[int, int]:
        return self.positives.shape

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    def exclusions(self, include_finished: bool = True) -> sp.csr_matrix:
        """Titles not to recommend: rejected, plus finished when asked."""
        m = self.negatives.copy()
        if include_finished:
            m = m.maximum(self.finished)
        return m.tocsr()

    @classmethod
    def from_interactions(cls, interactions: pa.Table, title_ids: list[str] | np.ndarray,
                          user_ids: list[str] | np.ndarray | None = None) -> "InteractionMatrix":
        """Build from ``fold_interactions`` output. Unknown titles are dropped; users not in
        ``user_ids`` (when given) are dropped, otherwise users are taken in sorted order."""
        title_ids = np.asarray(title_ids, dtype=object)
        if user_ids is None:
            user_ids = np.asarray(sorted(set(interactions.column("user_id").to_pylist())), dtype=object)
        else:
            user_ids = np.asarray(user_ids, dtype=object)
        rows = index_of(interactions.column("user_id"), pa.array(list(user_ids), pa.string()))
        cols = index_of(interactions.column("title_id"), pa.array(list(title_ids), pa.string()))
        keep = (rows >= 0) & (cols >= 0)
        rows, cols = rows[keep], cols[keep]
        weight = interactions.column("weight").to_numpy(zero_copy_only=False)[keep].astype(np.float32)
        negative = interactions.column("negative").to_numpy(zero_copy_only=False)[keep].astype(bool)
        finished = interactions.column("finished").to_numpy(zero_copy_only=False)[keep].astype(bool)
        shape = (len(user_ids), len(title_ids))

        def mat(mask, data):
            return sp.csr_matrix((data[mask], (rows[mask], cols[mask])), shape=shape, dtype=np.float32)

        pos = (~negative) & (weight > 0)
        ones = np.ones(len(rows), dtype=np.float32)
        return cls(user_ids, title_ids, mat(pos, weight), mat(negative, ones), mat(finished, ones))


def seconds(col) -> np.ndarray:
    """Epoch seconds (float64) of a timestamp column of any unit (the lake writes ms, DuckDB us)."""
    us = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
    return us.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
