"""Signal weighting: fold a user's events on a title into one interaction and a signed weight.

One row per (user, title) with: seconds watched, best completion fraction, plays, completions,
rewatches (plays after the first completion), the latest thumb, watchlist-without-play, skip
count, the latest rating and the last time. From it a signed confidence weight
(``SignalWeights`` in config.py, documented in docs/signals.md):

* completion >= ``complete_threshold`` (90 %): strong positive ``complete``;
* drop-off: a movie/documentary left before ``dropoff_seconds`` (20 min), or a series episode
  under ``dropoff_series_fraction`` (25 %): negative ``dropoff``;
* otherwise a partial watch: ``partial`` x completion fraction;
* each rewatch (a play after finishing: a film completed, a series with every episode
  completed; capped): ``rewatch``, among the strongest positives;
* a series binge: ``episode_bonus`` for each completed episode past the first (capped);
* the latest thumb: ``thumbs_up`` / ``thumbs_down`` (sparse but strong);
* a watchlist add (not removed) with no playback: weak positive ``watchlist_only``;
* skip intro / recap: familiarity, ``skip_familiarity`` each up to ``skip_cap``;
* an imported rating: ``rating_scale`` x rating, or ``rating_negative`` below a threshold.

A negative weight (or a thumbs down) makes the title an exclusion, never a positive. A title is
``finished`` when completed (a series: every episode completed) or rated (an imported rating is
of something seen), and not rewatched.

The fold is one DuckDB query over the Arrow events, so it scales to the 10 M-event batch world.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reelrec.config import SignalWeights

INTERACTION_COLUMNS = (
    "user_id", "title_id", "seconds_watched", "best_completion", "max_position_s", "plays",
    "completes", "rewatches", "thumbs", "watchlist_no_play", "skips", "rating", "last_ts",
    "weight", "finished", "negative",
)

_FOLD_SQL = """
WITH e AS (
    SELECT ev.user_id, ev.title_id, ev.type, ev.ts, ev.position_s, ev.watched_s, ev.rating,
           t.kind, t.runtime_s, t.episodes
    FROM ev JOIN titles t USING (title_id)
    WHERE ev.title_id IS NOT NULL AND ev.type <> 'impression'
), r AS (
    SELECT *,
        count(*) FILTER (WHERE type = 'complete')
            OVER (PARTITION BY user_id, title_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS completes_so_far
    FROM e
), w AS (
    -- finished: a film at its first completion; a series once every episode is completed
    SELECT *,
        min(ts) FILTER (WHERE
            (kind = 'series' AND completes_so_far >= greatest(coalesce(episodes, 1), 1))
            OR (kind <> 'series' AND (type = 'complete'
                OR (type = 'progress' AND runtime_s > 0 AND position_s >= $thr * runtime_s))))
            OVER (PARTITION BY user_id, title_id) AS first_complete_ts
    FROM r
)
SELECT
    user_id, title_id,
    any_value(kind) AS kind,
    any_value(episodes) AS episodes,
    coalesce(sum(watched_s) FILTER (WHERE type = 'progress'), 0)::DOUBLE AS seconds_watched,
    coalesce(max(CASE WHEN type = 'complete' THEN 1.0
                      WHEN type = 'progress' AND runtime_s > 0 THEN least(position_s / runtime_s, 1.0)
                 END), 0)::DOUBLE AS best_completion,
    coalesce(max(position_s) FILTER (WHERE type = 'progress'), 0)::DOUBLE AS max_position_s,
    count(*) FILTER (WHERE type = 'play_start')::INTEGER AS plays,
    count(*) FILTER (WHERE type = 'progress')::INTEGER AS progress_events,
    count(*) FILTER (WHERE type = 'complete')::INTEGER AS completes,
    count(*) FILTER (WHERE type = 'play_start' AND ts > first_complete_ts)::INTEGER AS rewatches,
    coalesce(arg_max(CASE WHEN type = 'thumbs_up' THEN 1 ELSE -1 END, ts)
             FILTER (WHERE type IN ('thumbs_up', 'thumbs_down')), 0)::TINYINT AS thumbs,
    coalesce(arg_max(type, ts) FILTER (WHERE type IN ('watchlist_add', 'watchlist_remove'))
             = 'watchlist_add', false) AS on_watchlist,
    count(*) FILTER (WHERE type IN ('skip_intro', 'skip_recap'))::INTEGER AS skips,
    arg_max(rating, ts) FILTER (WHERE type = 'rating')::DOUBLE AS rating,
    max(ts) AS last_ts
FROM w
GROUP BY user_id, title_id
"""


def fetch_arrow(result) -> pa.Table:
    """A DuckDB relation as an Arrow table (the method's name changed across DuckDB releases)."""
    if hasattr(result, "to_arrow_table"):
        return result.to_arrow_table()
    return result.arrow()


def fold_interactions(events: pa.Table, titles: pa.Table,
                      weights: SignalWeights | None = None,
                      con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """Fold events (lake schema) into one interaction row per (user, title) with its weight.

    ``titles`` needs ``title_id, kind, runtime_min, episodes, episode_runtime_min`` (the catalog
    table). Events on titles missing from it are ignored. ``con``: a DuckDB connection to reuse
    (opening one costs ~50 ms, which the speed layer would pay on every micro-batch); it must
    not be used by another thread meanwhile.
    """
    weights = weights or SignalWeights()
    kinds = titles.column("kind")
    runtime_min = pc.if_else(pc.equal(kinds, "series"), titles.column("episode_runtime_min"),
                             titles.column("runtime_min"))
    t = pa.table({
        "title_id": titles.column("title_id"),
        "kind": kinds,
        "runtime_s": pc.multiply(pc.cast(runtime_min, pa.float64()), 60.0),
        "episodes": titles.column("episodes"),
    })
    needed = ["user_id", "title_id", "type", "ts", "position_s", "watched_s", "rating"]
    ev = events.select(needed)
    own = con is None
    con = duckdb.connect() if own else con
    try:
        con.register("ev", ev)
        con.register("titles", t)
        folded = fetch_arrow(con.sql(
            _FOLD_SQL.replace("$thr", repr(float(weights.complete_threshold)))))
    finally:
        if own:
            con.close()
        else:
            con.unregister("ev")
            con.unregister("titles")
    return _weigh(folded, weights)


def _np(table: pa.Table, name: str, fill=0) -> np.ndarray:
    return table.column(name).fill_null(fill).to_numpy(zero_copy_only=False)


def _weigh(f: pa.Table, w: SignalWeights) -> pa.Table:
    series = _np(f, "kind", "") == "series"
    completion = _np(f, "best_completion").astype(np.float64)
    max_pos = _np(f, "max_position_s").astype(np.float64)
    plays = _np(f, "plays")
    progress = _np(f, "progress_events")
    completes = _np(f, "completes")
    rewatches = _np(f, "rewatches")
    thumbs = _np(f, "thumbs")
    skips = _np(f, "skips")
    on_watchlist = _np(f, "on_watchlist", False).astype(bool)
    rating = f.column("rating").to_numpy(zero_copy_only=False).astype(np.float64)  # NaN = none
    episodes = _np(f, "episodes", 1)

    completed = completion >= w.complete_threshold
    watched = (progress > 0) | (completes > 0)
    dropoff = watched & ~completed & np.where(
        series, completion < w.dropoff_series_fraction, max_pos < w.dropoff_seconds)
    partial = watched & ~completed & ~dropoff
    bare_play = (plays > 0) & ~watched

    weight = np.zeros(f.num_rows, dtype=np.float64)
    weight += np.where(completed, w.complete, 0.0)
    weight += np.where(dropoff, w.dropoff, 0.0)
    weight += np.where(partial, w.partial * completion, 0.0)
    weight += np.where(bare_play, w.play_start, 0.0)
    weight += w.rewatch * np.minimum(rewatches, w.rewatch_cap)
    # a series binge: every finished episode past the first adds a little, capped
    weight += np.where(series, w.episode_bonus * np.clip(completes - 1, 0, w.episode_bonus_cap), 0.0)
    weight += np.where(thumbs > 0, w.thumbs_up, 0.0) + np.where(thumbs < 0, w.thumbs_down, 0.0)
    weight += np.where(on_watchlist & (plays == 0) & ~watched, w.watchlist_only, 0.0)
    weight += np.minimum(w.skip_familiarity * skips, w.skip_cap)
    has_rating = ~np.isnan(rating)
    low = has_rating & (rating < w.rating_negative_below)
    weight += np.where(has_rating & ~low, w.rating_scale * np.nan_to_num(rating), 0.0)
    weight += np.where(low, w.rating_negative, 0.0)

    negative = (weight < 0) | (thumbs < 0)
    # an imported rating says the user saw the title (MovieLens rates what was watched): finished
    finished = (np.where(series, completes >= np.maximum(episodes, 1), completed) | has_rating) & (rewatches == 0)
    out = f.select(["user_id", "title_id", "seconds_watched", "best_completion", "max_position_s",
                    "plays", "completes", "rewatches", "thumbs"])
    out = out.append_column("watchlist_no_play", pa.array(on_watchlist & (plays == 0) & ~watched))
    out = out.append_column("skips", f.column("skips"))
    out = out.append_column("rating", f.column("rating"))
    out = out.append_column("last_ts", f.column("last_ts"))
    out = out.append_column("weight", pa.array(weight.astype(np.float32)))
    out = out.append_column("finished", pa.array(finished.astype(bool)))
    out = out.append_column("negative", pa.array(negative.astype(bool)))
    return out
