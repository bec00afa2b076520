"""The ``reelrec`` command. Each command is a thin shell over a library function.

Heavy modules are imported inside the commands so ``reelrec --help`` stays fast and a backend's
driver is imported only when its scheme is used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reelrec.errors import FieldError, InvalidInput, NotFound, ReelrecError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="reelrec: homepages for a streaming catalog.")
lake_app = typer.Typer(no_args_is_help=True, help="The behavioural lake (Parquet by event date).")
events_app = typer.Typer(no_args_is_help=True, help="Validate and load JSON Lines event files.")
import_app = typer.Typer(no_args_is_help=True, help="Import real data sets into the lake.")
users_app = typer.Typer(no_args_is_help=True, help="Look at the users of a data directory.")
titles_app = typer.Typer(no_args_is_help=True, help="Look at the catalog of a data directory.")
app.add_typer(lake_app, name="lake")
app.add_typer(events_app, name="events")
app.add_typer(import_app, name="import")
app.add_typer(users_app, name="users")
app.add_typer(titles_app, name="titles")

console = Console(soft_wrap=True)  # one line per message, also when piped into a log
err_console = Console(stderr=True, soft_wrap=True)

DataOpt = typer.Option(None, "--data", help="data directory (default ./reelrec-data or REELREC_DATA_DIR)")


def settings_for(data: Optional[Path], **overrides):
    """Settings with ``--data`` and any other flags given (None means: not given)."""
    from reelrec.config import load_settings
    return load_settings(data_dir=data, **overrides)


def fail(exc: ReelrecError) -> None:
    # messages quote user data ("f.csv:stars: ..."): no markup or :emoji: codes inside them
    err_console.print(f"[red]error:[/red] {escape(str(exc))}", emoji=False)
    raise typer.Exit(2)


def counts_table(title: str, counts: dict, key: str = "value") -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(key)
    t.add_column("count", justify="right")
    for k, v in counts.items():
        t.add_row(str(k), f"{v:,}")
    return t


# --- world and imports ------------------------------------------------------------------------
@app.command()
def simulate(
    users: int = typer.Option(2000, min=1, help="users at the start (more join during the days)"),
    titles: int = typer.Option(1000, min=10, help="titles in the catalog at the start"),
    days: int = typer.Option(7, min=1, help="days of behaviour to simulate"),
    seed: int = typer.Option(1, help="random seed; the same seed gives the same world"),
    data: Optional[Path] = DataOpt,
):
    """Simulate a streaming service's catalog, users and events into the lake."""
    from reelrec.sim.world import SimConfig, simulate as run_sim
    s = settings_for(data)
    try:
        summary = run_sim(SimConfig(users=users, titles=titles, days=days, seed=seed), s)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"simulated {summary.events:,} events from {summary.users:,} users on "
                  f"{summary.titles:,} titles into {s.data_dir} "
                  f"({summary.seconds:.1f} s, {summary.events / max(summary.seconds, 1e-9):,.0f} events/s)")


@import_app.command("movielens")
def import_movielens_cmd(path: Path = typer.Argument(..., exists=True, file_okay=False,
                                                     help="ml-100k or ml-latest-small folder"),
                         data: Optional[Path] = DataOpt):
    """Import MovieLens 100K or ml-latest-small: titles, users and rating events."""
    from reelrec.importers.movielens import import_movielens
    s = settings_for(data)
    try:
        summary = import_movielens(path, s)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"imported {summary.events:,} events, {summary.users:,} users, "
                  f"{summary.titles:,} titles from {path} into {s.data_dir}")


@import_app.command("interactions")
def import_interactions_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV, TSV or Parquet file"),
    user_col: str = typer.Option(..., "--user-col"),
    item_col: str = typer.Option(..., "--item-col"),
    weight_col: Optional[str] = typer.Option(None, "--weight-col"),
    time_col: Optional[str] = typer.Option(None, "--time-col"),
    sep: Optional[str] = typer.Option(None, "--sep", help="field separator (default from the extension)"),
    data: Optional[Path] = DataOpt,
):
    """Import any table of user-item interactions (your own data) into the lake."""
    from reelrec.importers.interactions import import_interactions
    s = settings_for(data)
    try:
        summary = import_interactions(file, s, user_col=user_col, item_col=item_col,
                                      weight_col=weight_col, time_col=time_col, sep=sep)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"imported {summary.events:,} events, {summary.users:,} users, "
                  f"{summary.titles:,} titles from {file} into {s.data_dir}")


