"""Smoke test of ``make bench``: every benchmarks/bench_*.py runs in --quick mode through
benchmarks/run.py, writes its result file, and the generated markdown holds its section.

Sizes are cut further than --quick where a script allows it (the whole suite has a time budget);
the serving benchmark serves a copy of the session's tiny trained world instead of training one.
Figures are not checked (benchmarks are not timed tests); that each script ran, measured what it
claims and reported it is.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALLER = {  # beyond --quick, to keep this test short
    "bench_ingest": "--events 4000 --api-batches 2",
    "bench_lake": "--events 40000 --batch 10000",
    "bench_cache": "--users 500 --reads 500",
}


def test_every_benchmark_runs_quick_and_is_rendered(tmp_path, tiny_world):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from run import scripts, takes_json
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    names = [s.stem for s in scripts()]
    assert {"bench_serving", "bench_cache", "bench_ingest", "bench_sim"} <= set(names)
    extra = dict(SMALLER, bench_serving=f"--data {tiny_world.data_dir}")
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--results", str(out), "--timeout", "300"]
    for name, more in extra.items():
        cmd += ["--args", f"{name}={more}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    doc = (out / "benchmarks.md").read_text()
    for name in names:
        result = json.loads((out / f"{name}.json").read_text())
        assert "failed" not in result, (name, result.get("output_tail"))
        assert result["quick"] is True and result["machine"]["nproc"] >= 1
        if takes_json(REPO / "benchmarks" / f"{name}.py"):
            assert result["rows"], name
            for row in result["rows"]:
                assert row["lo"] <= row["median"] <= row["hi"], (name, row)
            assert f"`{result['command']}`" in doc, name
        assert f"### {result['title']}" in doc

    serving = json.loads((out / "bench_serving.json").read_text())
    measures = {r["measure"]: r for r in serving["rows"]}
    for needed in ("GET homepage, memory cache", "GET homepage, redis cache", "baseline (floor)",
                   "baseline: redis-benchmark MGET", "paced at ~70% of peak: p99",
                   "API RSS after the load", "MEMORY USAGE per user page", "MEMORY USAGE per user vector",
                   "RSS of `reelrec worker speed`", "RSS of `reelrec worker aggregate`"):
        assert any(needed in m for m in measures), needed
    assert all(v == 0 for v in _errors(serving).values()), _errors(serving)
    assert serving["details"]["modes_of_first_pages"].get("personal", 0) > 0
    # the workers consumed the burst: the lake holds it and the speed layer rewrote pages
    assert not [n for n in serving["notes"] if "had not consumed" in n], serving["notes"]
    # and the speed worker's summary says it dead-lettered nothing (the CLI prints it on one line)
    speed = serving["details"]["worker_speed_last_line"]
    assert re.search(r"^speed worker stopped: .*pages rewritten, 0 dead-lettered$", speed), speed


def _errors(result: dict) -> dict:
    return {k: sum(x.get("errors", 0) for x in v) for k, v in result["details"]["runs"].items()}
