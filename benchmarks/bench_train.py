"""Batch-layer benchmark: training at 100 K users x 20 K titles, ranker throughput, ANN recall.

    python benchmarks/bench_train.py            # full: 100 K users x 20 K titles, ~10 M events
    python benchmarks/bench_train.py --quick    # smoke test (CI): 2 K users x 1 K titles
    python benchmarks/bench_train.py --ann-only --ann-model DATA_OR_VERSION_DIR   # ANN only, and on
                                                # a trained model version's own vectors

Reports (and with --markdown FILE appends a table for docs/benchmarks.md):
* wall time and peak RSS after each training stage (fold, matrix, ALS, recall structures,
  ranker features, ranker fit, the serving refit);
* ALS seconds per iteration through reelrec's ``fit_als`` beside the ``implicit`` library's own
  fit on the same matrix (the ratio is our overhead);
* ranker scoring in candidates per second, and whole-pipeline users per second;
* ANN at 100 K titles: recall@100 against exact search (ties counted: a title whose exact score
  reaches the exact 100th is a hit) and CPU per query, for the index as built now (each distinct
  vector once) and as built before the dedupe (one row per title), FAISS and BLAS on one thread;
* with --ann-model, the same on a model version's title vectors, its users as queries, searched
  as the precompute searches them (batches of 256, each region's unavailable titles inside FAISS,
  the user's exclusions after), against a numpy brute force.

The world is synthetic (numpy): users and titles in taste clusters, Zipf popularity inside a
cluster, 70 % of a user's titles from their own cluster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reelrec.batch.pipeline import PipelineConfig, fit_pipeline  # noqa: E402
from reelrec.batch.progress import RichProgress  # noqa: E402
from reelrec.domain.catalog import TITLE_SCHEMA, Catalog  # noqa: E402
from reelrec.domain.events import EVENT_SCHEMA  # noqa: E402
from reelrec.domain.matrix import InteractionMatrix  # noqa: E402
from reelrec.domain.signals import fold_interactions  # noqa: E402
from reelrec.domain.users import USER_SCHEMA  # noqa: E402
from reelrec.rank.ranker import RankerParams  # noqa: E402
from reelrec.recall.als import ALSParams, fit_als  # noqa: E402
from reelrec.recall.als import topk_excluding  # noqa: E402
from reelrec.recall.ann import ANNConfig, ANNIndex, recall_with_ties  # noqa: E402
from reelrec.recommender import TrainData  # noqa: E402

UTC = dt.timezone.utc
GENRES = ["drama", "comedy", "thriller", "action", "romance", "documentary", "crime", "family",
          "scifi", "horror", "animation", "fantasy"]
REGIONS = ["US", "GB", "IN", "BR", "DE"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def world(n_users: int, n_titles: int, per_user: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    clusters = 20
    t_cl = rng.integers(0, clusters, n_titles)
    u_cl = rng.integers(0, clusters, n_users)
    by_cl = [np.flatnonzero(t_cl == c) for c in range(clusters)]
    # Zipf-like popularity inside each cluster and overall
    glob_p = 1.0 / np.arange(1, n_titles + 1) ** 0.8
    glob_p = glob_p[rng.permutation(n_titles)]
    glob_cdf = np.cumsum(glob_p / glob_p.sum())
    n = n_users * per_user
    users = np.repeat(np.arange(n_users), per_user)
    own = rng.random(n) < 0.7
    titles = np.minimum(np.searchsorted(glob_cdf, rng.random(n)), n_titles - 1)
    for c in range(clusters):
        sel = own & (u_cl[users] == c)
        ids = by_cl[c]
        p = glob_p[ids] / glob_p[ids].sum()
        titles[sel] = ids[np.minimum(np.searchsorted(np.cumsum(p), rng.random(sel.sum())), len(ids) - 1)]
    key = np.unique(users.astype(np.int64) * n_titles + titles)
    users, titles = key // n_titles, key % n_titles
    m = len(users)
    t0 = dt.datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1000
    ts = (t0 + rng.uniform(0, 28 * 86400 * 1000, m)).astype(np.int64)
    kinds = np.array(["movie", "series", "documentary"])[rng.choice(3, n_titles, p=[0.7, 0.2, 0.1])]
    cat = pa.table({
        "title_id": pa.array(np.char.add("t", np.arange(n_titles).astype(str)).astype(object)),
        "name": pa.array(np.char.add("Title ", np.arange(n_titles).astype(str)).astype(object)),
        "kind": pa.array(kinds.astype(object)),
        "genres": pa.array([[GENRES[c % len(GENRES)]] for c in t_cl], pa.list_(pa.string())),
        "release_date": pa.array((np.datetime64("2000-01-01") + rng.integers(0, 9500, n_titles)
                                  .astype("timedelta64[D]")).astype("datetime64[D]")),
        "runtime_min": pa.array(np.where(kinds == "series", np.nan, 100.0).astype(np.float32)),
        "episodes": pa.array(np.where(kinds == "series", 1, 0).astype(np.int32)).cast(pa.int32()),
        "episode_runtime_min": pa.array(np.where(kinds == "series", 45.0, np.nan).astype(np.float32)),
        "regions": pa.array([[] for _ in range(n_titles)], pa.list_(pa.string())),
    })
    cat = pa.table({f.name: cat.column(f.name) if f.name in cat.column_names else pa.nulls(n_titles, f.type)
                    for f in TITLE_SCHEMA}, schema=TITLE_SCHEMA)
    uid = np.char.add("u", np.arange(n_users).astype(str)).astype(object)
    u_region = np.array(REGIONS, dtype=object)[rng.integers(0, len(REGIONS), n_users)]
    ev = pa.table({
        "event_id": pa.array(np.char.add("e", np.arange(m).astype(str)).astype(object)),
        "user_id": pa.array(uid[users]),
        "title_id": cat.column("title_id").take(pa.array(titles)),
        "type": pa.array(np.full(m, "complete", dtype=object)),
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "device": pa.array(np.array(["tv", "mobile", "tablet", "web"], dtype=object)[rng.integers(0, 4, m)]),
        "region": pa.array(u_region[users]),
    })
    ev = pa.table({f.name: ev.column(f.name) if f.name in ev.column_names else pa.nulls(m, f.type)
                   for f in EVENT_SCHEMA}, schema=EVENT_SCHEMA)
    ut = pa.table({"user_id": pa.array(uid), "region": pa.array(u_region)})
    ut = pa.table({f.name: ut.column(f.name) if f.name in ut.column_names else pa.nulls(n_users, f.type)
                   for f in USER_SCHEMA}, schema=USER_SCHEMA)
    return Catalog(cat), ut, ev


def als_per_iteration(positives, factors: int, iterations: int) -> tuple[float, float]:
    """Median seconds per iteration: reelrec's fit_als, and implicit's fit called directly."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits
    p = ALSParams(factors=factors, iterations=iterations)
    ours = fit_als(positives, p).seconds_per_iteration
    times = []
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=p.regularization, alpha=p.alpha,
                                        iterations=iterations, random_state=0)
        model.fit(positives, show_progress=False, callback=lambda i, s, loss: times.append(s))
    return ours, statistics.median(times)


