"""Ground truth of a synthetic world: every user's true preference for every title.

The simulator decides plays, completions and thumbs from ``Truth.preference``; evaluation reads
the same model back (``load_truth(data_dir)``) to compute true relevance and true recall, so the
two can never disagree. Saved beside the lake under ``<data_dir>/sim/``:

* ``truth.npz``: user and title ids with their hidden arrays (genre taste, kind shares, latent
  factors, title genre weights, quality, availability, time added);
* ``world.json``: the configuration, window, vocabulary and the model's constants.

The true preference of user u for title t (a log-scale score, about N(0, 1.5) over pairs) is::

    log(S_t * sum_g taste[u, g] * w[t, g] + EPS)   genre match (S_t = genres in t's domain)
  + log(3 * kind_share[u, kind(t)])               kind lean (70/15/15 for most users)
  + factors[u] . factors[t]                        idiosyncratic taste
  + quality[t]                                     everyone likes good titles a little more
  + HOME_BONUS * [origin(t) == region(u)]          home-grown titles

User rows follow ``users/users.parquet`` and title columns the catalog's order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reelrec.errors import InvalidInput, NotFound
from reelrec.sim import vocab as V

EPS = 0.05
HOME_BONUS = 0.3
TRUTH_FILE = "truth.npz"
WORLD_FILE = "world.json"


def truth_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "sim"


@dataclass
class Truth:
    """Hidden arrays of a world and the true-preference model over them."""

    user_ids: np.ndarray  # str
    user_region: np.ndarray  # int8 index into REGIONS
    taste: np.ndarray  # (N, G) float32
    kind_share: np.ndarray  # (N, 3) float32
    user_factors: np.ndarray  # (N, k) float32
    title_ids: np.ndarray  # str
    title_kind: np.ndarray  # int8 index into KINDS
    title_origin: np.ndarray  # int8
    genre_idx: np.ndarray  # (T, 3) int16, -1 padded
    genre_w: np.ndarray  # (T, 3) float32
    title_factors: np.ndarray  # (T, k) float32
    quality: np.ndarray  # (T,) float32
    avail: np.ndarray  # (T, R) bool
    added_s: np.ndarray  # (T,) int64 epoch seconds
    start_s: int = 0
    end_s: int = 0

    # --- the model -------------------------------------------------------------------------
    @property
    def genre_scale(self) -> np.ndarray:
        """S_t: genres in the title's domain (fiction or documentary)."""
        return np.where(self.title_kind == V.DOC, V.DOC_MASK.sum(), V.FICTION_MASK.sum()
                        ).astype(np.float32)

    def preference(self, users: np.ndarray, titles: np.ndarray) -> np.ndarray:
        """True preference of each (users[i], titles[i]) pair (row and column indices)."""
        users = np.asarray(users, dtype=np.int64)
        titles = np.asarray(titles, dtype=np.int64)
        gi = self.genre_idx[titles].astype(np.int64)
        gw = self.genre_w[titles]
        tu = np.take_along_axis(self.taste[users], np.maximum(gi, 0), axis=1)
        match = (tu * gw).sum(axis=1) * self.genre_scale[titles]
        kind = self.kind_share[users, self.title_kind[titles]]
        lat = np.einsum("ij,ij->i", self.user_factors[users], self.title_factors[titles])
        home = self.title_origin[titles] == self.user_region[users]
        return (np.log(match + EPS) + np.log(3.0 * kind) + lat + self.quality[titles]
                + HOME_BONUS * home).astype(np.float32)

    def dense_genre_weights(self) -> np.ndarray:
        """(T, G) float32: each title's genre weights times its domain scale."""
        w = np.zeros((len(self.title_ids), V.G), dtype=np.float32)
        rows = np.repeat(np.arange(len(self.title_ids)), 3)
        gi = self.genre_idx.ravel()
        ok = gi >= 0
        np.add.at(w, (rows[ok], gi[ok]), (self.genre_w * self.genre_scale[:, None]).ravel()[ok])
        return w

    def scores(self, users: np.ndarray, gw: np.ndarray | None = None) -> np.ndarray:
        """(len(users), T) float32 true preference of the given user rows for every title.

        Memory is len(users) x T floats: call it on blocks of users for large worlds.
        ``gw`` may pass a cached ``dense_genre_weights()``.
        """
        users = np.asarray(users, dtype=np.int64)
        gw = self.dense_genre_weights() if gw is None else gw
        match = self.taste[users] @ gw.T
        s = np.log(match + EPS)
        s += np.log(3.0 * self.kind_share[users])[:, self.title_kind]
        s += self.user_factors[users] @ self.title_factors.T
        s += self.quality[None, :]
        s += HOME_BONUS * (self.user_region[users][:, None] == self.title_origin[None, :])
        return s.astype(np.float32, copy=False)

    def available(self, users: np.ndarray, at_s: int | None = None) -> np.ndarray:
        """(len(users), T) bool: the title is shown in the user's region and added by ``at_s``
        (default: the end of the simulated window)."""
        users = np.asarray(users, dtype=np.int64)
        at_s = self.end_s if at_s is None else at_s
        return self.avail[:, self.user_region[users]].T & (self.added_s <= at_s)[None, :]

    def top_k(self, users: np.ndarray, k: int, exclude: np.ndarray | None = None,
              at_s: int | None = None) -> np.ndarray:
        """(len(users), k) title columns with the highest true preference among the titles
        available to each user; ``exclude`` is a (len(users), T) bool mask of titles to skip
        (e.g. those seen in training). Best first."""
        if k <= 0:
            raise InvalidInput("must be positive", field="k")
        s = self.scores(users)
        s[~self.available(users, at_s)] = -np.inf
        if exclude is not None:
            s[exclude] = -np.inf
        k = min(k, s.shape[1])
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)

    # --- ids ---------------------------------------------------------------------------------
    def user_rows(self, user_ids) -> np.ndarray:
        """Row index of each user id. Raises NotFound for an unknown id."""
        return _lookup(self.user_ids, user_ids, "user")

    def title_cols(self, title_ids) -> np.ndarray:
        """Column index of each title id. Raises NotFound for an unknown id."""
        return _lookup(self.title_ids, title_ids, "title")

    # --- persistence -------------------------------------------------------------------------
    def save(self, data_dir: Path | str, meta: dict) -> Path:
        d = truth_dir(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        tmp = d / (TRUTH_FILE + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(d / TRUTH_FILE)
        meta = dict(meta, start_s=self.start_s, end_s=self.end_s, genres=list(V.GENRES),
                    kinds=list(V.KINDS), regions=list(V.REGIONS), eps=EPS, home_bonus=HOME_BONUS)
        (d / WORLD_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return d


def _lookup(ids: np.ndarray, wanted, what: str) -> np.ndarray:
    wanted = np.atleast_1d(np.asarray(wanted, dtype=ids.dtype if len(ids) else str))
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], wanted)
    pos = np.minimum(pos, len(ids) - 1)
    rows = order[pos]
    bad = ids[rows] != wanted
    if bad.any():
        first = str(wanted[np.argmax(bad)])
        raise NotFound(f"unknown {what} {first!r} in the world's ground truth")
    return rows


def load_truth(data_dir: Path | str) -> Truth:
    """Read ``<data_dir>/sim/truth.npz`` and ``world.json``.

    Raises:
        NotFound: the data directory holds no simulated world.
    """
    d = truth_dir(data_dir)
    path = d / TRUTH_FILE
    if not path.exists():
        raise NotFound(f"no ground truth at {path}; only `reelrec simulate` writes one")
    meta = json.loads((d / WORLD_FILE).read_text())
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return Truth(**arrays, start_s=int(meta["start_s"]), end_s=int(meta["end_s"]))


def load_world_meta(data_dir: Path | str) -> dict:
    """The configuration and constants a world was simulated with (``world.json``)."""
    path = truth_dir(data_dir) / WORLD_FILE
    if not path.exists():
        raise NotFound(f"no simulated world at {path}")
    return json.loads(path.read_text())
