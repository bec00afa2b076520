"""``reelrec evaluate``: score every model side by side on the same split of the lake.

lake + catalog --splits--> TrainData + relevant titles --models--> top-N lists --metrics--> JSON
(and, in report.py, a markdown table and plots). With several seeds, each seed re-draws the split
(msr-stratified) and re-seeds the models, and every metric is reported as mean and spread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp

from reelrec.config import Settings
from reelrec.domain.catalog import Catalog
from reelrec.domain.users import load_users
from reelrec.errors import FieldError, InvalidInput, NotFound, ReelrecError
from reelrec.eval import metrics as M
from reelrec.eval.models import DEFAULT_MODELS, binary, resolve
from reelrec.eval.splits import PROTOCOLS, Split, make_split, seen_matrix, test_window_error
from reelrec.eval.truth import load_truth, relevance
from reelrec.log import get_logger
from reelrec.recommender import ContextRecommender
from reelrec.storage.lake import open_lake

log = get_logger(__name__)

BASE_SEED = 42
CURVE_MAX_K = 20
CANDIDATE_N = 100
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _as_recs(recs: object, n_users: int, n: int) -> np.ndarray:
    r = np.asarray(recs)
    if r.ndim != 2 or r.shape[0] != n_users:
        raise InvalidInput(FieldError("recommend", f"returned shape {r.shape}, expected ({n_users}, {n})"))
    r = r.astype(np.int64, copy=False)
    if r.shape[1] < n:
        r = np.pad(r, ((0, 0), (0, n - r.shape[1])), constant_values=-1)
    return r[:, :n]


def score_lists(recs: np.ndarray, split: Split, k: int, genres: sp.csr_matrix,
                truth: sp.csr_matrix | None = None, candidates: np.ndarray | None = None
                ) -> tuple[dict[str, float], dict[str, tuple[float, float]], dict[str, list[float]],
                           np.ndarray]:
    """Every metric of one model on one split; 95 % bootstrap intervals (over test users) of
    NDCG, precision and recall; the metric@K curves; and each test user's NDCG@k (for the paired
    comparisons)."""
    x = binary(split.train.matrix.positives)
    pop = np.asarray(x.sum(axis=0)).ravel()
    per = M.per_user(recs[:, :k], split.relevant, k)
    out = {f"{name}@{k}": float(v.mean()) if len(v) else 0.0 for name, v in per.items()}
    ci = {f"{name}@{k}": M.bootstrap_ci(per[name], seed=split.seed)
          for name in ("ndcg", "precision", "recall")}
    out[f"recall@{CANDIDATE_N}"] = M.accuracy(recs[:, :CANDIDATE_N], split.relevant,
                                              CANDIDATE_N)[f"recall@{CANDIDATE_N}"]
    out["coverage"] = M.coverage(recs[:, :k], int((pop > 0).sum()))
    out["diversity"] = M.diversity(recs[:, :k], genres)
    out["novelty"] = M.novelty(recs[:, :k], pop, x.shape[0])
    if candidates is not None:
        out[f"candidate_recall@{CANDIDATE_N}"] = M.accuracy(
            candidates[:, :CANDIDATE_N], split.relevant, CANDIDATE_N)[f"recall@{CANDIDATE_N}"]
    if truth is not None:
        keep = np.diff(truth.indptr) > 0
        if keep.any():
            acc = M.accuracy(recs[keep, :k], truth[keep], k)
            out[f"true_precision@{k}"] = acc[f"precision@{k}"]
            out[f"true_recall@{k}"] = acc[f"recall@{k}"]
            out[f"true_ndcg@{k}"] = acc[f"ndcg@{k}"]
    curve = M.curves(recs[:, :CURVE_MAX_K], split.relevant, range(1, CURVE_MAX_K + 1))
    return out, ci, curve, per["ndcg"]


def comparison_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(reelrec model, other model): every reelrec model against every baseline, the comparisons
    the quality bars are stated in, and each pair of reelrec models once (an ablation, or the
    homepage against the ranker)."""
    ours = [n for n in names if n.startswith("reelrec-")]
    return [(a, b) for i, a in enumerate(ours) for b in names
            if b not in ours or ours.index(b) > i]


