"""Scale run: simulate, train, precompute and serve one simulated world, stage by stage, with the
wall time, CPU time and peak RSS of each (docs/scaling.md).

    python benchmarks/scale_run.py --data /tmp/scale-world --users 1000000 --titles 100000 --days 1 \\
        --redis redis://127.0.0.1:PORT/0 --sample-users 100000
    python benchmarks/scale_run.py --stages serve --data /tmp/scale-world --redis redis://...   # one stage
    python benchmarks/scale_run.py --table --log-prefix /tmp/scale-     # print the table from the logs
    python benchmarks/scale_run.py --quick      # 2,000 x 500 x 1 in a temporary folder: smoke test

Every stage runs as its own process under ``nice -n 10 /usr/bin/time -v`` (the machine is
shared), with its output in ``<log-prefix><stage>.log``; the table reads wall time, user + system
CPU time and peak RSS from those logs, so a stage run by hand the same way shows up too.

* simulate: ``reelrec simulate --users --titles --days --seed``.
* train: ``reelrec.batch.train.train`` as ``reelrec train --no-tune`` runs it (the nightly build,
  no grid search), with a line per step (wall and CPU seconds); ``--ranker-windows`` and
  ``--ranker-users`` (default 3 and 20,000, the library's defaults) bound the ranker's share.
* precompute: ``reelrec.batch.precompute.precompute`` into the Redis cache, engine local, with a
  progress line every 10 s. ``--sample-users N`` composes a seeded random sample of N users
  (users with and without history in their proportions) after building every user's profile, and
  extrapolates the compose phase linearly to all users: the profiles, the model load and the
  shared shelves are done in full, the pages for the sample only. The sampled user ids go to
  ``<log-prefix>sample-users.txt`` for the serve stage.
* serve: ``reelrec serve`` on the Redis cache as an API process of the distributed shape
  (``REELREC_BUS_URL=kafka://...``: no speed layer in process, nothing connects to Kafka for
  reads), then a homepage load (an asyncio HTTP load generator in another process, closed loop,
  ``--connections`` at a time, ``--seconds``) over the precomputed users in random order: requests/s,
  p50/p99, the server's CPU per request; Redis ``used_memory`` and key count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import free_port, say, wait_port  # noqa: E402

STAGES = ("simulate", "train", "precompute", "serve")


# --- stages as processes --------------------------------------------------------------------------
def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def _timed_argv(argv: list[str], nice: int) -> list[str]:
    return ["nice", "-n", str(nice), "/usr/bin/time", "-v", *argv]


def run_stage(stage: str, argv: list[str], prefix: str, nice: int, env: dict | None = None) -> int:
    log = Path(f"{prefix}{stage}.log")
    say(f"[{time.strftime('%H:%M:%S')}] {stage}: {' '.join(argv)}  (log {log})")
    with open(log, "w") as f:
        rc = subprocess.run(_timed_argv(argv, nice), stdout=f, stderr=subprocess.STDOUT, env=_env(env)).returncode
    t = parse_time(log)
    say(f"[{time.strftime('%H:%M:%S')}] {stage}: rc {rc}, {t}")
    return rc


_TIME = {"wall_s": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
         "user_s": r"User time \(seconds\): ([\d.]+)",
         "sys_s": r"System time \(seconds\): ([\d.]+)",
         "peak_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
         "exit": r"Exit status: (\d+)"}


def parse_time(log: Path) -> dict:
    """Wall, CPU and peak RSS from the ``/usr/bin/time -v`` block at the end of a stage's log."""
    if not log.exists():
        return {}
    text = log.read_text(errors="replace")
    out: dict = {}
    for k, rx in _TIME.items():
        m = re.findall(rx, text)
        if not m:
            continue
        v = m[-1]
        if k == "wall_s":
            parts = [float(x) for x in v.split(":")]
            out[k] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        else:
            out[k] = float(v)
    if "user_s" in out:
        out["cpu_s"] = out["user_s"] + out.get("sys_s", 0.0)
    if "peak_rss_kb" in out:
        out["peak_rss_gib"] = out["peak_rss_kb"] / 2**20
    return out


def _results(prefix: str, stage: str) -> dict:
    """The JSON line a stage's own code printed (``SCALE_JSON {...}``), if any."""
    log = Path(f"{prefix}{stage}.log")
    if not log.exists():
        return {}
    m = re.findall(r"^SCALE_JSON (\{.*\})$", log.read_text(errors="replace"), re.M)
    return json.loads(m[-1]) if m else {}