# --- events -----------------------------------------------------------------------------------
def _validate_file(file: Path, data: Optional[Path]):
    from reelrec.domain.catalog import Catalog
    from reelrec.domain.events import read_jsonl, validate_records
    s = settings_for(data)
    try:
        catalog = Catalog.load(s.data_dir)
    except NotFound:
        catalog = None
    report = validate_records(read_jsonl(file), titles=catalog, lines=True,
                              future_tolerance_s=s.future_tolerance_s)
    return s, catalog, report


def _print_report(report, catalog) -> None:
    for e in report.errors:
        err_console.print(f"line {e.line}: {e.field}: {e.reason}", markup=False, highlight=False)
    note = "" if catalog is not None else " (no catalog found: title ids not checked)"
    console.print(f"{report.accepted:,} valid, {report.rejected:,} invalid{note}")


@events_app.command("validate")
def events_validate(file: Path = typer.Argument(..., exists=True, dir_okay=False),
                    data: Optional[Path] = DataOpt):
    """Report each bad line (number, field, reason) and count the good ones."""
    _, catalog, report = _validate_file(file, data)
    _print_report(report, catalog)
    raise typer.Exit(1 if report.rejected else 0)


@events_app.command("load")
def events_load(file: Path = typer.Argument(..., exists=True, dir_okay=False),
                data: Optional[Path] = DataOpt):
    """Append the valid events of a JSON Lines file to the lake; report the invalid ones."""
    from reelrec.domain.events import events_to_table
    from reelrec.storage.lake import open_lake
    s, catalog, report = _validate_file(file, data)
    _print_report(report, catalog)
    written = open_lake(s.lake).append(events_to_table(report.events)) if report.events else 0
    console.print(f"appended {written:,} events to {s.lake}")


# --- lake -------------------------------------------------------------------------------------
@lake_app.command("stats")
def lake_stats(data: Optional[Path] = DataOpt, as_json: bool = typer.Option(False, "--json")):
    """Events by type and by date, deduplicated on event_id."""
    from reelrec.storage.lake import open_lake
    s = settings_for(data)
    st = open_lake(s.lake).stats()
    if as_json:
        print(json.dumps(st, indent=2))
        return
    console.print(f"{st['events']:,} events in {st['files']:,} files at {s.lake}")
    console.print(counts_table("events by type", st["by_type"], "type"))
    console.print(counts_table("events by date", st["by_date"], "date"))


@lake_app.command("compact")
def lake_compact(data: Optional[Path] = DataOpt):
    """Merge each date partition into one file and drop duplicate event_ids."""
    from reelrec.storage.lake import open_lake
    s = settings_for(data)
    rep = open_lake(s.lake).compact()
    console.print(f"compacted {rep.partitions} partitions: files {rep.files_before:,} -> "
                  f"{rep.files_after:,}, rows {rep.rows_before:,} -> {rep.rows_after:,}")


# --- looking around ---------------------------------------------------------------------------
def _ci_filter(table, column: str, value: Optional[str], is_list: bool = False):
    import pyarrow.compute as pc
    if not value:
        return table
    v = value.lower()
    col = table.column(column)
    if is_list:
        # list membership, case-insensitive: flatten, compare, map back to rows
        flat = pc.utf8_lower(pc.list_flatten(col))
        parents = pc.list_parent_indices(col)
        rows = pc.unique(pc.filter(parents, pc.equal(flat, v)))
        import numpy as np
        mask = np.zeros(table.num_rows, dtype=bool)
        mask[rows.to_numpy()] = True
        return table.filter(mask)
    return table.filter(pc.equal(pc.utf8_lower(col.fill_null("")), v))


