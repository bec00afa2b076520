"""Ground truth of a simulated world, when the data directory holds one (``<data>/sim/``).

The simulator knows what each user truly likes, watched or not. When it is there the evaluator
also scores every model against it (``true_precision@K``, ``true_recall@K``, ``true_ndcg@K``,
over titles the user did not touch in training), which measures what held-out behaviour can only
estimate. Two forms, first match wins:

1. the simulator's preference model, ``reelrec.sim.truth.load_truth(data_dir)`` (an object with
   ``user_ids``, ``title_ids`` and ``top_k(user_rows, k, exclude)``): a user's relevant titles are
   the K they truly prefer among those available to them and not touched in training, so
   ``true_recall@K`` is the share of that ideal page the model found;
2. a Parquet file ``<data>/sim/ground_truth.parquet`` of relevant ``user_id, title_id`` pairs
   (optionally a boolean ``relevant`` column).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from reelrec.domain.matrix import index_of
from reelrec.errors import FieldError, InvalidInput, ReelrecError
from reelrec.log import get_logger

log = get_logger(__name__)
TRUTH_FILE = "ground_truth.parquet"
BLOCK_USERS = 2048


@dataclass
class GroundTruth:
    source: str
    pairs: pa.Table | None = None  # explicit relevant (user_id, title_id)
    model: object | None = None  # the simulator's true-preference model


def load_truth(data_dir: Path | str) -> GroundTruth | None:
    """The world's ground truth, or None when the data directory is not a simulated world.

    Raises:
        InvalidInput: the ground-truth file lacks ``user_id`` or ``title_id``.
    """
    sim_dir = Path(data_dir) / "sim"
    if not sim_dir.is_dir():
        return None
    try:
        sim_truth = importlib.import_module("reelrec.sim.truth")
    except ImportError:
        sim_truth = None
    if sim_truth is not None and callable(getattr(sim_truth, "load_truth", None)):
        try:
            return GroundTruth("reelrec.sim.truth.load_truth", model=sim_truth.load_truth(data_dir))
        except ReelrecError as exc:
            log.info("no simulator truth model", reason=str(exc))
    path = sim_dir / TRUTH_FILE
    if not path.exists():
        log.warning("simulated world without ground truth", path=str(sim_dir))
        return None
    table = pq.read_table(path)
    missing = [c for c in ("user_id", "title_id") if c not in table.column_names]
    if missing:
        raise InvalidInput([FieldError(c, f"missing from the ground truth at {path}") for c in missing])
    if "relevant" in table.column_names:
        table = table.filter(pc.fill_null(table.column("relevant"), False))
    return GroundTruth(str(path), pairs=table.select(["user_id", "title_id"]))


def relevance(gt: GroundTruth, user_ids: np.ndarray, title_ids: np.ndarray, seen: sp.csr_matrix,
              k: int) -> sp.csr_matrix:
    """Binary CSR (len(user_ids) x len(title_ids)) of truly relevant titles not in ``seen``."""
    n_users, n_titles = len(user_ids), len(title_ids)
    if gt.model is not None:
        return _from_model(gt.model, user_ids, title_ids, seen, k)
    rows = index_of(gt.pairs.column("user_id"), pa.array(list(user_ids), pa.string()))
    cols = index_of(gt.pairs.column("title_id"), pa.array(list(title_ids), pa.string()))
    keep = (rows >= 0) & (cols >= 0)
    rel = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
                        shape=(n_users, n_titles))
    rel.sum_duplicates()
    rel.data[:] = 1.0
    rel = rel - rel.multiply(seen)
    rel.eliminate_zeros()
    return sp.csr_matrix(rel)


def _from_model(model, user_ids: np.ndarray, title_ids: np.ndarray, seen: sp.csr_matrix,
                k: int) -> sp.csr_matrix:
    t_ids = np.asarray(model.title_ids).astype(str)
    u_ids = np.asarray(model.user_ids).astype(str)
    # catalog column -> truth column; titles the simulator does not know cannot be relevant
    tcol = index_of(pa.array(list(title_ids), pa.string()), pa.array(list(t_ids), pa.string()))
    urow = index_of(pa.array(list(user_ids), pa.string()), pa.array(list(u_ids), pa.string()))
    back = np.full(len(t_ids), -1, dtype=np.int64)
    back[tcol[tcol >= 0]] = np.flatnonzero(tcol >= 0)
    rows, cols = [], []
    known = np.flatnonzero(urow >= 0)
    for s in range(0, len(known), BLOCK_USERS):
        local = known[s:s + BLOCK_USERS]
        exclude = np.zeros((len(local), len(t_ids)), dtype=bool)
        r, c = seen[local].nonzero()
        ok = tcol[c] >= 0
        exclude[r[ok], tcol[c[ok]]] = True
        exclude[:, back < 0] = True  # only titles the evaluated catalog holds
        top = back[np.asarray(model.top_k(urow[local], k, exclude=exclude))]
        rr = np.repeat(local, top.shape[1])
        keep = top.ravel() >= 0
        rows.append(rr[keep])
        cols.append(top.ravel()[keep])
    rows = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                         shape=(len(user_ids), len(title_ids)))
