"""Screenshots of the web interface for the README: ``python -m reelrec.serve.screenshots``.

Builds a small simulated world in a temporary folder (simulate, train, precompute), serves it
with the real app on a loopback port, drives Debian's Chromium through the homepage preview (a
watch included), onboarding and the dashboard, and writes homepage.png, onboarding.png and
dashboard.png into ``--out`` (default docs/screenshots).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from reelrec.config import Settings, load_settings
from reelrec.serve.browser import chromium, serve_in_thread

VIEWPORT = {"width": 1440, "height": 1000}


def build_world(data_dir: Path | str, users: int = 300, titles: int = 200, days: int = 3,
                seed: int = 3) -> Settings:
    """A small world with a published model and precomputed pages, ready to serve."""
    from reelrec.batch.pipeline import PipelineConfig
    from reelrec.batch.train import train
    from reelrec.recall.als import ALSParams
    from reelrec.sim.world import SimConfig, simulate
    settings = load_settings(data_dir=Path(data_dir))
    simulate(SimConfig(users=users, titles=titles, days=days, seed=seed, progress=False), settings)
    train(settings, PipelineConfig(als=ALSParams(factors=16, iterations=8), tune=False))
    from reelrec.batch.precompute import precompute
    from reelrec.storage.cache import open_cache
    with open_cache(settings.cache) as cache:
        precompute(settings, cache)
    return settings


def busiest_user(settings: Settings) -> str:
    """The user with the most play events: the richest page to look at."""
    import pyarrow.compute as pc
    from reelrec.storage.lake import open_lake
    t = open_lake(settings.lake).scan(columns=["user_id"], types=["play_start", "complete"])
    counts = pc.value_counts(t.column("user_id"))
    i = int(pc.index(counts.field("counts"), pc.max(counts.field("counts"))).as_py())
    return counts.field("values")[i].as_py()


def capture(base: str, out: Path, browser, user: str) -> list[Path]:
    """Drive the three pages and save one screenshot of each."""
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    written = []

    page.goto(f"{base}/?user={user}&device=tv&hour=21")
    page.wait_for_selector(".shelf[data-shelf='top-picks'] .card")
    page.click(".shelf[data-shelf='top-picks'] li:nth-child(2) .card")
    page.click("dialog [data-action='complete']")
    page.wait_for_selector("#update[data-state='done'], #update[data-state='failed']", timeout=20_000)
    page.focus(".shelf[data-shelf='top-picks'] li:nth-child(3) .card")
    page.mouse.move(0, 0)
    page.screenshot(path=out / "homepage.png")
    written.append(out / "homepage.png")

    page.goto(f"{base}/onboarding?user=new-screenshot&device=mobile&hour=22&region=IN")
    page.wait_for_selector(".chip")
    for chip in page.locator(".chip").all()[:3]:
        chip.click()
    page.click("#submit")
    page.wait_for_selector("#shelves .card")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=out / "onboarding.png")
    written.append(out / "onboarding.png")

    page.goto(f"{base}/dashboard")
    page.wait_for_selector("#live .tile")
    page.wait_for_timeout(4500)  # two readings of the counters give a rate
    page.screenshot(path=out / "dashboard.png", full_page=True)
    written.append(out / "dashboard.png")
    page.close()
    return written


def main(argv: list[str] | None = None) -> None:
    from reelrec.serve.api import create_app
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reelrec-shots-") as tmp:
        settings = build_world(tmp)
        with serve_in_thread(create_app(settings)) as base, chromium() as browser:
            for p in capture(base, args.out, browser, busiest_user(settings)):
                print(f"wrote {p}")


if __name__ == "__main__":
    main()
