"""``reelrec-homepage``: the composed "Top picks for you" shelf, scored by ``reelrec evaluate``.

Where ``reelrec-ranker`` measures stages 1 and 2 of DESIGN.md's pipeline (candidates, ranker),
this model measures what a person sees after step 3 (composition): the same fitted pipeline,
wrapped in the serving object (``reelrec.homepage.ServingModel``) and composed exactly as
``reelrec precompute`` composes a page: profiles from the folded training events
(``profiles_from_interactions``), the pipeline's ranked candidates (``candidates_for_rows``),
``ServingModel.compose`` with a Thompson bandit and a seeded generator. The list it returns is the
top-picks shelf in page order, explore and novel slots wherever composition placed them, so the
metrics price the kind mix, the genre cap and the exploration.

The evaluation contract (``reelrec.recommender``) forbids returning a title the user interacted
with in training. Serving excludes only thumbs down, finished titles (completed or rated, unless
the user rewatches) and Continue watching; a title watched without finishing, or a positive of a
rewatcher, can come back through the popular backfill composition adds for a missing kind or an
explore cluster. So the evaluator hands
composition every training title of the user as an exclusion (rule 1 of the precedence) before
composing, and counts in ``params["serving_would_show_seen"]`` how many top-picks items the
unmodified serving profile would have placed on a training title, measured on a sample of users.

The top-picks shelf holds ``ComposeConfig.page_size`` (20) titles; a longer ``k`` is padded with
-1, so ``recall@100`` of this model is its recall over the 20.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.compute as pc

from reelrec.compose.config import ComposeConfig
from reelrec.compose.toppicks import SLOT_KINDS
from reelrec.config import SignalWeights
from reelrec.errors import InvalidInput
from reelrec.eval.splits import seen_matrix
from reelrec.log import get_logger
from reelrec.recommender import TrainData

log = get_logger(__name__)

SEEN_SAMPLE = 200  # users composed a second time, as serving would, to count training titles shown


class HomepageRecommender:
    """The composed top picks behind the ``Recommender`` protocol."""

    name = "reelrec-homepage"

    def __init__(self, seed: int = 0, config=None, compose: ComposeConfig | None = None,
                 weights: SignalWeights | None = None, seen_sample: int = SEEN_SAMPLE):
        self.seed = seed
        self.config = config
        self.compose_cfg = compose or ComposeConfig()
        self.weights = weights
        self.seen_sample = seen_sample
        self.model = None
        self.params: dict = {}

    def fit(self, data: TrainData) -> "HomepageRecommender":
        from reelrec.batch.pipeline import PipelineConfig, fit_pipeline
        from reelrec.compose.bandit import ThompsonBandit
        from reelrec.compose.features import CatalogFeatures
        from reelrec.domain.signals import fold_interactions
        from reelrec.homepage import ServingModel, profiles_from_interactions

        pipeline, report = fit_pipeline(data, self.config or PipelineConfig())
        # the matrix, the pipeline and the catalog share one title order (catalog order)
        features = CatalogFeatures.from_catalog(
            data.catalog, popularity=np.asarray(pipeline.art.stats.pop, np.float32))
        self.model = ServingModel("evaluation", pipeline, features, self.compose_cfg)
        events = data.events
        interactions = fold_interactions(events, data.catalog.table, self.weights)
        impressions = None
        if "type" in events.column_names and events.num_rows:
            impressions = events.filter(pc.equal(events.column("type"), "impression")) \
                .select(["user_id", "title_id"])
            impressions = impressions.filter(pc.is_valid(impressions.column("title_id")))
        self.profiles = profiles_from_interactions(features, interactions, impressions, data.users)
        self.user_ids = np.asarray(data.matrix.user_ids, dtype=object)
        self.seen = seen_matrix(data.matrix)
        self.bandit = ThompsonBandit(features.cluster_names)
        self.params = {"ranker": {k: report[k] for k in ("als", "ease", "candidates_recall") if k in report},
                       "compose": self.compose_cfg.model_dump()}
        return self

    def _profile(self, row: int):
        """The serving profile of a training row, and the same with every training title excluded."""
        u = str(self.user_ids[row])
        p = self.profiles.get(u)
        seen = self.seen.indices[self.seen.indptr[row]:self.seen.indptr[row + 1]].astype(np.int64)
        strict = replace(p, thumbs_down=np.union1d(np.asarray(p.thumbs_down, np.int64), seen))
        return p, strict, seen

    def recommend(self, users: np.ndarray, k: int) -> np.ndarray:
        """Top picks of each training row in ``users``, in page order, padded with -1 to ``k``."""
        if self.model is None:
            raise InvalidInput("fit() before recommend()", field="model")
        users = np.asarray(users, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        out = np.full((len(users), k), -1, dtype=np.int64)
        n_page = self.compose_cfg.page_size
        slots_at = np.zeros((len(SLOT_KINDS), n_page), np.int64)  # slot kind x page position
        lengths = np.zeros(len(users), np.int64)
        sample = set(np.random.default_rng(self.seed).permutation(len(users))[: self.seen_sample].tolist())
        would_show = checked = exact = 0
        bs = self.model.pipeline.cfg.batch_users
        for lo in range(0, len(users), bs):
            rows = users[lo: lo + bs]
            for j, (row, cands) in enumerate(zip(rows, self.model.candidates_for_rows(rows))):
                i = lo + j
                serving, strict, seen = self._profile(int(row))
                page = self.model.compose(strict, cands, bandit=self.bandit, rng=rng)
                top = page.top_picks
                t = np.asarray(top.titles, np.int64)
                n = min(len(t), k)
                out[i, :n] = t[:n]
                lengths[i] = len(t)
                exact += bool(page.exact)
                s = np.asarray(top.slots, np.int64)[:n_page]
                np.add.at(slots_at, (s, np.arange(len(s))), 1)
                if i in sample:
                    # the page serving would compose (its own generator, so the measured pages
                    # do not depend on the sample)
                    alt = self.model.compose(serving, cands, bandit=self.bandit,
                                             rng=np.random.default_rng(self.seed + i))
                    would_show += int(np.isin(alt.top_picks.titles, seen).sum())
                    checked += 1
        pages = max(len(users), 1)
        self.params.update({
            "pages": int(len(users)),
            "page_length_mean": round(float(lengths.mean()) if len(users) else 0.0, 3),
            "exact_solver_pages": int(exact),
            "slots_per_page": {name: round(float(slots_at[c].sum()) / pages, 3)
                               for c, name in enumerate(SLOT_KINDS)},
            "slots_in_top10": {name: round(float(slots_at[c, :10].sum()) / pages, 3)
                               for c, name in enumerate(SLOT_KINDS)},
            "serving_would_show_seen": {"pages": checked, "items": would_show},
        })
        log.info("homepage pages composed", pages=len(users), exact=exact)
        return out