@users_app.command("list")
def users_list(data: Optional[Path] = DataOpt,
               region: Optional[str] = typer.Option(None, help="country code, e.g. IN"),
               device: Optional[str] = typer.Option(None, help="signup device"),
               limit: int = typer.Option(50, min=0, help="rows to print (0: all)")):
    """One user per line, id first: region, language, signup device, onboarding picks."""
    from reelrec.domain.users import load_users
    s = settings_for(data)
    try:
        t = load_users(s.data_dir)
    except NotFound as exc:
        fail(exc)
    t = _ci_filter(_ci_filter(t, "region", region), "signup_device", device)
    total = t.num_rows
    if limit:
        t = t.slice(0, limit)
    for r in t.to_pylist():
        picks = ",".join(r["onboarding_genres"] or []) or "-"
        print(f"{r['user_id']}\t{r['region'] or '-'}\t{r['language'] or '-'}\t"
              f"{r['signup_device'] or '-'}\t{picks}")
    err_console.print(f"{min(total, t.num_rows):,} of {total:,} users")


@titles_app.command("list")
def titles_list(data: Optional[Path] = DataOpt,
                region: Optional[str] = typer.Option(None, help="available in this country"),
                kind: Optional[str] = typer.Option(None, help="movie, series or documentary"),
                genre: Optional[str] = typer.Option(None, help="e.g. thriller"),
                limit: int = typer.Option(50, min=0, help="rows to print (0: all)")):
    """One title per line, id first: name, kind, genres, release date, regions."""
    import numpy as np
    import pyarrow.compute as pc
    from reelrec.domain.catalog import Catalog
    s = settings_for(data)
    try:
        t = Catalog.load(s.data_dir).table
    except NotFound as exc:
        fail(exc)
    t = _ci_filter(_ci_filter(t, "kind", kind), "genres", genre, is_list=True)
    if region:
        everywhere = pc.equal(pc.list_value_length(t.column("regions")), 0).to_numpy(zero_copy_only=False)
        there = np.zeros(t.num_rows, dtype=bool)
        sub = _ci_filter(t.append_column("_i", [np.arange(t.num_rows)]), "regions", region, is_list=True)
        there[sub.column("_i").to_numpy()] = True
        t = t.filter(everywhere | there)
    total = t.num_rows
    if limit:
        t = t.slice(0, limit)
    for r in t.to_pylist():
        regions = ",".join(r["regions"] or []) or "everywhere"
        print(f"{r['title_id']}\t{r['name']}\t{r['kind']}\t{','.join(r['genres'])}\t"
              f"{r['release_date'] or '-'}\t{regions}")
    err_console.print(f"{min(total, t.num_rows):,} of {total:,} titles")


# --- demo and serving (the whole loop; reelrec.batch.jobs) -------------------------------------
@app.command()
def demo(data: Optional[Path] = DataOpt,
         users: int = typer.Option(1500, min=1, help="users to simulate (empty data directory only)"),
         titles: int = typer.Option(800, min=10, help="titles to simulate"),
         days: int = typer.Option(5, min=1, help="days of behaviour to simulate"),
         seed: int = typer.Option(1, help="random seed of the simulated world"),
         tune: bool = typer.Option(True, "--tune/--no-tune", help="grid-search ALS and EASE"),
         retrain: bool = typer.Option(False, "--retrain", help="train again even if the published "
                                                               "model's pages are in the cache"),
         serve_after: bool = typer.Option(True, "--serve/--no-serve", help="start the server at the end"),
         host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
         port: Optional[int] = typer.Option(None, help="port (default 8000)")):
    """The whole loop on embedded defaults: simulate a small world (when the data directory is
    empty), train, precompute every homepage, show a heavy viewer's and a newcomer's, then serve
    the API with the speed layer until Ctrl-C."""
    import time
    from reelrec.batch.jobs import retrain as run_retrain, train_version
    from reelrec.batch.progress import RichProgress
    from reelrec.batch.versions import ModelStore
    from reelrec.config import load_settings
    from reelrec.homepage import HomepageReader
    from reelrec.sim.world import SimConfig, simulate as run_sim
    from reelrec.storage.cache import open_cache
    from reelrec.storage.lake import open_lake
    try:
        s = load_settings(data_dir=data, host=host, port=port)
        lake = open_lake(s.lake)
        if not lake.files():
            console.rule(f"simulating {users:,} users, {titles:,} titles, {days} days")
            summary = run_sim(SimConfig(users=users, titles=titles, days=days, seed=seed), s)
            console.print(f"{summary.events:,} events from {summary.users:,} users on {summary.titles:,} "
                          f"titles in {summary.seconds:.1f} s")
        store = ModelStore(s.models_dir)
        with open_cache(s.cache) as cache:
            current = store.current()
            if current and cache.current_version() == current and not retrain:
                console.print(f"model {current} is published and its pages are in the cache "
                              "(--retrain trains again)")
            else:
                console.rule("training a model, then precomputing every homepage")
                t0 = time.perf_counter()
                with RichProgress() as progress:
                    res = run_retrain(s, cache, tune=tune, progress=progress,
                                      trainer=lambda st, t: train_version(st, t, progress=progress))
                m = res["metrics"]
                console.print(f"version {res['version']} live in {time.perf_counter() - t0:.1f} s: trained "
                              f"in {res['train_seconds']:.1f} s on {res['counts']['users']:,} users x "
                              f"{res['counts']['titles']:,} titles (ranker ndcg@10 "
                              f"{m.get('ranker_valid_ndcg@10')}, candidate recall {m.get('candidates_recall')}); "
                              f"{res['pages']:,} pages ({res['personal']:,} personal, {res['cold_start']:,} "
                              f"cold start) in {res['precompute_seconds']:.1f} s")
            reader = HomepageReader(s, cache)
            heavy, newcomer = _demo_users(s, reader)
            for user, who in ((heavy, "a heavy viewer"), (newcomer, "a newcomer")):
                console.rule(f"[bold]{who}: {user}[/bold]")
                print_page(reader.read(user, region=_user_region(s, user)))
    except ReelrecError as exc:
        fail(exc)
    if serve_after:
        _serve(s, example_user=heavy)
    else:
        console.print(f"data directory: {s.data_dir.resolve()}  (`reelrec serve --data {s.data_dir}` "
                      "starts the server)")