# --- train (runs in its own process) --------------------------------------------------------------
class StepLog:
    """train's progress as lines: each step's start and end with wall and CPU seconds, and a line
    every ``every_s`` seconds inside long steps."""

    def __init__(self, every_s: float = 30.0):
        self.every_s, self.timings, self.cpu = every_s, {}, {}

    @contextmanager
    def step(self, name: str, total: int | None = None):
        t0, c0 = time.perf_counter(), time.process_time()
        done, last = [0], [t0]
        say(f"[{time.strftime('%H:%M:%S')}] train: {name} ({total or 1:,})")

        def advance(n=1):
            done[0] += n
            now = time.perf_counter()
            if now - last[0] >= self.every_s:
                last[0] = now
                say(f"[{time.strftime('%H:%M:%S')}] train: {name} {done[0]:,}/{total or 1:,}, "
                    f"{now - t0:,.0f} s, {time.process_time() - c0:,.0f} CPU s")
        try:
            yield advance
        finally:
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            self.timings[name] = self.timings.get(name, 0.0) + wall
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu
            say(f"[{time.strftime('%H:%M:%S')}] train: {name} done in {wall:,.1f} s, {cpu:,.1f} CPU s, "
                f"load {os.getloadavg()[0]:.1f}")


def train_main(args) -> None:
    from reelrec.batch.pipeline import PipelineConfig
    from reelrec.batch.train import train
    from reelrec.config import load_settings
    from reelrec.rank.ranker import RankerParams

    s = load_settings(data_dir=args.data)
    cfg = PipelineConfig(tune=False, ranker=RankerParams(windows=args.ranker_windows,
                                                         max_users=args.ranker_users))
    prog = StepLog()
    res = train(s, cfg, progress=prog)
    m = res.manifest
    print("SCALE_JSON " + json.dumps({
        "version": res.version, "published": res.published, "seconds": round(res.seconds, 1),
        "counts": m["counts"], "data": m["data"], "metrics": m["metrics"],
        "ranker_windows": args.ranker_windows, "ranker_users": args.ranker_users,
        "steps_wall_s": {k: round(v, 1) for k, v in prog.timings.items()},
        "steps_cpu_s": {k: round(v, 1) for k, v in prog.cpu.items()}}), flush=True)