def _timed_search(index: ANNIndex, q: np.ndarray, k: int, batch: int, **kw) -> tuple[np.ndarray, float]:
    """(cols, CPU ms per query): the queries in batches of ``batch`` (``kw`` row-sliced)."""
    cols = []
    t = time.process_time()
    for lo in range(0, len(q), batch):
        sl = slice(lo, lo + batch)
        part = {k_: (v_[sl] if k_ in ("exclude", "groups") and v_ is not None else v_) for k_, v_ in kw.items()}
        cols.append(index.search(q[sl], k, **part)[0])
    return np.concatenate(cols), 1000 * (time.process_time() - t) / len(q)


def baseline_ann(src: Path | None):
    """The ``build(vectors, cfg, force)`` of the "before" rows: ``src``'s reelrec/recall/ann.py (a
    checkout before the dedupe, loaded beside this one), or this code with ``dedupe=False``."""
    if src is None:
        return lambda v, cfg=None, force=None: ANNIndex.build(v, cfg, force, dedupe=False), ANNConfig
    import importlib.util
    spec = importlib.util.spec_from_file_location("ann_baseline", Path(src) / "reelrec" / "recall" / "ann.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ann_baseline"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.ANNIndex.build, mod.ANNConfig


def _ann_rows(v: np.ndarray, q: np.ndarray, truth_s: np.ndarray, efs: list[int], batch: int,
              k: int = 100, reps: int = 3, baseline: Path | None = None, **kw) -> list[dict]:
    """Recall with ties and CPU per query (in batches of ``batch``, the median of ``reps`` runs;
    and one query a call) for each index: before (``baseline``'s index, or one row per title)
    and now (each distinct vector once), flat and HNSW at each efSearch, and the default."""
    rows = []

    def row(label, index, ef="-", build=0.0):
        if ef != "-":
            index.cfg.ef_search = ef
        runs = [_timed_search(index, q, k, batch, **kw) for _ in range(reps)]
        got, cpu = runs[0][0], statistics.median(r[1] for r in runs)
        # one query a call, as the speed layer searches (the first 200 queries)
        one = {k_: (v_[:200] if k_ in ("exclude", "groups") and v_ is not None else v_) for k_, v_ in kw.items()}
        _, cpu_one = _timed_search(index, q[:200], k, 1, **one)
        rows.append({"index": label, "ef_search": ef, "distinct": getattr(index, "distinct", index.size),
                     "recall@100": round(recall_with_ties(got, q, v, truth_s), 4),
                     "cpu_ms_per_query": round(cpu, 3), "cpu_ms_single_query": round(cpu_one, 3),
                     "build_cpu_s": round(build, 1)})
        print(rows[-1], flush=True)

    old_build, old_cfg = baseline_ann(baseline)
    for build, cfg, when in ((old_build, old_cfg, "before"), (ANNIndex.build, ANNConfig, "now")):
        t = time.process_time()
        flat = build(v, force="flat")
        row(f"{when}: flat", flat, build=time.process_time() - t)
        del flat
        t = time.process_time()
        hnsw = build(v, cfg(exact_max=0))
        build = time.process_time() - t
        for ef in efs:
            row(f"{when}: hnsw M=32", hnsw, ef, build)
        del hnsw
    t = time.process_time()
    auto = ANNIndex.build(v)
    row(f"now: default ({auto.kind})", auto, build=time.process_time() - t)
    return rows


def ann_bench(n_titles: int, dim: int, n_queries: int, efs: list[int], seed: int = 3,
              baseline: Path | None = None) -> list[dict]:
    # ALS-like vectors: a decaying spectrum (MovieLens-100K's 128-factor ALS titles keep 90 % of
    # their energy in 32 directions) and norms spread over two orders of magnitude
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.arange(1, dim + 1) ** 0.75
    rot = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    v = ((rng.normal(size=(n_titles, dim)) * scale) @ rot).astype(np.float32)
    v *= rng.lognormal(0, 0.8, (n_titles, 1)).astype(np.float32)
    q = ((rng.normal(size=(n_queries, dim)) * scale) @ rot).astype(np.float32)
    truth_s = topk_excluding(q @ v.T, None, 100)[1]
    return _ann_rows(v, q, truth_s, efs, batch=n_queries, baseline=baseline)


def resolve_version(path: Path) -> Path:
    """A model version folder, given it or a data folder (its models/CURRENT)."""
    if (path / "arrays.npz").exists():
        return path
    models = path / "models"
    return models / (models / "CURRENT").read_text().strip()


def ann_bench_model(path: Path, efs: list[int], n_users: int, batch: int = 256, seed: int = 0,
                    baseline: Path | None = None) -> dict:
    """The ANN benchmark on a model version's title vectors: its users (those with history) as
    queries, each region's unavailable titles and the user's exclusions applied as the
    precompute applies them; the truth is a numpy brute force over every title."""
    import scipy.sparse as sp

    from reelrec.batch.versions import get_sparse
    folder = resolve_version(path)
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        v = np.ascontiguousarray(z["item_factors"], np.float32)
        content = z["content"].astype(bool)
        users = np.ascontiguousarray(z["users.vectors"], np.float32)
        region = z["users.region"].astype(np.int64)
        arrays = {k: z[k] for k in z.files if k.startswith(("users.exclude", "users.positives", "stats.unavailable"))}
    exclude = get_sparse(arrays, "users.exclude")
    positives = get_sparse(arrays, "users.positives")
    un = get_sparse(arrays, "stats.unavailable")
    rng = np.random.default_rng(seed)
    with_history = np.flatnonzero(np.diff(positives.indptr) > 0)
    pick = np.sort(rng.choice(with_history, min(n_users, len(with_history)), replace=False))
    q, ex = users[pick], sp.csr_matrix(exclude[pick])
    groups = np.where(region[pick] >= 0, region[pick], un.shape[0] - 1)
    full = sp.csr_matrix(ex.maximum(sp.csr_matrix(un)[groups]))
    truth_s = np.concatenate([topk_excluding(q[lo: lo + batch] @ v.T, full[lo: lo + batch], 100)[1]
                              for lo in range(0, len(q), batch)])
    rows = _ann_rows(v, q, truth_s, efs, batch, baseline=baseline, exclude=ex, unavailable=un, groups=groups)
    return {"version": str(folder), "titles": len(v), "content_vectors": int(content.sum()),
            "users": len(pick), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--titles", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=100)
    ap.add_argument("--factors", type=int, default=128)
    ap.add_argument("--ann-titles", type=int, default=100_000, help="synthetic ANN benchmark size (0: skip it)")
    ap.add_argument("--score-users", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=10, help="ALS iterations in the pipeline fit")
    ap.add_argument("--ranker-users", type=int, default=10_000, help="LambdaRank groups sampled")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--ann-only", action="store_true", help="only the ANN benchmarks")
    ap.add_argument("--ann-ef", default="512,768,1024", help="efSearch depths, comma-separated")
    ap.add_argument("--ann-model", type=Path,
                    help="also measure on this model version's vectors (a version folder or a data folder)")
    ap.add_argument("--ann-users", type=int, default=1024, help="queries (users) for --ann-model")
    ap.add_argument("--ann-baseline", type=Path,
                    help="the src folder of a checkout whose ANN index gives the 'before' rows "
                         "(default: this one, one index row per title)")
    a = ap.parse_args()
    if a.quick:
        a.users, a.titles, a.per_user, a.factors, a.ann_titles, a.score_users = 2000, 1000, 30, 32, 5000, 300
    efs = [int(x) for x in a.ann_ef.split(",")]

    res: dict = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
                 "args": {k: str(v) for k, v in vars(a).items()}, "stages": []}

    def stage(name, t0):
        res["stages"].append({"stage": name, "seconds": round(time.perf_counter() - t0, 2),
                              "peak_rss_mb": round(rss_mb())})
        print(f"{name:<28} {res['stages'][-1]['seconds']:>8.2f} s   peak RSS {res['stages'][-1]['peak_rss_mb']:,} MB",
              flush=True)

    if not a.ann_only:
        train_bench(a, res, stage)
    import faiss
    from threadpoolctl import threadpool_limits
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1, "blas"):
        if a.ann_titles > 0:
            t0 = time.perf_counter()
            res["ann"] = ann_bench(a.ann_titles, a.factors, 1000 if not a.quick else 200, efs,
                                   baseline=a.ann_baseline)
            stage(f"ANN benchmark ({a.ann_titles:,} titles)", t0)
        if a.ann_model is not None:
            t0 = time.perf_counter()
            res["ann_model"] = ann_bench_model(a.ann_model, efs, a.ann_users, baseline=a.ann_baseline)
            stage(f"ANN on {res['ann_model']['version']}", t0)
    res["peak_rss_mb"] = round(rss_mb())
    if a.json:
        report(res, a).write(a.json)