@app.command()
def retrain(data: Optional[Path] = DataOpt,
            cache: Optional[str] = typer.Option(None, help="cache URL (default: memory snapshot in DIR)"),
            tune: bool = typer.Option(True, "--tune/--no-tune", help="grid-search ALS and EASE")):
    """Train a version, precompute every page into the cache, then publish it; drop cache
    versions older than the previous one and prune old model versions. The same job as the
    server's nightly retrain, for a scheduler at scale (a running embedded server keeps its
    memory cache to itself: use POST /v1/admin/train there)."""
    import time
    from reelrec.batch.jobs import retrain as run_retrain, train_version
    from reelrec.batch.progress import RichProgress
    from reelrec.storage.cache import open_cache
    s = settings_for(data)
    t0 = time.perf_counter()
    try:
        with open_cache(cache or s.cache) as c, RichProgress() as progress:
            res = run_retrain(s, c, tune=tune, progress=progress,
                              trainer=lambda st, t: train_version(st, t, progress=progress))
    except ReelrecError as exc:
        fail(exc)
    console.print(f"version {res['version']} live in {time.perf_counter() - t0:.1f} s (previous "
                  f"{res['previous']}): {res['pages']:,} pages; cache versions dropped "
                  f"{res['cache_versions_dropped']}, model versions pruned {res['model_versions_pruned']}")


def _demo_users(s, reader) -> tuple[str, str]:
    """The trained user with the most positives, and a user without any history (one who signed
    up without watching, else a new id)."""
    from reelrec.domain.users import load_users
    model = reader.model()
    pos = model.pipeline.users.positives.getnnz(axis=1)
    heavy = str(model.pipeline.user_ids[int(pos.argmax())])
    newcomer = "newcomer-1"
    try:
        ids = load_users(s.data_dir).column("user_id").to_pylist()
        newcomer = next((u for u in ids if u not in model.user_row), newcomer)
    except NotFound:
        pass
    return heavy, newcomer


def _any_user(s) -> str:
    from reelrec.domain.users import load_users
    try:
        t = load_users(s.data_dir)
    except NotFound:
        return "new-viewer"
    return t.column("user_id")[0].as_py() if t.num_rows else "new-viewer"