# --- precompute (runs in its own process) ---------------------------------------------------------
class TextProgress:
    """precompute's progress as a line every ``every_s`` seconds: done, rate, ETA."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self.total, self.done = every_s, 0, 0
        self.t0 = self.last = time.perf_counter()
        self.c0 = time.process_time()

    @contextlib.contextmanager
    def step(self, name: str, total: int):
        """The ``reelrec.batch.progress`` protocol: one step, ``advance(n)`` within it."""
        self.total, self.unit = total, name.split()[-1]
        self.t0 = self.last = time.perf_counter()
        self.c0 = time.process_time()
        say(f"{name}: {total:,} to compose")
        yield self.advance

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            el, cpu = now - self.t0, time.process_time() - self.c0
            rate = self.done / el if el else 0.0
            eta = (self.total - self.done) / rate if rate else float("nan")
            say(f"precompute: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%), "
                f"{rate:,.0f}/s wall, {self.done / max(cpu, 1e-9):,.0f}/CPU-s, {el:,.0f} s, "
                f"ETA {eta:,.0f} s, load {os.getloadavg()[0]:.1f}")


def precompute_main(args) -> None:
    import numpy as np
    import redis

    import reelrec.batch.precompute as pc
    from reelrec.config import load_settings
    from reelrec.storage.cache import open_cache, page_key

    s = load_settings(data_dir=args.data)
    info: dict = {}
    full_plan = pc.plan

    def sampled_plan(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        p = full_plan(*a, **k)
        info.update(plan_s=time.perf_counter() - t0, plan_cpu_s=time.process_time() - c0,
                    users_total=p.n_users, with_history_total=len(p.with_history))
        say(f"precompute: plan (model, profiles of {p.n_users:,} users) in {info['plan_s']:.1f} s "
            f"({info['plan_cpu_s']:.1f} CPU s)")
        n = args.sample_users
        if not n or n >= p.n_users:
            return p
        rng = np.random.default_rng(args.seed)
        kh = round(n * len(p.with_history) / p.n_users)
        wh = [p.with_history[i] for i in np.sort(rng.choice(len(p.with_history), kh, replace=False))]
        wo = [p.without[i] for i in np.sort(rng.choice(len(p.without), n - kh, replace=False))]
        return pc.Plan(p.model, p.profiles, wh, wo)

    pc.plan = sampled_plan
    r = redis.Redis.from_url(args.cache)
    mem0, keys0 = r.info("memory")["used_memory"], r.dbsize()
    cache = open_cache(args.cache)
    rep = pc.precompute(s, cache, progress=TextProgress(), engine="local")
    mem1, keys1 = r.info("memory")["used_memory"], r.dbsize()
    version = cache.current_version()
    # MEMORY USAGE of ~1,000 of the real pages
    ids = [line for line in _sample_ids(rep, cache, s, args)]
    Path(f"{args.log_prefix}sample-users.txt").write_text("\n".join(ids) + "\n")
    probe = ids[:: max(1, len(ids) // 1000)]
    usage = [r.memory_usage(cache._k(version, page_key(u))) for u in probe]
    usage = [u for u in usage if u]
    ratio = info["users_total"] / rep.users
    out = {
        "version": version, "users_total": info["users_total"], "with_history_total": info["with_history_total"],
        "users_composed": rep.users, "personal": rep.personal, "cold_start": rep.cold_start,
        "plan_s": round(info["plan_s"], 1), "plan_cpu_s": round(info["plan_cpu_s"], 1),
        "prepare_s": round(rep.prepare_seconds, 1), "compose_s": round(rep.compose_seconds, 1),
        "compose_cpu_s": round(rep.shard_cpu_seconds, 1), "seconds": round(rep.seconds, 1),
        "cpu_s": round(rep.cpu_seconds, 1),
        "users_per_compose_cpu_s": round(rep.users / max(rep.shard_cpu_seconds, 1e-9), 1),
        "page_bytes_mean": round(rep.page_bytes_mean, 1), "page_bytes_max": rep.page_bytes_max,
        "redis_used_memory_before": mem0, "redis_used_memory_after": mem1,
        "redis_keys_before": keys0, "redis_keys_after": keys1,
        "redis_bytes_per_page": round((mem1 - mem0) / max(keys1 - keys0, 1), 1),
        "memory_usage_per_page_median": float(np.median(usage)) if usage else None,
        "sample_ratio": round(ratio, 3),
        "extrapolated_compose_s": round(rep.compose_seconds * ratio, 1),
        "extrapolated_compose_cpu_s": round(rep.shard_cpu_seconds * ratio, 1),
        "extrapolated_seconds": round(rep.prepare_seconds + rep.compose_seconds * ratio, 1),
        "extrapolated_redis_bytes": round(mem0 + (mem1 - mem0) * ratio),
        "genre_cap_violations": rep.genre_cap_violations,
        "load_1min_end": os.getloadavg()[0],
    }
    print("SCALE_JSON " + json.dumps(out), flush=True)


def _sample_ids(rep, cache, s, args) -> list[str]:
    """The users whose pages this run wrote (read back from Redis keys of the version)."""
    import redis
    r = redis.Redis.from_url(args.cache)
    version = cache.current_version()
    prefix = cache._k(version, "u:")
    ids = []
    for k in r.scan_iter(match=prefix + "*", count=10_000):
        ids.append(k.decode()[len(prefix):])
    return ids


# --- serve ----------------------------------------------------------------------------------------
def serve_stage(args, prefix: str) -> int:
    import numpy as np
    import psutil
    import redis

    from bench_serving import python_run

    port = free_port()
    ids = Path(f"{prefix}sample-users.txt").read_text().split()
    rng = np.random.default_rng(args.seed)
    paths = [f"/v1/users/{ids[i]}/homepage" for i in rng.permutation(len(ids))[:200_000]]
    env = {"REELREC_CACHE_URL": args.redis, "REELREC_BUS_URL": "kafka://127.0.0.1:9?timeout_s=1",
           "REELREC_LOG_LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "reelrec.cli", "serve", "--data", str(args.data), "--port", str(port),
            "--retrain-interval-s", "0"]
    log = Path(f"{prefix}serve.log")
    say(f"[{time.strftime('%H:%M:%S')}] serve: {' '.join(argv)}  (log {log})")
    f = open(log, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(_timed_argv(argv, args.nice), stdout=f, stderr=subprocess.STDOUT, env=_env(env))
    wait_port(port, proc, "reelrec serve", deadline_s=900)
    started = time.perf_counter() - t0
    server = next(c for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name())
    rds = redis.Redis.from_url(args.redis)
    out: dict = {"start_s": round(started, 1)}
    # the first read loads the model version (hot swap path): time it, then warm up
    import urllib.request
    t1 = time.perf_counter()
    urllib.request.urlopen(f"http://127.0.0.1:{port}{paths[0]}", timeout=900).read()
    out["first_read_s"] = round(time.perf_counter() - t1, 2)
    for p in paths[1:50]:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=60).read()
    out["rss_before_gib"] = round(server.memory_info().rss / 2**30, 2)
    tmp = Path(tempfile.mkdtemp(prefix="scale-load-"))
    runs = []
    for i in range(args.repeats):
        for conns in args.connections:
            c0 = sum(server.cpu_times()[:2])
            rc0 = rds.info("cpu")
            load = os.getloadavg()[0]
            res = python_run(port, paths[i::args.repeats], args.seconds, conns, tmp)
            cpu = sum(server.cpu_times()[:2]) - c0
            rc1 = rds.info("cpu")
            rcpu = (rc1["used_cpu_user"] + rc1["used_cpu_sys"]) - (rc0["used_cpu_user"] + rc0["used_cpu_sys"])
            res.update(connections=conns, server_cpu_ms_per_request=1e3 * cpu / max(res["requests"], 1),
                       redis_cpu_ms_per_request=1e3 * rcpu / max(res["requests"], 1), load_1min=load)
            res = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
            say(f"serve: {conns} connections: {res}")
            runs.append(res)
    out["runs"] = runs
    out["rss_after_gib"] = round(server.memory_info().rss / 2**30, 2)
    mem = rds.info("memory")
    out.update(redis_used_memory=mem["used_memory"], redis_used_memory_human=mem["used_memory_human"],
               redis_keys=rds.dbsize())
    server.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        proc.wait()
    f.close()
    with open(log, "a") as f:
        f.write("SCALE_JSON " + json.dumps(out) + "\n")
    say(f"[{time.strftime('%H:%M:%S')}] serve: {json.dumps(out)}")
    return 0


# --- the table ------------------------------------------------------------------------------------
def table(prefix: str) -> str:
    rows = ["| stage | wall s | CPU s (user + sys) | peak RSS GiB |", "|---|---:|---:|---:|"]
    for st in STAGES:
        t = parse_time(Path(f"{prefix}{st}.log"))
        if t:
            rows.append(f"| {st} | {t.get('wall_s', 0):,.1f} | {t.get('cpu_s', 0):,.1f} "
                        f"| {t.get('peak_rss_gib', 0):.2f} |")
    lines = ["\n".join(rows)]
    pre = _results(prefix, "precompute")
    if pre:
        lines.append("precompute: " + json.dumps(pre, indent=1))
    srv = _results(prefix, "serve")
    if srv:
        lines.append("serve: " + json.dumps(srv, indent=1))
    return "\n\n".join(lines)


def report(args, stages: list[str], prefix: str):
    """The ``make bench`` rows of a run: each stage's wall time, CPU time and peak RSS (from its
    ``/usr/bin/time -v`` block), the precompute's and the serve stage's own figures."""
    from _report import Report
    world = f"{args.users:,} users x {args.titles:,} titles x {args.days} day{'s' if args.days > 1 else ''}"
    rep = Report("bench_scale", f"Scale: simulate, train, precompute and serve {world}", quick=args.quick)
    for st in stages:
        t = parse_time(Path(f"{prefix}{st}.log"))
        # a figure the stage's time block lacks is left out, not written as 0
        for key, what, unit in (("wall_s", "wall time", "s"), ("cpu_s", "CPU time (user + sys)", "s"),
                                ("peak_rss_gib", "peak RSS", "GiB")):
            if key in t:
                rep.value(f"{st}: {what}", t[key], unit)
    pre = _results(prefix, "precompute")
    if pre:
        rep.value("precompute: users (pages composed)", pre["users_composed"], "users")
        rep.value("precompute: pages, users per CPU-second (compose phase)", pre["users_per_compose_cpu_s"],
                  "users/CPU-s")
        sampled = pre.get("sample_ratio", 1) != 1
        if not sampled:  # a sample's process still builds every profile: no per-user figure for it
            rep.value("precompute: users per CPU-second, whole process (model load, profiles, pages, writes)",
                      pre["users_composed"] / max(pre["cpu_s"], 1e-9), "users/CPU-s")
        if pre.get("memory_usage_per_page_median"):
            rep.value("Redis MEMORY USAGE per user page (median of ~1,000)", pre["memory_usage_per_page_median"],
                      "bytes")
        rep.value("genre-cap violations over the pages composed", pre["genre_cap_violations"], "pages")
        if sampled:
            rep.note(f"precompute composed a sample of {pre['users_composed']:,} of {pre['users_total']:,} users "
                     f"and extrapolates: {pre['extrapolated_seconds']:,} s for all of them.")
    srv = _results(prefix, "serve")
    for r in srv.get("runs", []):
        c = r["connections"]
        rep.value(f"serve: GET homepage, {c} connections: requests/s", r["rps"], "req/s")
        rep.value(f"serve: GET homepage, {c} connections: p99", r["p99"], "ms")
        rep.value(f"serve: GET homepage, {c} connections: API server CPU per request",
                  r["server_cpu_ms_per_request"], "ms")
    if srv:
        rep.value("serve: Redis used_memory after precompute", srv["redis_used_memory"] / 2**20, "MiB")
        rep.value("serve: API RSS after the load", srv["rss_after_gib"], "GiB")
    rep.note("Each stage is its own process under `nice -n 10 /usr/bin/time -v` (docs/scaling.md); "
             "train is `reelrec train --no-tune`'s pipeline, the nightly build.")
    return rep


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "redis-server", deadline_s=60)
    return proc, f"redis://127.0.0.1:{port}/0"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--titles", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--redis", help="redis:// URL of a Redis for the cache (default: start one)")
    ap.add_argument("--sample-users", type=int, default=0, help="precompute a sample of users, extrapolate")
    ap.add_argument("--log-prefix", default="/tmp/scale-")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--connections", type=int, nargs="+", default=[16, 4])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the table from the logs and exit")
    ap.add_argument("--quick", action="store_true", help="2,000 x 500 x 1 in a temporary folder")
    ap.add_argument("--ranker-windows", type=int, default=3, help="label windows for the ranker (train)")
    ap.add_argument("--ranker-users", type=int, default=20_000, help="ranker users per window (train)")
    ap.add_argument("--precompute-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--train-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None,
                    help="write the stages' figures for make bench here (benchmarks/_report.py)")
    args = ap.parse_args(argv)

    if args.precompute_process:
        return precompute_main(args)
    if args.train_process:
        return train_main(args)
    if args.table:
        print(table(args.log_prefix))
        return
    redis_proc = None
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="scale-quick-"))
        args.data, args.users, args.titles, args.days = tmp / "world", 2000, 500, 1
        args.log_prefix, args.sample_users = str(tmp / "scale-"), 500
        args.seconds, args.repeats, args.connections = 2.0, 1, [4]
    if args.data is None:
        sys.exit("--data DIR is required (or --quick)")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if ("precompute" in stages or "serve" in stages) and not args.redis:
        redis_proc, args.redis = start_redis(Path(f"{args.log_prefix}redis"))
        say(f"redis-server on {args.redis}")
    py = sys.executable
    prefix = args.log_prefix
    try:
        if "simulate" in stages:
            if run_stage("simulate", [py, "-m", "reelrec.cli", "simulate", "--users", str(args.users),
                                      "--titles", str(args.titles), "--days", str(args.days),
                                      "--seed", str(args.seed), "--data", str(args.data)], prefix, args.nice):
                sys.exit("simulate failed")
        if "train" in stages:
            if run_stage("train", [py, __file__, "--train-process", "--data", str(args.data),
                                   "--ranker-windows", str(args.ranker_windows),
                                   "--ranker-users", str(args.ranker_users)], prefix, args.nice):
                sys.exit("train failed")
        if "precompute" in stages:
            if run_stage("precompute", [py, __file__, "--precompute-process", "--data", str(args.data),
                                        "--cache", args.redis, "--sample-users", str(args.sample_users),
                                        "--seed", str(args.seed), "--log-prefix", prefix], prefix, args.nice):
                sys.exit("precompute failed")
        if "serve" in stages:
            serve_stage(args, prefix)
        print(table(prefix))
        if args.json:
            report(args, stages, prefix).write(args.json)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()


if __name__ == "__main__":
    main()