def _jsonable(obj: object) -> object:
    """A model's ``params`` as plain JSON: models may keep dataclasses or numpy values there."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _aggregate(runs: list[dict[str, float]]) -> dict:
    keys = list(dict.fromkeys(k for r in runs for k in r))
    mean = {k: float(np.mean([r[k] for r in runs if k in r])) for k in keys}
    if len(runs) > 1:
        mean["std"] = {k: float(np.std([r[k] for r in runs if k in r], ddof=1)) for k in keys}
    return mean


def evaluate(settings: Settings, protocol: str, k: int = 10, seeds: int = 1,
             models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
             progress: Progress | None = None, test_window: str = "all") -> dict:
    """Evaluate ``models`` on the lake of ``settings.data_dir``; returns the result document.
    ``test_window`` (temporal): ``"all"`` (the whole test period) or ``"session"`` (each test
    user's first test session; see ``reelrec.eval.splits.first_session_events``).

    Raises:
        InvalidInput: bad protocol, test window, k, seeds or model name; an empty lake.
        NotFound: the data directory has no catalog.
    """
    say = progress or _quiet
    errs = []
    if protocol not in PROTOCOLS:
        errs.append(FieldError("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"))
    bad_window = test_window_error(protocol, test_window)
    if bad_window is not None:
        errs.append(bad_window)
    if not 1 <= k <= CANDIDATE_N:
        errs.append(FieldError("k", f"must be between 1 and {CANDIDATE_N}, got {k}"))
    if seeds < 1:
        errs.append(FieldError("seeds", f"must be at least 1, got {seeds}"))
    models = list(dict.fromkeys(models))
    if not models:
        errs.append(FieldError("models", "name at least one model"))
    if errs:
        raise InvalidInput(errs)
    for name in models:
        resolve(name)  # unknown names fail before any work

    t0 = time.perf_counter()
    catalog = Catalog.load(settings.data_dir)
    events = open_lake(settings.lake).scan()
    if events.num_rows == 0:
        raise InvalidInput(FieldError("data", f"the lake at {settings.lake} holds no events"))
    try:
        users = load_users(settings.data_dir)
    except NotFound:
        users = None
    genres = M.genre_matrix(catalog.table.column("genres").to_pylist())
    truth_found = load_truth(settings.data_dir)
    say(f"read {events.num_rows:,} events and {len(catalog):,} titles "
        f"({time.perf_counter() - t0:.1f} s)")

    n_out = max(CANDIDATE_N, CURVE_MAX_K, k)
    seed_list = [BASE_SEED + i for i in range(seeds)]
    runs: dict[str, list[dict]] = {m: [] for m in models}
    curves: dict[str, list[dict]] = {m: [] for m in models}
    params: dict[str, list] = {m: [] for m in models}
    cis: dict[str, list[dict]] = {m: [] for m in models}
    unavailable: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    paired: dict[str, list[dict]] = {}
    splits_info = []
    for seed in seed_list:
        t = time.perf_counter()
        split = make_split(events, catalog, protocol, seed, users, settings.signals, test_window)
        m = split.train.matrix
        info = {"seed": seed, "train_events": split.train.events.num_rows,
                "test_events": split.test_events.num_rows, "train_users": m.shape[0],
                "train_interactions": int(m.positives.nnz), "test_users": int(len(split.test_rows)),
                "relevant": int(split.relevant.nnz), "cold_test_users": split.cold_test_users}
        if split.train.cutoff is not None:
            info["cutoff"] = split.train.cutoff.isoformat()
        if split.request is not None:
            info["request_context_known"] = int((split.request.cell >= 0).sum())
        splits_info.append(info)
        window = " (first test session)" if test_window == "session" else ""
        say(f"seed {seed}: {protocol} split{window}: {info['train_interactions']:,} training "
            f"interactions, "
            f"{info['test_users']:,} test users, {info['relevant']:,} relevant titles "
            f"({time.perf_counter() - t:.1f} s)")
        per_user_ndcg: dict[str, np.ndarray] = {}
        truth = None
        if truth_found is not None:
            truth = relevance(truth_found, m.user_ids[split.test_rows], m.title_ids,
                              seen_matrix(m)[split.test_rows], k)
        for name in models:
            if name in unavailable:
                continue
            r = resolve(name, seed)
            if r.model is None:
                unavailable[name] = r.reason
                say(f"  {name}: unavailable ({r.reason})")
                continue
            for note in r.notes:
                notes.setdefault(name, [])
                if note not in notes[name]:
                    notes[name].append(note)
                    say(f"  {name}: {note}")
            say(f"  {name}: fitting ...")
            t = time.perf_counter()
            try:
                r.model.fit(split.train)
                fit_s = time.perf_counter() - t
                t = time.perf_counter()
                if split.request is not None and isinstance(r.model, ContextRecommender):
                    got = r.model.recommend_in_context(split.test_rows, n_out, split.request)
                else:
                    got = r.model.recommend(split.test_rows, n_out)
                recs = _as_recs(got, len(split.test_rows), n_out)
                rec_s = time.perf_counter() - t
                cands = None
                if callable(getattr(r.model, "candidates", None)):
                    cands = _as_recs(r.model.candidates(split.test_rows, CANDIDATE_N),
                                     len(split.test_rows), CANDIDATE_N)
            except ReelrecError as exc:
                unavailable[name] = str(exc)
                runs[name].clear()
                say(f"  {name}: failed: {exc}")
                continue
            scores, ci, curve, per_user_ndcg[name] = score_lists(recs, split, k, genres, truth, cands)
            scores["fit_s"], scores["recommend_s"] = fit_s, rec_s
            runs[name].append(scores)
            curves[name].append(curve)
            cis[name].append(ci)
            params[name].append(_jsonable(getattr(r.model, "params", {}) or {}))
            say(f"  {name}: ndcg@{k} {scores[f'ndcg@{k}']:.4f}  precision@{k} "
                f"{scores[f'precision@{k}']:.4f}  fit {fit_s:.1f} s, recommend {rec_s:.1f} s")
        for a, b in comparison_pairs(list(per_user_ndcg)):
            paired.setdefault(f"{a} vs {b}", []).append(
                {"seed": seed, **M.paired_bootstrap(per_user_ndcg[a], per_user_ndcg[b], seed=seed)})

    result_models = {}
    for name in models:
        if name in unavailable or not runs[name]:
            continue
        agg = _aggregate(runs[name])
        agg["curves"] = {metric: np.mean([c[metric] for c in curves[name]], axis=0).round(6).tolist()
                         for metric in curves[name][0]}
        # one interval per seed; with several seeds the std across seeds is the spread to read
        agg["ci95"] = {m: [round(v, 6) for v in iv] for m, iv in cis[name][0].items()} \
            if len(cis[name]) == 1 else [{m: [round(v, 6) for v in iv] for m, iv in c.items()}
                                         for c in cis[name]]
        agg["params"] = params[name] if len(params[name]) > 1 else params[name][0]
        if name in notes:
            agg["notes"] = notes[name]
        result_models[name] = agg
    doc = {
        "dataset": Path(settings.data_dir).resolve().name,
        "protocol": protocol,
        # temporal: the test events scored, "all" (the whole test period) or "session" (each
        # test user's first test session); None for msr-stratified
        "test_window": test_window if protocol == "temporal" else None,
        "k": k,
        "seeds": seed_list,
        "models": result_models,
        "unavailable": unavailable,
        # NDCG@k of each reelrec model against each baseline, paired over the same test users
        "paired": {f"ndcg@{k}": {pair: [{key: (round(v, 6) if isinstance(v, float) else
                                               [round(x, 6) for x in v] if isinstance(v, list) else v)
                                         for key, v in r.items()} for r in rows]
                                 for pair, rows in paired.items()}},
        "split": splits_info if len(splits_info) > 1 else splits_info[0],
        "data": {"events": events.num_rows, "titles": len(catalog),
                 "ground_truth": truth_found.source if truth_found else None},
        "definitions": "Microsoft Recommenders ranking metrics; map@K divides by min(relevant, K), "
                       "map_all@K by the number of relevant titles; see docs/evaluation.md",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("evaluation done", protocol=protocol, models=len(result_models), seconds=doc["seconds"])
    return doc