def _serve(s, example_user: Optional[str] = None) -> None:
    import uvicorn
    from reelrec.serve.api import create_app
    app = create_app(s)
    url = f"http://{s.host}:{s.port}"
    console.print(f"reelrec serving {s.data_dir.resolve()} at {url}  (OpenAPI: {url}/docs)")
    user = example_user or _any_user(s)
    console.print(f"try:  curl '{url}/v1/users/{user}/homepage'", highlight=False, soft_wrap=True)
    if app.state.scheduler is not None:
        console.print(f"retrains every {s.retrain_interval_s / 3600:g} h (REELREC_RETRAIN_INTERVAL_S; 0 = off); "
                      f"POST {url}/v1/admin/train retrains now", highlight=False, soft_wrap=True)
    console.print("Ctrl-C stops the server")
    uvicorn.run(app, host=s.host, port=s.port, log_level="warning")


@app.command()
def serve(data: Optional[Path] = DataOpt,
          host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
          port: Optional[int] = typer.Option(None, help="port (default 8000)"),
          retrain_interval_s: Optional[float] = typer.Option(
              None, "--retrain-interval-s", min=0,
              help="embedded mode: retrain, precompute and publish this long after the published "
                   "model was made (default 86400; 0 = off)")):
    """Run the HTTP API on embedded defaults (or the backends named by REELREC_* settings); in
    embedded mode also the speed layer and the nightly retrain."""
    from reelrec.config import load_settings
    try:
        s = load_settings(data_dir=data, host=host, port=port, retrain_interval_s=retrain_interval_s)
    except ReelrecError as exc:
        fail(exc)
    _serve(s)

# --- evaluation (reelrec.eval) ----------------------------------------------------------------
@app.command()
def evaluate(
    data: Optional[Path] = DataOpt,
    protocol: str = typer.Option(..., "--protocol", help="msr-stratified or temporal"),
    test_window: str = typer.Option("all", "--test-window",
                                    help="temporal: score against all test events (all) or each "
                                         "test user's first test session (session)"),
    k: int = typer.Option(10, "--k", help="list length the metrics are computed at"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result document here"),
    report: Optional[Path] = typer.Option(None, "--report", help="folder for report.md and plots"),
    seeds: int = typer.Option(1, "--seeds", help="repeat with this many seeds (42, 43, ...)"),
    models: str = typer.Option("popularity,als,ease,covisit,reelrec-ranker,reelrec-homepage", "--models",
                               help="comma-separated model names"),
):
    """Score models side by side on a split of the lake: accuracy, coverage, diversity, novelty."""
    from reelrec.eval.harness import evaluate as run_eval
    from reelrec.eval.report import markdown, write_report
    s = settings_for(data)
    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        doc = run_eval(s, protocol, k=k, seeds=seeds, models=names, test_window=test_window,
                       progress=lambda msg: err_console.print(msg, markup=False, highlight=False,
                                                                soft_wrap=True))
    except ReelrecError as exc:
        fail(exc)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2))
        err_console.print(f"wrote {json_out}")
    if report:
        for p in write_report(doc, report):
            err_console.print(f"wrote {p}")
    print(markdown(doc).split("\n![")[0])

# --- batch layer: training and model versions ---------------------------------------------------
models_app = typer.Typer(no_args_is_help=True, help="Trained model versions and the published pointer.")
app.add_typer(models_app, name="models")


@app.command()
def train(data: Optional[Path] = DataOpt,
          tune: bool = typer.Option(True, "--tune/--no-tune", help="grid-search ALS and EASE"),
          publish: bool = typer.Option(True, "--publish/--no-publish", help="publish when checks pass"),
          factors: int = typer.Option(128, min=1, help="ALS factors"),
          als_members: int = typer.Option(
              4, "--als-members", min=1,
              help="blend the best N ALS settings of the tuning (title vectors N x factors wide); "
                   "1: one setting, tuned on the narrower grid of before")):
    """Train a model version from the lake (ALS, recall sources, ranker) and publish it."""
    from reelrec.batch.pipeline import PipelineConfig, als_choice
    from reelrec.batch.progress import RichProgress
    from reelrec.batch.train import train as run_train
    from reelrec.recall.als import ALSParams
    s = settings_for(data)
    cfg = PipelineConfig(als=ALSParams(factors=factors), tune=tune, **als_choice(als_members))
    try:
        with RichProgress() as progress:
            res = run_train(s, cfg, publish=publish, progress=progress)
    except ReelrecError as exc:
        fail(exc)
    m = res.manifest
    console.print(f"version {res.version} ({'published' if res.published else 'not published'}) "
                  f"in {res.seconds:.1f} s: {m['counts']['users']:,} users, {m['counts']['titles']:,} "
                  f"titles, {m['counts']['positives']:,} positives")
    als = m["params"]["als"]
    if "members" in als:  # a blend (recall.als.ALSBlend): each member's factors, regularisation, alpha
        als = f"blend of {len(als['members'])}: " + ", ".join(
            f"{p['factors']} factors / reg {p['regularization']:g} / alpha {p['alpha']:g}"
            for p in als["members"])
    console.print(f"ALS {als}  EASE lambda {m['params']['ease_lambda']}")
    console.print(f"metrics {m['metrics']}")
    for p in m["checks"]:
        err_console.print(f"[yellow]check failed:[/yellow] {p}")


