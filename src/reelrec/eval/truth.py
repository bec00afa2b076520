"""Ground truth of a simulated world, when the data directory holds one (``<data>/sim/``).

The simulator knows which titles each user truly likes, watched or not. When it is there the
evaluator also scores every model against it (``true_precision@K`` and ``true_recall@K``, over the
titles the user did not touch in training), which measures what held-out behaviour can only
estimate.

Contract with the simulator, first match wins:

1. ``reelrec.sim.truth.relevant_titles(data_dir) -> pyarrow.Table`` with ``user_id, title_id``;
2. a Parquet file ``<data>/sim/ground_truth.parquet`` with ``user_id, title_id`` and optionally a
   boolean ``relevant`` column (rows with ``relevant = false`` are ignored).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reelrec.errors import FieldError, InvalidInput
from reelrec.log import get_logger

log = get_logger(__name__)
TRUTH_FILE = "ground_truth.parquet"


def load_truth(data_dir: Path | str) -> tuple[pa.Table, str] | None:
    """(user_id, title_id) pairs the simulated users truly like, and where they came from;
    None when the data directory is not a simulated world.

    Raises:
        InvalidInput: the ground-truth file lacks ``user_id`` or ``title_id``.
    """
    sim_dir = Path(data_dir) / "sim"
    if not sim_dir.is_dir():
        return None
    try:
        mod = importlib.import_module("reelrec.sim.truth")
    except ImportError:
        mod = None
    fn = getattr(mod, "relevant_titles", None) if mod is not None else None
    if callable(fn):
        table, source = fn(Path(data_dir)), "reelrec.sim.truth.relevant_titles"
    elif (sim_dir / TRUTH_FILE).exists():
        table, source = pq.read_table(sim_dir / TRUTH_FILE), str(sim_dir / TRUTH_FILE)
    else:
        log.warning("simulated world without ground truth", path=str(sim_dir))
        return None
    missing = [c for c in ("user_id", "title_id") if c not in table.column_names]
    if missing:
        raise InvalidInput([FieldError(c, f"missing from the ground truth at {source}") for c in missing])
    if "relevant" in table.column_names:
        table = table.filter(pc.fill_null(table.column("relevant"), False))
    return table.select(["user_id", "title_id"]), source
