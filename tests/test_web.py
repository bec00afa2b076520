"""The web interface: its JSON helpers on tiny data with known answers, then the pages in a real
browser (Debian's Chromium under Playwright) against a real server over a small simulated world."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram

from reelrec.config import load_settings
from reelrec.domain.catalog import Catalog, Title
from reelrec.domain.users import USER_SCHEMA, save_users
from reelrec.serve.api import create_app
from reelrec.serve.web import histogram_quantile, parse_report, registry_stats

UTC = dt.timezone.utc


# --- JSON helpers on tiny data ------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path, small_catalog):
    settings = load_settings(data_dir=tmp_path)
    small_catalog.save(tmp_path)
    users = pa.table({
        "user_id": ["ann", "anna", "bob", "annette", "carl"],
        "region": ["US", "IN", "IN", "IN", None],
        "signup_device": ["tv", "mobile", "web", "tv", "tablet"],
        "onboarding_genres": [["crime"], [], None, ["nature", "drama", "crime"], []],
    })
    full = pa.table({f.name: users.column(f.name) if f.name in users.column_names
                     else pa.nulls(users.num_rows, f.type) for f in USER_SCHEMA}, schema=USER_SCHEMA)
    save_users(full, tmp_path)
    return settings, TestClient(create_app(settings))


def test_pages_are_served_but_stay_out_of_the_schema(tiny):
    _, client = tiny
    for path, script in (("/", "home.js"), ("/onboarding", "onboarding.js"), ("/dashboard", "dashboard.js")):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert f'src="/static/js/{script}"' in r.text
        assert client.get(f"/static/js/{script}").status_code == 200
    assert client.get("/static/js/../../web.py").status_code == 404
    paths = client.app.openapi()["paths"]
    assert not {"/", "/onboarding", "/dashboard"} & set(paths)
    ui = {p: ops for p, ops in paths.items() if p.startswith("/v1/ui/")}
    assert len(ui) >= 5
    assert all(op["x-scope"] == "read" for ops in ui.values() for op in ops.values())


def test_user_search_by_prefix_and_region(tiny):
    _, client = tiny
    r = client.get("/v1/ui/users", params={"q": "ann"}).json()
    assert [u["user_id"] for u in r["users"]] == ["ann", "anna", "annette"] and r["total"] == 3
    r = client.get("/v1/ui/users", params={"q": "ann", "region": "in", "limit": 1}).json()
    assert r["total"] == 2 and [u["user_id"] for u in r["users"]] == ["anna"]
    assert r["regions"] == ["IN", "US"]
    assert client.get("/v1/ui/users", params={"q": "zed"}).json()["total"] == 0
    assert client.get("/v1/ui/users", params={"limit": 0}).status_code == 422


def test_genres_are_counted_most_common_first(tiny):
    _, client = tiny
    got = client.get("/v1/ui/genres").json()["genres"]
    assert got[0] == {"name": "crime", "titles": 2}
    assert {g["name"]: g["titles"] for g in got} == {"crime": 2, "thriller": 1, "animation": 1, "family": 1,
                                                      "drama": 1, "nature": 1}


def test_catalog_stats(tiny):
    settings, client = tiny
    c = client.get("/v1/ui/catalog").json()
    assert c["titles"] == 4 and c["by_kind"] == {"movie": 2, "documentary": 1, "series": 1}
    assert c["available_everywhere"] == 3  # Up is limited to US and GB
    assert c["median_runtime_min"] == 90.0  # films and documentaries: 120, 90, 60
    assert c["users"] == 5 and c["users_onboarded"] == 2
    assert c["users_by_region"] == {"IN": 3, "US": 1}
    # an upserted title shows at once
    client.put("/v1/titles/d2", json={"name": "Oceans", "kind": "documentary", "genres": ["nature"],
                                      "runtime_min": 50})
    assert client.get("/v1/ui/catalog").json()["by_kind"]["documentary"] == 2


def test_histogram_quantile_interpolates_inside_buckets():
    upper = np.array([1.0, 2.0, np.inf])
    cum = np.array([10.0, 20.0, 20.0])
    assert histogram_quantile(0.5, upper, cum) == pytest.approx(1.0)
    assert histogram_quantile(0.75, upper, cum) == pytest.approx(1.5)
    assert histogram_quantile(0.99, upper, np.array([0.0, 10.0, 30.0])) == 2.0  # +Inf: highest bound
    assert histogram_quantile(0.5, upper, np.zeros(3)) is None


def test_registry_stats_reads_the_api_metrics():
    reg = CollectorRegistry()
    lat = Histogram("reelrec_request_seconds", "", ["route", "method"], registry=reg,
                    buckets=(0.001, 0.002, 0.005, 0.01))
    events = Counter("reelrec_events_total", "", ["outcome"], registry=reg)
    cache = Counter("reelrec_cache_reads_total", "", ["result"], registry=reg)
    for v in [0.0005] * 50 + [0.0015] * 48 + [0.008] * 2:
        lat.labels("/v1/users/{user_id}/homepage", "GET").observe(v)
    lat.labels("/v1/events", "POST").observe(3.0)  # other routes do not count
    events.labels("accepted").inc(7)
    events.labels("rejected").inc(1)
    cache.labels("hit").inc(3)
    cache.labels("miss").inc(1)
    s = registry_stats(reg)
    assert s["homepage_requests"] == 100 and s["requests"] == 101
    assert s["homepage_p50_ms"] == pytest.approx(1.0)
    assert s["homepage_p99_ms"] == pytest.approx(5 + 5 * 0.5)  # 99th of 100 lies halfway in (5, 10] ms
    assert s["events_accepted"] == 7 and s["events_rejected"] == 1
    assert s["cache_hit_ratio"] == pytest.approx(0.75)


def test_stats_count_events_posted_through_the_api(tiny, small_catalog):
    _, client = tiny
    now = dt.datetime.now(UTC).isoformat()
    ok = {"event_id": "w1", "user_id": "ann", "title_id": "m1", "type": "play_start", "ts": now}
    assert client.post("/v1/events", json=[ok, {**ok, "event_id": "w2", "type": "nope"}]).status_code == 202
    s = client.get("/v1/ui/stats").json()
    assert s["events_accepted"] == 1 and s["events_rejected"] == 1


def _report_doc():
    curves = {m: [0.1, 0.2, 0.3] for m in ("precision", "recall", "ndcg", "map")}
    models = {"popularity": {"ndcg@3": 0.1234, "precision@3": 0.05, "diversity": 0.4, "curves": curves, "fit_s": 0.1},
              "als": {"ndcg@3": 0.2345, "precision@3": 0.08, "diversity": 0.5, "curves": curves, "fit_s": 1.5}}
    return {"dataset": "tiny", "protocol": "temporal", "k": 3, "seeds": [42], "models": models,
            "split": {"train_interactions": 100, "test_users": 10, "relevant": 20}}


def test_evaluation_reports_under_the_data_dir(tiny):
    from reelrec.eval.report import write_report
    settings, client = tiny
    write_report(_report_doc(), settings.data_dir / "reports" / "tiny-temporal")
    got = client.get("/v1/ui/reports").json()["reports"]
    assert [r["id"] for r in got] == ["reports/tiny-temporal"]
    r = got[0]
    assert r["title"] == "Evaluation: tiny, temporal, K = 3"
    assert r["header"][0] == "model" and [row[0] for row in r["rows"]] == ["popularity", "als"]
    assert r["rows"][1][r["header"].index("ndcg@3")].startswith("0.2345")
    assert {i["file"] for i in r["images"]} == {"metrics_at_k.png", "accuracy_vs_diversity.png"}
    png = client.get("/v1/ui/report-file", params={"report": r["id"], "name": "metrics_at_k.png"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    bad = client.get("/v1/ui/report-file", params={"report": r["id"], "name": "../../users/users.parquet"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "name"
    assert client.get("/v1/ui/report-file", params={"report": "users", "name": "x.png"}).status_code == 404


def test_parse_report_keeps_the_first_table_only():
    doc = parse_report("# T\n\nintro\n\n| a | b |\n|---|---:|\n| x | 1 |\n\nafter\n\n| c |\n|---|\n| y |\n")
    assert doc["title"] == "T" and doc["header"] == ["a", "b"] and doc["rows"] == [["x", "1"]]
    assert doc["text"][:2] == ["intro", "after"]


# --- the pages in a real browser ------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("playwright.sync_api")
    import os
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (`make test` installs it with apt)")
    from reelrec.serve.browser import chromium, serve_in_thread
    from reelrec.serve.screenshots import build_world, busiest_user
    settings = build_world(tmp_path_factory.mktemp("web-world"))
    app = create_app(settings)
    with serve_in_thread(app) as base, chromium() as browser:
        yield {"base": base, "browser": browser, "settings": settings, "user": busiest_user(settings)}


@pytest.fixture
def page(site):
    """A fresh page that records console errors, uncaught exceptions and failed requests."""
    pg = site["browser"].new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    pg.problems = problems
    yield pg
    pg.close()


def top_picks(pg) -> list[str]:
    return pg.eval_on_selector_all(".shelf[data-shelf='top-picks'] .card", "cs => cs.map(c => c.dataset.title)")


def test_homepage_renders_shelves_without_console_errors(site, page):
    page.goto(f"{site['base']}/?user={site['user']}")
    page.wait_for_selector(".shelf[data-shelf='top-picks'] .card")
    shelves = page.eval_on_selector_all(".shelf", "ss => ss.map(s => s.dataset.shelf)")
    assert shelves[0] == "top-picks" and len(shelves) >= 3
    assert 1 <= len(top_picks(page)) <= 20
    assert page.text_content("#status-user") == site["user"]
    assert page.get_attribute("#mode", "data-mode") in ("personal", "cold_start", "fallback")
    # every poster is an SVG made in the page, with alt text
    posters = page.eval_on_selector_all(".card img", "is => is.map(i => [i.src.slice(0, 18), i.alt])")
    assert posters and all(src == "data:image/svg+xml" and alt.startswith("Poster of ") for src, alt in posters)
    # explore / novel slots carry a badge; the reason shows on focus
    slots = page.eval_on_selector_all(".shelf[data-shelf='top-picks'] .card",
                                      "cs => cs.map(c => [c.dataset.slot, !!c.querySelector('.badge')])")
    assert all(badge == (slot in ("explore", "novel")) for slot, badge in slots)
    first = page.locator(".shelf[data-shelf='top-picks'] .card").first
    first.focus()
    page.wait_for_function("document.activeElement.querySelector('.reason') && "
                           "getComputedStyle(document.activeElement.querySelector('.reason')).opacity === '1'")
    assert page.text_content(".shelf[data-shelf='top-picks'] .card .reason").strip()
    assert not page.problems, page.problems


def test_keyboard_moves_along_a_row_and_tab_between_rows(site, page):
    page.goto(f"{site['base']}/?user={site['user']}")
    page.wait_for_selector(".shelf[data-shelf='top-picks'] .card")
    ids = top_picks(page)
    page.locator(".shelf[data-shelf='top-picks'] .card").first.focus()
    active = "document.activeElement.dataset.title"
    page.keyboard.press("ArrowRight")
    assert page.evaluate(active) == ids[1]
    page.keyboard.press("End")
    assert page.evaluate(active) == ids[-1]
    page.keyboard.press("Home")
    assert page.evaluate(active) == ids[0]
    second = page.eval_on_selector_all(".shelf", "ss => ss[1].dataset.shelf")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('.shelf').dataset.shelf") == second
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(active) == ids[0]  # the row remembers its place
    page.keyboard.press("Enter")
    page.wait_for_selector("dialog[open] [data-action='complete']")
    page.keyboard.press("Escape")
    assert not page.problems, page.problems


def test_context_switchers_refetch_with_query_parameters(site, page):
    page.goto(f"{site['base']}/?user={site['user']}")
    page.wait_for_selector(".shelf[data-shelf='top-picks'] .card")
    with page.expect_response(lambda r: "/homepage?" in r.url and "device=tv" in r.url) as got:
        page.select_option("#device", "tv")
    assert got.value.status == 200
    with page.expect_response(lambda r: "hour=21" in r.url and "device=tv" in r.url):
        page.select_option("#hour", "21")
    with page.expect_response(lambda r: "region=IN" in r.url):
        page.select_option("#region", "IN")
    assert "region=IN" in page.url and "hour=21" in page.url
    assert not page.problems, page.problems


def test_watching_a_title_updates_the_page(site, page):
    page.goto(f"{site['base']}/?user={site['user']}")
    page.wait_for_selector(".shelf[data-shelf='top-picks'] .card")
    before = page.get_attribute("#generated", "data-generated")
    watched = top_picks(page)[0]
    page.locator(".shelf[data-shelf='top-picks'] .card").first.click()
    page.click("dialog [data-action='complete']")
    page.wait_for_selector("#update[data-state='done']", timeout=20_000)
    assert re.match(r"Page updated \d+\.\d\d s after", page.text_content("#update"))
    assert page.get_attribute("#generated", "data-generated") != before
    assert watched not in top_picks(page)  # a finished title leaves Top picks
    assert not page.problems, page.problems


def test_onboarding_leads_to_a_page_that_turns_personal(site, page):
    page.goto(f"{site['base']}/onboarding?user=new-browser-1")
    page.wait_for_selector(".chip")
    chips = page.locator(".chip")
    for i in range(3):
        chips.nth(i).click()
    assert page.is_enabled("#submit")
    page.click("#submit")  # the fourth tap
    page.wait_for_selector("#shelves .shelf[data-shelf='top-picks'] .card")
    assert page.get_attribute("#mode", "data-mode") == "cold_start"
    for n in range(3):
        if page.get_attribute("#mode", "data-mode") == "personal":
            break
        page.locator(".shelf[data-shelf='top-picks'] .card").first.click()
        page.click("dialog [data-action='complete']")
        page.wait_for_selector("#update[data-state='done'], #update[data-state='failed']", timeout=20_000)
        assert page.get_attribute("#update", "data-state") == "done", page.text_content("#update")
    assert page.get_attribute("#mode", "data-mode") == "personal"
    assert "personal now" in page.text_content("#notice")
    assert not page.problems, page.problems


def test_five_picks_submit_at_once(site, page):
    page.goto(f"{site['base']}/onboarding?user=new-browser-2")
    page.wait_for_selector(".chip")
    chips = page.locator(".chip")
    for i in range(5):
        chips.nth(i).click()
    page.wait_for_selector("#shelves .card")
    assert page.eval_on_selector_all(".chip[aria-pressed='true']", "cs => cs.length") == 5
    assert not page.problems, page.problems


def test_dashboard_shows_figures(site, page):
    page.goto(f"{site['base']}/?user={site['user']}")  # a homepage read for the latency figures
    page.wait_for_selector(".card")
    page.goto(f"{site['base']}/dashboard")
    page.wait_for_selector("#live .tile")
    page.wait_for_function("document.querySelector('[data-figure=\"Events / s\"]').textContent !== '…'",
                           timeout=10_000)
    figures = dict(page.eval_on_selector_all("#live [data-figure]", "ts => ts.map(t => [t.dataset.figure, t.textContent])"))
    assert re.fullmatch(r"[\d,.]+", figures["Events / s"])
    assert re.fullmatch(r"[\d,.]+ ms", figures["Homepage p50"])
    assert int(page.text_content("#catalog-tiles [data-figure='Titles']").replace(",", "")) >= 200
    assert page.text_content("#adherence [data-figure='Genre-cap violations']") == "0"
    page.wait_for_selector("#models table")
    assert page.locator("#models tbody tr").count() >= 1
    assert not page.problems, page.problems


def test_page_adherence_counts_genre_caps_kind_floors_and_slots():
    from reelrec.compose import reasons as R
    from reelrec.compose.config import ComposeConfig
    from reelrec.compose.features import CatalogFeatures
    from reelrec.compose.page import encode_page
    from reelrec.compose.shelves import TOP_PICKS, ComposedPage, Shelf
    from reelrec.serve.web import page_adherence

    titles = [Title(f"c{i}", f"Crime {i}", "movie", ["crime"], runtime_min=90) for i in range(4)]
    titles += [Title("s0", "Crime series", "series", ["crime"], episodes=2, episode_runtime_min=40),
               Title("d0", "Nature doc", "documentary", ["nature"], runtime_min=50),
               Title("d1", "Nature doc 2", "documentary", ["nature"], runtime_min=50)]
    f = CatalogFeatures.from_catalog(Catalog.from_titles(titles))
    cfg = ComposeConfig(page_size=4, genre_cap=2, kind_floor=1 / 3)  # 2 of 4; each kind >= 1 of 4

    def blob(idx, slots):
        n = len(idx)
        top = Shelf(TOP_PICKS, np.asarray(idx, np.int64), slots=np.asarray(slots, np.uint8),
                    reasons=np.full(n, R.POPULAR, np.uint8), reason_args=np.full(n, -1, np.int64),
                    scores=np.linspace(1, 0, n))
        page = ComposedPage("u", "personal", None, dt.datetime(2026, 11, 1, tzinfo=UTC), [top])
        return encode_page(page, f)

    ids = {t: i for i, t in enumerate(f.ids.tolist())}
    over = blob([ids["c0"], ids["c1"], ids["c2"], ids["c3"]], [0, 1, 2, 0])  # 4 crime, all movies
    fine = blob([ids["c0"], ids["s0"], ids["d0"], ids["d1"]], [0, 0, 0, 0])  # 2 crime, 2 nature
    a = page_adherence(f, cfg, [over, fine])
    assert a["pages"] == 2 and a["pages_over_genre_cap"] == 1
    assert a["max_genre_count"] == {"2": 1, "4": 1}
    assert a["kind_floor_held"] == 0.5
    assert a["kind_share_mean"] == pytest.approx({"movie": 0.625, "series": 0.125, "documentary": 0.25})
    assert a["slots_mean"] == {"exploit": 3.0, "explore": 0.5, "novel": 0.5}
    assert page_adherence(f, cfg, [])["pages"] == 0