@models_app.command("list")
def models_list(data: Optional[Path] = DataOpt, as_json: bool = typer.Option(False, "--json")):
    """Model versions, newest first: published marker, checks, counts and validation metrics."""
    from reelrec.batch.versions import ModelStore
    s = settings_for(data)
    rows = ModelStore(s.models_dir).list()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"model versions in {s.models_dir}", title_justify="left")
    t.add_column("version", no_wrap=True)
    for c in ("published", "ok", "users", "titles", "candidates recall", "ranker ndcg@10"):
        t.add_column(c)
    for r in rows:
        c, mt = r.get("counts", {}), r.get("metrics", {})
        t.add_row(r["version"], "*" if r["current"] else "", "yes" if r["ok"] else f"no: {r.get('error', '')}",
                  f"{c.get('users', '-')}", f"{c.get('titles', '-')}", f"{mt.get('candidates_recall', '-')}",
                  f"{mt.get('ranker_valid_ndcg@10', '-')}")
    console.print(t)


@models_app.command("publish")
def models_publish(version: str = typer.Argument(...), data: Optional[Path] = DataOpt):
    """Point the published model at VERSION (verified first)."""
    from reelrec.batch.versions import ModelStore
    s = settings_for(data)
    try:
        ModelStore(s.models_dir).publish(version)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"published {version}")


# --- homepages -----------------------------------------------------------------------------------
@app.command()
def precompute(data: Optional[Path] = DataOpt,
               cache: Optional[str] = typer.Option(None, help="cache URL (default: memory snapshot in DIR)"),
               version: Optional[str] = typer.Option(None, help="model version (default: published)"),
               engine: str = typer.Option("local", help="local (this process) or ray (Ray actors, one per core)"),
               address: Optional[str] = typer.Option(None, help="Ray cluster address (engine ray; default: "
                                                     "start a local Ray)"),
               workers: Optional[int] = typer.Option(None, min=1, help="Ray workers (default: one per core "
                                                     "of the cluster)"),
               shard_users: Optional[int] = typer.Option(None, min=1, help="users per shard (default: about "
                                                         "8 shards per worker, at most 4096 users, "
                                                         "in whole batches of 256)")):
    """Compose every user's homepage into the cache, then switch the cache to the new version.

    With --engine ray and a redis:// cache the workers write the pages; with a memory cache the
    pages come back to this process, which writes them."""
    from reelrec.batch.progress import RichProgress
    from reelrec.batch.precompute import precompute as run
    from reelrec.storage.cache import open_cache
    s = settings_for(data)
    url = cache or s.cache

    try:
        with open_cache(url) as c, RichProgress() as p:
            rep = run(s, c, version=version, progress=p, engine=engine, address=address,
                      workers=workers, cache_url=url, shard_users=shard_users)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"version {rep.version}: {rep.users:,} pages ({rep.personal:,} personal, "
                  f"{rep.cold_start:,} cold start) in {rep.seconds:.1f} s = {rep.users_per_s:,.0f} users/s "
                  f"({rep.users / max(rep.cpu_seconds, 1e-9):,.0f} per CPU second of this process); "
                  f"page {rep.page_bytes_mean:.0f} B mean, {rep.page_bytes_max} B max; "
                  f"genre-cap violations {rep.genre_cap_violations}, kind mix off "
                  f"{rep.kind_mix_off_by_more_than_one} of {rep.kind_mix_checked}; slots {rep.slot_counts}")
    console.print(f"engine {rep.engine}: {rep.workers} worker(s), {rep.shards} shards; prepare "
                  f"{rep.prepare_seconds:.1f} s, compose {rep.compose_seconds:.1f} s = "
                  f"{rep.compose_users_per_s:,.0f} users/s")
    console.print(f"cache: {url}")


