"""The monitoring dashboard and report over a real lineage DB (one real demo data_refresh run).

    .venv/bin/python -m pytest -q tests/test_dashboard.py

The browser tests drive Debian's headless Chromium through selenium and chromedriver (apt-get install
chromium chromium-driver, or `make browser` as root); they skip, saying why, where either is missing, and fail
instead in CI (CI=true). Each page's screenshot is kept as a test artifact in
build/test-artifacts/dashboard/<page>.png (git-ignored; $PLM_TEST_ARTIFACTS replaces build/test-artifacts);
docs/dashboard.png is written when absent or when PLM_UPDATE_SCREENSHOT=1.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.data_refresh import data_refresh
from pipeline_lib import schemas
from pipeline_lib.dashboard import data, figures
from pipeline_lib.dashboard.db import read_only
from pipeline_lib.dashboard.report import write_report
from pipeline_lib.errors import PipelineError
from pipeline_lib.io import atomic_path
from pipeline_lib.lineage import LineageStore, RunRecord, StepRecord, artifact_for, utcnow
from tests.conftest import FIXTURES, ROOT

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def screenshot_dir() -> Path:
    """Where the browser test keeps its screenshots: <$PLM_TEST_ARTIFACTS or build/test-artifacts>/dashboard."""
    return Path(os.environ.get("PLM_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts") / "dashboard"
STRUCT_RUN = "run-with-structures-and-msas"


@pytest.fixture(scope="module")
def demo(prefect_harness, tmp_path_factory):
    """A real data_refresh run, a fake training curve with evals, and a second run with pLDDT/MSA artifacts."""
    tmp = tmp_path_factory.mktemp("dash")
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"), [
        f"workdir={tmp / 'work'}", "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]"])
    store = LineageStore(res.lineage)
    curve = []
    for step in range(0, 1000, 10):
        loss = 2.0 + 1.5 * math.exp(-step / 300)
        curve += [("loss", step, loss), ("perplexity", step, math.exp(loss)), ("lr", step, 4e-4 * min(1.0, step / 100)),
                  ("tokens_per_s", step, 9000.0 + step)]
    curve += [(f"eval/{m}", s, v) for s in (250, 500, 750) for m, v in (("perplexity", 12 - s / 100),
                                                                         ("spearman", 0.1 + s / 5000))]
    store.record_metrics(res.run_id, None, curve)
    _structure_run(store, tmp)
    return tmp, res


def _structure_run(store: LineageStore, tmp: Path) -> None:
    levels = ["c90", "c50"]
    table = pa.Table.from_pylist([{
        "id": f"P{i}", "seq_hash": "0" * 32, "cluster_c90": f"P{i}", "cluster_c50": f"P{i}", "length": 3,
        "tokens": bytes([0, 5, 2]), "aa_seq": "MAV", "threedi_seq": "dpq", "sa_tokens": [0, 1, 2],
        "mean_plddt": float(40 + i % 60), "structure_source": "test", "structure_version": "v4"} for i in range(300)],
        schema=schemas.structure_shard_schema(levels))
    shard = tmp / "structure_shard.parquet"
    pq.write_table(table, shard)
    depths = tmp / "msa_depths.parquet"
    pq.write_table(pa.table({"id": [f"P{i}" for i in range(40)], "depth": [1 + 7 * i for i in range(40)]}), depths)
    msas = [artifact_for(depths, "msa")] + [artifact_for(f, "msa") for f in sorted((FIXTURES / "msa").glob("*.a3m"))]
    store.start_run(RunRecord(STRUCT_RUN, "end_to_end", "structures", {}, "cfg", "test", str(tmp)))
    t = utcnow()
    store.record_step(StepRecord(STRUCT_RUN, "structures", {}, "k1", "completed", t, t + timedelta(seconds=2),
                                 outputs=[artifact_for(shard, "structure_shard", rows=300)]))
    store.record_step(StepRecord(STRUCT_RUN, "msa", {}, "k2", "completed", t, t + timedelta(seconds=1), outputs=msas))
    store.end_run(STRUCT_RUN, "completed")


# --- data functions ------------------------------------------------------------------------------------

def test_runs_steps_and_stage_summary(demo):
    _, res = demo
    runs = {r["run_id"]: r for r in data.list_runs(res.lineage)}
    run = runs[res.run_id]
    assert run["status"] == "completed" and run["steps"] == 6 and run["failed"] == 0 and run["duration_s"] > 0
    steps = data.run_steps(res.lineage, res.run_id)
    assert [s["stage"] for s in steps] == ["fetch", "ingest", "cluster", "split", "shards_partition", "shards"]
    assert steps[1]["stats"]["kept"] == res.stages["ingest"].stats["kept"]
    summary = {r["stage"]: r for r in data.stage_summary(steps)}
    assert summary["cluster"]["completed"] == 1 and summary["cluster"]["duration_s"] > 0


def test_running_run_failed_step_and_missing_database(demo, tmp_path):
    tmp, res = demo
    db = tmp / "other.duckdb"                     # a separate file: the browser tests expect the demo DB as is
    store = LineageStore(db)
    store.start_run(RunRecord("still-running", "data_refresh", "demo", {}, "cfg", "test", str(tmp),
                              started_at=utcnow() - timedelta(seconds=30)))
    t = utcnow()
    store.record_step(StepRecord("still-running", "cluster", {}, "k", "failed", t, t, error="ToolError: mmseqs died"))
    run = data.list_runs(db)[0]
    assert run["status"] == "running" and run["ended_at"] is None and run["duration_s"] >= 30 and run["failed"] == 1
    assert data.run_steps(db, "still-running")[0]["error"] == "ToolError: mmseqs died"
    assert data.match_runs(db, "still") == ["still-running"] and data.match_runs(db, "nope") == []
    with pytest.raises(PipelineError, match="no lineage database"):
        data.list_runs(tmp_path / "missing.duckdb")


def test_dataset_distributions_match_stage_stats(demo):
    _, res = demo
    kept = res.stages["ingest"].stats["kept"]
    ds = data.dataset(res.lineage, res.run_id)
    h = ds.lengths
    assert h.total == kept == sum(h.counts) and h.width > 0 and h.lefts == sorted(h.lefts)
    assert h == data.length_histogram(data.run_artifacts(res.lineage, res.run_id, "sequences"))
    dist = ds.cluster_sizes
    assert set(dist) == {"c90", "c50"}
    for level, d in dist.items():  # every sequence sits in exactly one cluster per level
        assert sum(s * n for s, n in zip(d["size"], d["clusters"])) == kept
        assert sum(d["clusters"]) == res.stages["cluster"].stats["clusters_per_level"][level]
    splits = {s["split"]: s for s in ds.splits}
    assert sum(s["sequences"] for s in splits.values()) == kept
    assert splits["train"]["tokens"] == res.stages["shards"].stats["train"]["tokens"]


def test_optional_structure_and_msa_artifacts(demo):
    _, res = demo
    plain = data.dataset(res.lineage, res.run_id)
    assert plain.plddt.empty and plain.msa_depth.empty                     # the data run has neither
    assert figures.histogram_figure(plain.plddt, "p", "none").data == ()   # a note, no traces
    ds = data.dataset(res.lineage, STRUCT_RUN)
    p = ds.plddt
    assert p.total == 300 == sum(p.counts) and p.lefts[0] >= 40 and p.lefts[-1] < 100
    a3m = sorted((FIXTURES / "msa").glob("*.a3m"))                         # real A3M files when present
    assert ds.msa_depth.total == 40 + len(a3m) == sum(ds.msa_depth.counts)
    assert ds.lengths.empty and ds.cluster_sizes == {} and ds.splits == []  # ... and that run has no data stages


def test_training_curves_and_eval_table(demo):
    _, res = demo
    curves = data.training_curves(res.lineage, res.run_id)
    assert set(curves) == {"loss", "perplexity", "lr", "tokens_per_s"}
    assert len(curves["loss"]["step"]) == 100 and curves["loss"]["step"] == sorted(curves["loss"]["step"])
    thin = data.training_curves(res.lineage, res.run_id, max_points=20)["loss"]
    assert 20 <= len(thin["step"]) <= 22 and thin["step"][-1] == 990          # thinned, last point kept
    names, rows = data.eval_table(res.lineage, res.run_id)
    assert names == ["eval/perplexity", "eval/spearman"] and [r["step"] for r in rows] == [250, 500, 750]
    assert rows[1]["eval/perplexity"] == pytest.approx(7.0)
    assert data.eval_table(res.lineage, STRUCT_RUN) == ([], [])
    assert figures.metric_order(curves) == ["loss", "perplexity", "lr", "tokens_per_s"]


def test_training_curves_show_the_older_ppl_name_as_perplexity(tmp_path):
    """Lineage files from before training logged `perplexity` hold `ppl`: one perplexity chart, no stray one.
    (What a real training run writes is checked in tests/test_end_to_end.py.)"""
    store = LineageStore(tmp_path / "old.duckdb")
    store.start_run(RunRecord("old-run", "train", "demo", {}, "cfg", "test", str(tmp_path)))
    store.record_metrics("old-run", None, [("loss", s, 2.0) for s in (1, 2)] + [("ppl", s, 7.4) for s in (1, 2)])
    curves = data.training_curves(tmp_path / "old.duckdb", "old-run")
    assert figures.metric_order(curves) == ["loss", "perplexity"] and curves["perplexity"]["value"] == [7.4, 7.4]


def test_lineage_graph_of_the_manifest(demo):
    _, res = demo
    target = data.default_trace_target(res.lineage, res.run_id)
    g = data.lineage_graph(res.lineage, target)
    assert g.target.endswith("manifest.json")
    stages = {n["label"] for n in g.nodes if n["type"] == "step"}
    assert stages == {"fetch", "ingest", "cluster", "split", "shards_partition", "shards"}
    x = figures._layers(g)
    assert all(x[a] < x[b] for a, b in g.edges)            # every edge points from source towards the target
    assert max(x.values()) == x[target] == 0
    kinds = {n["label"].split(":")[0] for n in g.nodes if n["type"] == "artifact"}
    assert {"source_fasta", "sequences", "clusters", "splits", "manifest"} <= kinds


def test_report_is_one_self_contained_html_file(demo, tmp_path):
    _, res = demo
    out = write_report(res.lineage, res.run_id[:8], tmp_path / "report.html")
    text = out.read_text()
    assert res.run_id in text and "Sequence lengths" in text and "eval/spearman" in text
    assert text.count("Plotly.newPlot") >= 8                  # timeline, 3 dataset, 4 curves, eval, lineage
    tags = re.findall(r"<script\b[^>]*>", text)
    assert tags and not [tag for tag in tags if "src=" in tag]      # plotly.js inlined: the file works offline
    assert len(text) > 3_000_000


# --- concurrency: the pipeline keeps writing while the dashboard reads -------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pipeline_lib.lineage import LineageStore
    store = LineageStore(sys.argv[1], lock_timeout_s=30)
    deadline, worst = time.monotonic() + 45, 0.0
    for i in range(int(sys.argv[2])):   # each write opens the file, commits and closes, like a training loop's
        if time.monotonic() > deadline:
            sys.exit("writer too slow")
        t0 = time.monotonic()
        store.record_metrics(sys.argv[3], None, [("concurrency/step", i, float(i))])
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.1)  # paced like a training loop, so the reads overlap however fast this machine is
    print(f"done {worst:.2f}", flush=True)
""")