def report(res: dict, a):
    """``res`` as ``make bench`` rows (benchmarks/_report.py); the raw result rides in the details."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import Report
    world = f"{a.users:,} users x {a.titles:,} titles"
    rep = Report("bench_train", f"Batch layer: training at {world}, scoring, ANN at {a.ann_titles:,} titles",
                 quick=a.quick)
    for st in res["stages"]:
        rep.value(f"{st['stage']}: wall time", st["seconds"], "s")
        rep.value(f"{st['stage']}: peak RSS after it", st["peak_rss_mb"], "MB")
    als = res.get("als_s_per_iteration")
    if als:
        rep.value(f"ALS, {als['factors']} factors: reelrec fit_als, s per iteration", als["reelrec fit_als"], "s")
        rep.value("baseline: implicit's own fit on the same matrix, s per iteration", als["implicit fit"], "s")
    for step, sec in res.get("pipeline_steps_s", {}).items():
        rep.value(f"fit_pipeline step: {step}", sec, "s")
    if "candidates_recall" in res:
        rep.value("candidate recall of the window's held-out positives", res["candidates_recall"], "")
    sc = res.get("scoring")
    if sc:
        n = f"{sc['users']:,} users x {sc['candidates_per_user']:.0f} candidates"
        rep.value(f"scoring {n}: LightGBM predict", sc["ranker_predict_candidates_per_s"], "candidates/s")
        rep.value(f"scoring {n}: ranker features", sc["features_candidates_per_s"], "candidates/s")
        rep.value(f"scoring {n}: stage 1", sc["stage1_ms_per_user"], "ms/user")
        rep.value(f"scoring {n}: whole pipeline", sc["pipeline_users_per_s"], "users/s")
    for r in res.get("ann", []):
        name = r["index"] + ("" if r["ef_search"] == "-" else f", efSearch {r['ef_search']}")
        base = r["index"].startswith("before")
        rep.value(f"ANN {name}: recall@100 against exact", r["recall@100"], "", baseline=base)
        rep.value(f"ANN {name}: CPU per query, batched", r["cpu_ms_per_query"], "ms", baseline=base)
        rep.value(f"ANN {name}: CPU per query, one a call", r["cpu_ms_single_query"], "ms", baseline=base)
    rep.note("Baselines: implicit's own ALS fit on the same matrix; the ANN index as built before the "
             "dedupe (one row per title), rows marked 'before'. Each figure is one measurement.")
    rep.detail("raw", res)
    return rep


def train_bench(a, res: dict, stage) -> None:
    """Training stages, ALS per iteration, ranker and pipeline throughput (into ``res``)."""
    t0 = time.perf_counter()
    catalog, users, events = world(a.users, a.titles, a.per_user)
    stage(f"generate {events.num_rows:,} events", t0)
    t0 = time.perf_counter()
    inter = fold_interactions(events, catalog.table)
    stage("fold interactions", t0)
    t0 = time.perf_counter()
    matrix = InteractionMatrix.from_interactions(inter, catalog.ids)
    stage("interaction matrix", t0)
    res["positives"] = int(matrix.positives.nnz)

    its = 3
    ours, theirs = als_per_iteration(matrix.positives, a.factors, its)
    res["als_s_per_iteration"] = {"reelrec fit_als": round(ours, 3), "implicit fit": round(theirs, 3),
                                  "ratio": round(ours / theirs, 3), "factors": a.factors}
    print(f"ALS s/iteration: reelrec {ours:.3f}  implicit {theirs:.3f}  ratio {ours / theirs:.2f}", flush=True)

    cfg = PipelineConfig(als=ALSParams(factors=a.factors, iterations=a.iterations), tune=False,
                         ranker=RankerParams(windows=1, max_users=a.ranker_users), batch_users=256)
    data = TrainData(matrix=matrix, events=events, catalog=catalog, users=users)
    t0 = time.perf_counter()
    with RichProgress() as prog:
        pipe, report = fit_pipeline(data, cfg, prog)
    stage("fit pipeline (all steps)", t0)
    res["pipeline_steps_s"] = {k: round(v, 2) for k, v in prog.timings.items()}
    res["candidates_recall"] = report["candidates_recall"]

    # ranker throughput: features and predict for a batch of users, candidates per second
    rows = np.arange(min(a.score_users, len(pipe.users)))
    cand_t = feat_t = pred_t = 0.0
    n_cand = 0
    for lo in range(0, len(rows), cfg.batch_users):
        st = pipe.users.take(rows[lo: lo + cfg.batch_users])
        t = time.perf_counter()
        cands, dense = pipe.candidates(st)
        cand_t += time.perf_counter() - t
        t = time.perf_counter()
        x = pipe.features(st, cands, dense)
        feat_t += time.perf_counter() - t
        b, c = cands.cols.shape
        xv = x[cands.valid]
        t = time.perf_counter()
        pipe.ranker.predict(xv, num_threads=cfg.ranker.threads)
        pred_t += time.perf_counter() - t
        n_cand += len(xv)
    res["scoring"] = {"users": len(rows), "candidates": n_cand,
                      "candidates_per_user": round(n_cand / len(rows), 1),
                      "ranker_predict_candidates_per_s": round(n_cand / pred_t),
                      "features_candidates_per_s": round(n_cand / feat_t),
                      "pipeline_users_per_s": round(len(rows) / (cand_t + feat_t + pred_t), 1),
                      "stage1_ms_per_user": round(1000 * cand_t / len(rows), 3)}
    print(json.dumps(res["scoring"]), flush=True)

    del pipe, data, events, inter, matrix


if __name__ == "__main__":
    main()