@app.command()
def homepage(user_id: str = typer.Argument(...), data: Optional[Path] = DataOpt,
             cache: Optional[str] = typer.Option(None, help="cache URL (default: memory snapshot in DIR)"),
             region: Optional[str] = typer.Option(None, help="request region (default: the user's)"),
             device: Optional[str] = typer.Option(
                 None, help="the request's device (tv, mobile, tablet, web): the page is composed now "
                            "for it (default: the cached page)"),
             hour: Optional[int] = typer.Option(
                 None, min=0, max=23,
                 help="the request's local hour: the page is composed now for it (default: the cached page)"),
             as_json: bool = typer.Option(False, "--json", help="the API's JSON document")):
    """Print a user's homepage as a person would read it, or as the API's JSON.

    Without --device and --hour this is the cached page, composed for the user's own latest
    session. With either, the page is composed now for that request (the speed layer's code,
    the user's training row plus their online events) and nothing is written."""
    from reelrec.homepage import HomepageReader
    from reelrec.storage.cache import open_cache
    from reelrec.domain.users import DEVICES
    if device is not None:
        if device.lower() not in DEVICES:
            fail(InvalidInput(FieldError("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")))
        device = device.lower()
    s = settings_for(data)
    region = region or _user_region(s, user_id)
    try:
        with open_cache(cache or s.cache) as c:
            reader = HomepageReader(s, c)
            if device is None and hour is None:
                doc = reader.read(user_id, region=region)
            else:
                from reelrec.speed.layer import SpeedLayer
                from reelrec.storage.state import open_state
                with open_state(s.state_url) as st:
                    layer = SpeedLayer(s, c, st, reader=reader)
                    model = layer.model()
                    page = layer.pages([user_id], model, request=(device, hour),
                                       region=region)[user_id]
                    doc = model.document(page)
                if not as_json:
                    console.print(f"composed now for {device or 'any device'}"
                                  f"{f' at {hour:02d}:00' if hour is not None else ''}"
                                  f"{f' in {region}' if region else ''}; not the cached page")
    except ReelrecError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    print_page(doc)


def _user_region(s, user_id: str) -> Optional[str]:
    import pyarrow.compute as pc
    from reelrec.domain.users import load_users
    try:
        t = load_users(s.data_dir)
    except NotFound:
        return None
    hit = t.filter(pc.equal(t.column("user_id"), user_id))
    return hit.column("region")[0].as_py() if hit.num_rows else None


def print_page(doc: dict) -> None:
    badge = {"explore": "[magenta]explore[/magenta]", "novel": "[cyan]new to you[/cyan]", "exploit": ""}
    console.print(f"[bold]{doc['user_id']}[/bold]  mode={doc['mode']}  model={doc['model_version']}  "
                  f"generated {doc['generated_at']}")
    for shelf in doc["shelves"]:
        console.rule(f"[bold]{shelf['title']}[/bold]", align="left")
        for i, it in enumerate(shelf["items"], 1):
            console.print(f"{i:>2}. {it['name']}  [dim]{it['kind']} · {', '.join(it['genres'])}[/dim] "
                          f"{badge.get(it['slot_kind'], '')}  [italic]{it['reason']}[/italic]",
                          highlight=False)


# --- workers (ingest: the aggregator; the speed worker joins worker_app) -------------------------
worker_app = typer.Typer(no_args_is_help=True,
                         help="Long-running consumers of the event bus (distributed mode).")
app.add_typer(worker_app, name="worker")