def test_reading_while_another_process_writes(demo):
    """Dashboard reads (one short read-only open per page render) interleave with another process's writes."""
    _, res = demo
    n, run = 40, "concurrency-writer"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, res.lineage, str(n), run], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads, seen, deadline = 0, [], time.monotonic() + 60
    while writer.poll() is None and time.monotonic() < deadline:
        with read_only(res.lineage) as con:
            data.list_runs(con)
            data.run_steps(con, res.run_id)
            seen.append(len(data.training_curves(con, run).get("concurrency/step", {"step": []})["step"]))
        reads += 1
        time.sleep(0.05)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out.startswith("done"), err
    assert float(out.split()[1]) < 10                     # no write waited long for the reader
    assert reads >= 5 and seen == sorted(seen) and 0 < max(seen)
    assert data.training_curves(res.lineage, run)["concurrency/step"]["step"] == list(range(n))


HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])           # a writer that keeps its connection (and the lock) open
    con.execute("INSERT INTO metrics VALUES ('held', NULL, 'held/metric', 1, 1.0, now())")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


def test_snapshot_when_a_writer_holds_the_lock(demo):
    _, res = demo
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, res.lineage, "6"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        with read_only(res.lineage, lock_wait_s=0.3) as con:
            held = con.execute("SELECT count(*) FROM metrics WHERE name = 'held/metric'").fetchone()[0]
        assert held == 1 and time.monotonic() - t0 < 5             # the snapshot includes the write-ahead log
        assert any(r["run_id"] == res.run_id for r in data.list_runs(res.lineage))
        assert holder.poll() is None                                # the writer was never disturbed
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


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
        _missing(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        _missing("the headless browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1700", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
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
             ".map(g => [(g.closest('[id^=fig-]') || g).id, (g.data || []).reduce((n, t) => n + (t.x || []).length, 0)])")


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
            _wait_for(browser, lambda d: d.find_elements(By.ID, table_id), f"#{table_id} on {path}")
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
            "LineageStore(sys.argv[1]).record_metrics(sys.argv[2], None, [('grad_norm', s, 1.0 / (1 + s)) for s in range(50)])")
    subprocess.run([sys.executable, "-c", code, res.lineage, res.run_id], env=env, check=True, timeout=60)
    after = _wait_for(browser, lambda d: _points_if(d, lambda p: len(p) > len(before)),
                      "the new grad_norm curve after auto-refresh")
    assert 50 in after.values() and _severe(browser) == []
