"""Screenshots of the web interface for the README: ``python -m reelrec.serve.screenshots``.

Builds a small simulated world in a temporary folder (simulate, train, precompute), serves it
with the real app on a loopback port, drives Debian's Chromium through the homepage preview (a
watch included), onboarding and the dashboard, and writes homepage.png, onboarding.png and
dashboard.png into ``--out`` (default docs/screenshots).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
from pathlib import Path

from reelrec.config import Settings, load_settings
from reelrec.serve.browser import chromium, serve_in_thread

VIEWPORT = {"width": 1440, "height": 1000}


def build_world(data_dir: Path | str, users: int = 300, titles: int = 200, days: int = 3,
                seed: int = 3, report: bool = False) -> Settings:
    """A small world with a published model and precomputed pages, ready to serve; with
    ``report``, also an evaluation report under ``<data>/reports/temporal``."""
    from reelrec.batch.pipeline import PipelineConfig
    from reelrec.batch.train import train
    from reelrec.recall.als import ALSParams
    from reelrec.sim.world import SimConfig, simulate
    settings = load_settings(data_dir=Path(data_dir))
    simulate(SimConfig(users=users, titles=titles, days=days, seed=seed, progress=False), settings)
    from reelrec.rank.ranker import RankerParams
    # a small model: the pages only need to be real, not tuned
    train(settings, PipelineConfig(als=ALSParams(factors=16, iterations=8), tune=False,
                                   ranker=RankerParams(rounds=60, early_stopping=10)))
    from reelrec.batch.precompute import precompute
    from reelrec.storage.cache import open_cache
    with open_cache(settings.cache) as cache:
        precompute(settings, cache)
    if report:
        from reelrec.eval.harness import evaluate
        from reelrec.eval.report import write_report
        doc = evaluate(settings, "temporal", k=10, seeds=1,
                       models=["popularity", "als", "covisit", "reelrec-ranker"])
        write_report(doc, settings.data_dir / "reports" / "temporal")
    return settings


@contextlib.contextmanager
def activity(base: str, settings: Settings, per_s: float = 40.0, seed: int = 0):
    """Plays and impressions from random users through POST /v1/events while the block runs, so
    that the dashboard's live counters have something to count."""
    import datetime as dt
    import httpx
    import numpy as np
    from reelrec.domain.catalog import Catalog
    from reelrec.domain.users import load_users
    rng = np.random.default_rng(seed)
    users = load_users(settings.data_dir).column("user_id").to_pylist()
    titles = Catalog.load(settings.data_dir).table.column("title_id").to_pylist()
    stop = threading.Event()

    def run():
        n = 0
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                ts = dt.datetime.now(dt.timezone.utc).isoformat()
                batch = [{"event_id": f"shot-{seed}-{n + i}", "user_id": users[rng.integers(len(users))],
                          "title_id": titles[rng.integers(len(titles))], "type": "play_start", "ts": ts}
                         for i in range(int(per_s // 4))]
                n += len(batch)
                client.post("/v1/events", json=batch)
                stop.wait(0.25)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def busiest_user(settings: Settings) -> str:
    """The user with the most play events: the richest page to look at."""
    import pyarrow.compute as pc
    from reelrec.storage.lake import open_lake
    t = open_lake(settings.lake).scan(columns=["user_id"], types=["play_start", "complete"])
    counts = pc.value_counts(t.column("user_id"))
    i = int(pc.index(counts.field("counts"), pc.max(counts.field("counts"))).as_py())
    return counts.field("values")[i].as_py()


def capture(base: str, out: Path, browser, user: str, settings: Settings | None = None) -> list[Path]:
    """Drive the three pages and save one screenshot of each."""
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    written = []

    page.goto(f"{base}/?user={user}&device=tv&hour=21")
    page.wait_for_selector(".shelf[data-shelf='top-picks'] .card")
    page.click(".shelf[data-shelf='top-picks'] li:nth-child(2) .card")
    page.click("dialog [data-action='complete']")
    page.wait_for_selector("#update[data-state='done'], #update[data-state='failed']", timeout=20_000)
    page.mouse.move(0, 0)
    page.focus(".shelf[data-shelf='top-picks'] li:nth-child(1) .card")
    page.keyboard.press("ArrowRight")  # keyboard focus: the ring and the reason show
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(400)  # the reason fades in
    page.screenshot(path=out / "homepage.png")
    written.append(out / "homepage.png")

    page.goto(f"{base}/onboarding?user=new-screenshot&device=mobile&hour=22&region=IN")
    page.wait_for_selector(".chip")
    for chip in page.locator(".chip").all()[:3]:
        chip.click()
    page.click("#submit")
    page.wait_for_selector("#shelves .card")
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(400)
    page.screenshot(path=out / "onboarding.png")
    written.append(out / "onboarding.png")

    with activity(base, settings) if settings else contextlib.nullcontext():
        page.goto(f"{base}/dashboard")
        page.wait_for_selector("#live .tile")
        page.wait_for_timeout(9000)  # a few readings of the counters draw the rate line
        page.screenshot(path=out / "dashboard.png", full_page=True)
    written.append(out / "dashboard.png")
    page.close()
    return written


def main(argv: list[str] | None = None) -> None:
    from reelrec.serve.api import create_app
    ap = argparse.ArgumentParser(description="Write screenshots of the web interface over a small simulated world.")
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"), help="folder for the PNG files")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reelrec-shots-") as tmp:
        settings = build_world(Path(tmp) / "simulated-world", report=True)
        with serve_in_thread(create_app(settings)) as base, chromium() as browser:
            for p in capture(base, args.out, browser, busiest_user(settings), settings):
                print(f"wrote {p}")


if __name__ == "__main__":
    main()