@worker_app.command("aggregate")
def worker_aggregate(
    bus: Optional[str] = typer.Option(None, "--bus", help="event bus URL, e.g. kafka://host:9092 "
                                                          "(default REELREC_BUS_URL)"),
    data: Optional[Path] = DataOpt,
    group: str = typer.Option("reelrec-aggregate", "--group", help="consumer group"),
    max_batch: int = typer.Option(10_000, "--max-batch", min=1, max=1_000_000,
                                  help="messages per Parquet file, at most"),
    max_wait_s: float = typer.Option(1.0, "--max-wait-s", min=0.001,
                                     help="longest wait to fill a batch after its first message"),
    max_idle_s: Optional[float] = typer.Option(None, "--max-idle-s", min=0.0,
                                               help="exit after this long with nothing to do "
                                                    "(default: run until SIGTERM/SIGINT)"),
    progress_every_s: float = typer.Option(10.0, "--progress-every-s", min=0.1),
):
    """Move events from the bus to the lake in micro-batches; commit only after the Parquet
    file is durable. Stops cleanly on SIGTERM/SIGINT. Progress goes to the log (REELREC_LOG_LEVEL=INFO)."""
    from reelrec.config import load_settings
    from reelrec.service import bus_url_of
    from reelrec.storage.bus import MemoryBus, open_bus
    from reelrec.storage.lake import open_lake
    from reelrec.workers import progress_logging, stop_on_signals
    from reelrec.workers.aggregate import Aggregator, CatalogWatch
    progress_logging()
    s = load_settings(data_dir=data, bus_url=bus)
    try:
        b = open_bus(bus_url_of(s))
        if isinstance(b, MemoryBus):
            raise InvalidInput("an in-process bus is empty in a worker process of its own: in "
                               "embedded mode the API writes the lake itself; give --bus "
                               "kafka://host:port", field="bus")
        agg = Aggregator(b, open_lake(s.lake), catalog=CatalogWatch(s.data_dir), group=group,
                         max_batch=max_batch, max_wait_s=max_wait_s,
                         future_tolerance_s=s.future_tolerance_s, progress_every_s=progress_every_s)
        stats = agg.run(stop_on_signals(), max_idle_s=max_idle_s)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"aggregated {stats.messages:,} messages: {stats.written:,} rows written, "
                  f"{stats.dead_lettered:,} dead-lettered, {stats.batches:,} batches")


@worker_app.command("speed")
def worker_speed(bus: Optional[str] = typer.Option(None, help="event bus URL, e.g. kafka://host:9092 "
                                                          "(default REELREC_BUS_URL)"),
                 cache: Optional[str] = typer.Option(None, help="homepage cache URL, e.g. redis://host:6379/0 "
                                                            "(default REELREC_CACHE_URL)"),
                 state: Optional[str] = typer.Option(None, help="online state URL, e.g. redis://host:6379/0 "
                                                            "(default REELREC_STATE_URL)"),
                 data: Optional[Path] = DataOpt,
                 group: str = typer.Option("speed", help="consumer group; workers of one group share "
                                                         "the partitions"),
                 max_batch: int = typer.Option(500, min=1, help="events per micro-batch at most"),
                 progress_every_s: float = typer.Option(10.0, "--progress-every-s", min=0.1)):
    """Apply events to the online state and rewrite each touched user's page in the cache.
    Commits after the pages are written; stops cleanly on SIGTERM/SIGINT."""
    from reelrec.service import bus_url_of
    from reelrec.speed.layer import SpeedLayer
    from reelrec.speed.worker import run_speed
    from reelrec.storage.bus import MemoryBus, open_bus
    from reelrec.storage.cache import open_cache
    from reelrec.storage.state import open_state
    from reelrec.workers import progress_logging, stop_on_signals
    progress_logging()
    stop = stop_on_signals()
    try:
        s = settings_for(data, bus_url=bus, cache_url=cache, state_url=state)
        with open_bus(bus_url_of(s)) as b, open_cache(s.cache) as c, open_state(s.state_url) as st:
            if isinstance(b, MemoryBus):
                raise InvalidInput("an in-process bus is empty in a worker process of its own: in "
                                   "embedded mode the API runs the speed layer itself; give --bus "
                                   "kafka://host:port", field="bus")
            stats = run_speed(SpeedLayer(s, c, st), b, stop, group=group, max_batch=max_batch,
                              progress_every_s=progress_every_s)
    except ReelrecError as exc:
        fail(exc)
    console.print(f"speed worker stopped: {stats.events:,} events, {stats.duplicates:,} already "
                  f"applied, {stats.pages:,} pages rewritten, {stats.dead_lettered:,} dead-lettered")


def main() -> None:
    from reelrec.log import setup_logging
    setup_logging()
    try:
        app()
    except InvalidInput as exc:
        err_console.print(f"[red]invalid input:[/red] {escape(str(exc))}", emoji=False)
        sys.exit(2)
    except ReelrecError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", emoji=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
