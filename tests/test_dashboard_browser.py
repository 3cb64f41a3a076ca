"""The served monitoring dashboard in headless Chromium, over a real lineage DB (one real demo data_refresh
run, tests/dashboard_helpers.py): every page renders with data and no console errors, the run link and the
optional structure/MSA artifacts page, the auto-refresh while a run writes, and the first page when the newest
run is a scheduled refresh that found no new release.

    .venv/bin/python -m pytest -q tests/test_dashboard_browser.py

The browser tests drive Debian's headless Chromium through selenium and chromedriver (apt-get install
chromium chromium-driver, or `make browser` as root); they skip, saying why, where either is missing, and fail
instead in CI (CI=true). Each page's screenshot is kept as a test artifact in
build/test-artifacts/dashboard/<page>.png (git-ignored; $PLM_TEST_ARTIFACTS replaces build/test-artifacts);
docs/dashboard.png is written when absent or when PLM_UPDATE_SCREENSHOT=1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline_lib.io import atomic_path
from tests.conftest import ROOT
from tests.dashboard_helpers import STRUCT_RUN, demo

__all__ = ["demo"]  # the fixture, re-exported so pytest finds it here

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def screenshot_dir() -> Path:
    """Where the browser test keeps its screenshots: <$PLM_TEST_ARTIFACTS or build/test-artifacts>/dashboard."""
    return Path(os.environ.get("PLM_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts") / "dashboard"


# --- the served dashboard in headless Chromium ------------------------------------------------------------

@pytest.fixture(scope="module")
def served(demo):
    from pipeline_lib.dashboard.app import make_server

    _, res = demo
    server = make_server(res.lineage, port=0, refresh_s=1.0)
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", res
    server.shutdown()
    server.server_close()


def _missing(why: str) -> None:
    """Skip where a browser is optional; in CI the dashboard test must run, so a missing browser fails it."""
    if IN_CI:
        pytest.fail(f"CI=true and {why}: run `make browser` as root (or apt-get install chromium chromium-driver)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        _missing(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                 "(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        _missing("the headless browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1700", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--host-resolver-rules=MAP evil.example 127.0.0.1"):  # a DNS rebinding, as the browser sees it
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true and no chromium: run `make browser`"):
        _missing("no chromium")
    monkeypatch.setattr(sys.modules[__name__], "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        _missing("no chromium")


POINTS_JS = ("return Array.from(document.querySelectorAll('.js-plotly-plot'))"
             ".map(g => [(g.closest('[id^=fig-]') || g).id,"
             " (g.data || []).reduce((n, t) => n + (t.x || []).length, 0)])")


def _wait_for(driver, fn, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn(driver)
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def _graph_points(driver, n_graphs: int) -> dict[str, int]:
    """{graph id: data points} once ``n_graphs`` plotly graphs have rendered."""
    def ready(d):
        got = d.execute_script(POINTS_JS)
        return dict(got) if len(got) >= n_graphs else None
    return _wait_for(driver, ready, f"{n_graphs} plotly graphs")


def _points_if(driver, cond) -> dict[str, int] | None:
    points = dict(driver.execute_script(POINTS_JS))
    return points if cond(points) else None


def _severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


PAGES = [("/", "runs-table", 0), ("/stages", "steps-table", 1), ("/dataset", "splits-table", 5),
         ("/training", None, 4), ("/evaluation", "eval-table", 1), ("/lineage", "trace-table", 1)]


def _save_screenshot(driver, path: Path) -> None:
    with atomic_path(path) as tmp:  # a failed or killed run never leaves a truncated PNG under the final name
        tmp.write_bytes(driver.get_screenshot_as_png())


def test_pages_render_with_data_and_no_console_errors(served, browser):
    from selenium.webdriver.common.by import By

    url, res = served
    shots = screenshot_dir()
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):  # only this run's pages
        old.unlink()
    for path, table_id, n_graphs in PAGES:
        browser.get(f"{url}{path}?run={res.run_id}")   # the newest run is the structures one
        if table_id:
            _wait_for(browser, lambda d, table_id=table_id: d.find_elements(By.ID, table_id),
                      f"#{table_id} on {path}")
        points = _graph_points(browser, n_graphs) if n_graphs else {}
        name = path.strip("/") or "runs"
        _save_screenshot(browser, shots / f"{name}.png")
        assert _severe(browser) == [], path
        if path == "/dataset":
            assert points["fig-lengths"] >= 10 and points["fig-clusters"] >= 4 and points["fig-splits"] == 6
            assert points["fig-plddt"] == 0 and points["fig-msa"] == 0      # this run has neither: a note, no error
            doc = ROOT / "docs" / "dashboard.png"
            if not doc.exists() or os.environ.get("PLM_UPDATE_SCREENSHOT") == "1":
                doc.parent.mkdir(exist_ok=True)
                shutil.copyfile(shots / "dataset.png", doc)
        elif n_graphs:
            assert all(v > 0 for v in points.values()), (path, points)
    browser.get(url + "/")
    _wait_for(browser, lambda d: d.find_elements(By.ID, "runs-table"), "runs table")
    assert res.run_id[:8] in browser.find_element(By.ID, "runs-table").text
    assert (shots / "dataset.png").stat().st_size > 10_000


def test_run_link_and_optional_artifacts_page(served, browser):
    from selenium.webdriver.common.by import By

    url, _ = served
    browser.get(f"{url}/dataset?run={STRUCT_RUN}")
    points = _wait_for(browser, lambda d: _points_if(d, lambda p: p.get("fig-plddt")),
                       "the pLDDT histogram of the structures run")
    assert points["fig-plddt"] > 0 and points["fig-msa"] > 0 and points["fig-lengths"] == 0
    assert "no ingest sequences.parquet" in browser.find_element(By.ID, "fig-lengths").text
    assert _severe(browser) == []


def test_dashboard_refreshes_while_a_run_writes(served, browser):
    url, res = served
    browser.get(f"{url}/training?run={res.run_id}")
    before = _graph_points(browser, 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("import sys; from pipeline_lib.lineage import LineageStore; "
            "LineageStore(sys.argv[1]).record_metrics(sys.argv[2], None,"
            " [('grad_norm', s, 1.0 / (1 + s)) for s in range(50)])")
    subprocess.run([sys.executable, "-c", code, res.lineage, res.run_id], env=env, check=True, timeout=60)
    after = _wait_for(browser, lambda d: _points_if(d, lambda p: len(p) > len(before)),
                      "the new grad_norm curve after auto-refresh")
    assert 50 in after.values() and _severe(browser) == []


# --- the first page when the newest run is a scheduled refresh that found no new release ------------------

@pytest.fixture(scope="module")
def refreshed(demo, tmp_path_factory):
    """A copy of the demo lineage DB whose newest run is a real ``data_refresh --if-changed`` that found the
    source unchanged (status no_new_release, no steps), served; yields (url, that run's id)."""
    from flows.data_refresh import data_refresh
    from pipeline_lib.dashboard.app import make_server

    tmp, res = demo
    db = tmp_path_factory.mktemp("refreshed") / "lineage.duckdb"
    for suffix in ("", ".wal"):
        if Path(f"{res.lineage}{suffix}").exists():
            shutil.copyfile(f"{res.lineage}{suffix}", f"{db}{suffix}")
    idle = data_refresh(str(ROOT / "configs" / "demo.yaml"), [f"workdir={tmp / 'work'}", f"lineage.path={db}"],
                        if_changed=True)
    assert idle.status == "no_new_release" and idle.release.previous_run == res.run_id
    server = make_server(db, port=0, refresh_s=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", idle.run_id
    server.shutdown()
    server.server_close()


def test_first_page_shows_the_newest_run_that_ran_stages(refreshed, browser):
    from selenium.webdriver.common.by import By

    url, idle = refreshed
    shots = screenshot_dir()
    shots.mkdir(parents=True, exist_ok=True)
    browser.get(f"{url}/stages")                          # no ?run=: the page picks
    _wait_for(browser, lambda d: d.find_elements(By.ID, "steps-table"), "the steps table")
    note = _wait_for(browser, lambda d: d.find_elements(By.ID, "run-note"), "the note about the newer run")[0].text
    assert browser.find_element(By.TAG_NAME, "h3").text == f"Run {STRUCT_RUN}"   # the newest run with steps
    assert STRUCT_RUN[:8] in browser.find_element(By.ID, "run").text          # ... is the one picked
    assert _graph_points(browser, 1)["fig-timeline"] == 2
    assert note.startswith(f"Showing run {STRUCT_RUN[:8]}, the newest that ran stages; the newer run found no new "
                           f"release (upstream unchanged): {idle[:8]}")
    _save_screenshot(browser, shots / "first-page.png")
    assert _severe(browser) == []

    browser.find_element(By.CSS_SELECTOR, "#run-note a").click()      # the no_new_release run, picked by hand
    _wait_for(browser, lambda d: "found no new release" in d.find_element(By.ID, "run-note").text
              and d.find_element(By.TAG_NAME, "h3").text == f"Run {idle}", "the no_new_release run's page")
    note = browser.find_element(By.ID, "run-note")
    assert "so it ran no stages. The last run before it that ran stages:" in note.text
    assert note.find_element(By.TAG_NAME, "a").get_attribute("href") == f"{url}/stages?run={STRUCT_RUN}"
    assert not browser.find_elements(By.ID, "fig-timeline") and not browser.find_elements(By.ID, "steps-table")
    _save_screenshot(browser, shots / "no-new-release.png")
    assert _severe(browser) == []


def test_a_page_under_another_host_name_cannot_read_the_dashboard(served, browser):
    """DNS rebinding: a page from evil.example, whose name now resolves to 127.0.0.1, asks the dashboard's port
    for the run list. The browser reaches the server, which refuses the Host; by its address it answers."""
    url, _ = served
    port = url.rsplit(":", 1)[1]
    browser.get(f"http://evil.example:{port}/")
    assert "'evil.example:" in browser.page_source and "is not allowed" in browser.page_source
    assert not browser.find_elements("id", "runs-table") and "PLM pipeline" not in browser.title
    browser.get(f"http://localhost:{port}/")
    _wait_for(browser, lambda d: d.find_elements("id", "runs-table"), "the runs table by localhost")
