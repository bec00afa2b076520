"""More item-to-item sources of recall, from other model families than ALS, EASE and
co-visitation, for the ranker to combine (batch layer).

* *RP3beta* (Paudel et al. 2016; the tuned form of Dacrema et al. 2019): a three-step random
  walk user -> title -> user -> title on the bipartite graph of positives, each transition
  probability raised to ``alpha``, the arrival title's score divided by its popularity to the
  power ``beta`` (so the walk does not end on the most popular titles), rows pruned to the
  ``top`` strongest neighbours.
* *item-kNN*: cosine similarity of titles' user sets, shrunk (``shrink`` pseudo-users in the
  denominator) and pruned to the ``top`` nearest neighbours.

Both are sparse titles x titles matrices W; a user's scores are x @ W over their binary
positives, one sparse product for a batch (``reelrec.recall.candidates.dense_scores``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from reelrec.recall.covisit import prune_rows

ITEM_ITEM = ("rp3beta", "itemknn")


def _binary(positives: sp.spmatrix) -> sp.csr_matrix:
    x = sp.csr_matrix(positives, dtype=np.float64)
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


def rp3beta(positives: sp.spmatrix, alpha: float = 1.0, beta: float = 0.5, top: int = 100) -> sp.csr_matrix:
    """The RP3beta title x title weights (float32, sparse, zero diagonal, rows pruned to ``top``)."""
    x = _binary(positives)
    ui = sp.csr_matrix(sp.diags(1.0 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)) @ x)
    xt = sp.csr_matrix(x.T)
    iu = sp.csr_matrix(sp.diags(1.0 / np.maximum(np.asarray(xt.sum(axis=1)).ravel(), 1.0)) @ xt)
    if alpha != 1.0:
        ui.data **= alpha
        iu.data **= alpha
    w = sp.csr_matrix(iu @ ui)
    pop = np.asarray(x.sum(axis=0)).ravel()
    w = sp.csr_matrix(w @ sp.diags(1.0 / np.power(np.maximum(pop, 1.0), beta)))
    w.setdiag(0.0)
    w.eliminate_zeros()
    return prune_rows(w, top).astype(np.float32)


def item_knn(positives: sp.spmatrix, top: int = 100, shrink: float = 10.0) -> sp.csr_matrix:
    """Cosine title x title similarity of user sets (float32, sparse, zero diagonal, rows pruned)."""
    x = _binary(positives)
    g = sp.csr_matrix(x.T @ x)
    norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    g = g.tocoo()
    data = g.data / (norm[g.row] * norm[g.col] + shrink)
    w = sp.csr_matrix((data, (g.row, g.col)), shape=g.shape)
    w.setdiag(0.0)
    w.eliminate_zeros()
    return prune_rows(w, top).astype(np.float32)


def build(name: str, positives: sp.spmatrix, params: dict) -> sp.csr_matrix:
    """The weights of source ``name`` (one of ``ITEM_ITEM``) with ``params``.

    Raises:
        KeyError: an unknown source name.
    """
    return {"rp3beta": rp3beta, "itemknn": item_knn}[name](positives, **params)
