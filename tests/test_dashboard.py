"""The monitoring dashboard's data functions, the HTML report, and reads while another process writes, over a
real lineage DB (one real demo data_refresh run, tests/dashboard_helpers.py).

    .venv/bin/python -m pytest -q tests/test_dashboard.py

The served dashboard in headless Chromium is tested in tests/test_dashboard_browser.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest

from pipeline_lib.dashboard import data, figures
from pipeline_lib.dashboard.db import read_only
from pipeline_lib.dashboard.report import write_report
from pipeline_lib.errors import PipelineError, RunLookupError
from pipeline_lib.lineage import LineageStore, RunRecord, StepRecord, utcnow
from tests.conftest import FIXTURES, ROOT
from tests.dashboard_helpers import STRUCT_RUN, demo
from tests.test_lineage import scheduled_runs

__all__ = ["demo"]  # the fixture, re-exported so pytest finds it here


# --- data functions ------------------------------------------------------------------------------------

def test_runs_steps_and_stage_summary(demo):
    _, res = demo
    runs = {r["run_id"]: r for r in data.list_runs(res.lineage)}
    run = runs[res.run_id]
    assert run["status"] == "completed" and run["steps"] == 11 and run["failed"] == 0 and run["duration_s"] > 0
    steps = data.run_steps(res.lineage, res.run_id)
    assert [s["stage"] for s in steps] == ["source", "ingest", "cluster_level", "cluster_level", "cluster", "split",
                                           "audit_target", "audit_chunk", "audit", "shards_partition", "shards"]
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
    assert data.resolve_run(db, "still") == "still-running"
    with pytest.raises(RunLookupError, match="no run 'nope'"):
        data.resolve_run(db, "nope")
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
        assert sum(s * n for s, n in zip(d["size"], d["clusters"], strict=False)) == kept
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
    assert stages == {"source", "ingest", "cluster_level", "cluster", "split", "shards_partition", "shards"}
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


# --- which run: labels, the first page, no_new_release runs ---------------------------------------------

def _texts(component) -> list[str]:
    """Every string and link target in a Dash component tree, in document order."""
    if isinstance(component, str):
        return [component]
    if isinstance(component, (list, tuple)):
        return [t for c in component for t in _texts(c)]
    out = [component.href] if getattr(component, "href", None) else []
    return out + _texts(getattr(component, "children", None) or [])


def scheduled_refreshes(db, statuses=("completed", "no_new_release", "no_new_release")) -> list[str]:
    """Scheduler-made runs (ids sharing 12 characters, oldest first) with these statuses; the completed ones
    ran a stage, the others none."""
    ids = scheduled_runs(db, n=len(statuses))
    store = LineageStore(db)
    for rid, status in zip(ids, statuses, strict=False):
        if status == "completed":
            t = utcnow()
            store.record_step(StepRecord(rid, "source", {}, "k", "completed", t, t + timedelta(seconds=1)))
        store.end_run(rid, status)
    return ids


def test_run_picker_labels_tell_scheduled_runs_apart(tmp_path):
    db = tmp_path / "l.duckdb"
    ids = scheduled_refreshes(db, ["completed"] * 3 + ["no_new_release"] * 11)
    runs = data.list_runs(db)
    options = data.run_options(runs)
    labels = [o["label"] for o in options]
    assert len(set(labels)) == len(labels) == 14 and {o["value"] for o in options} == set(ids)
    for o in options:   # the label's first word is the unique prefix, which names the run back
        assert len(o["label"].split()[0]) >= 8 and data.resolve_run(db, o["label"].split()[0]) == o["value"]
        assert o["label"].split()[1:2] == ["data_refresh"]
    assert [r["prefix"] for r in runs] == [lab.split()[0] for lab in labels]


def test_the_first_page_is_the_newest_run_that_ran_stages(tmp_path):
    db = tmp_path / "l.duckdb"
    worked, idle1, idle2 = scheduled_refreshes(db)
    runs = data.list_runs(db)
    prefix = {r["run_id"]: r["prefix"] for r in runs}
    assert runs[0]["run_id"] == idle2 and data.default_run(runs) == worked
    note = data.run_note(runs, worked)   # the default page names the newer runs it passed over
    assert note.text == (f"Showing run {prefix[worked]}, the newest that ran stages; the 2 newer runs found no new "
                         "release (upstream unchanged):") and not note.empty
    assert [r["run_id"] for r in note.links] == [idle2, idle1]
    note = data.run_note(runs, idle2)    # a no_new_release run says so, and which run to look at instead
    assert note.empty and [r["run_id"] for r in note.links] == [worked]
    assert note.text.startswith(f"Run {prefix[idle2]} found no new release (upstream unchanged), so it ran no stages")
    assert data.run_note(runs[1:], worked).links == [runs[1]] and data.run_note(runs[2:], worked) is None
    only_idle = [r for r in runs if r["run_id"] != worked]
    assert data.default_run(only_idle) == idle2 and data.run_note(only_idle, idle1).links == []
    assert data.default_run([]) is None


def test_stage_and_dataset_pages_of_a_no_new_release_run_say_so(tmp_path):
    from pipeline_lib.dashboard import app

    db = tmp_path / "l.duckdb"
    worked, _, idle = scheduled_refreshes(db)
    for render, path in ((app.stages_page, "/stages"), (app.dataset_page, "/dataset")):
        page = app.run_page(render, db, idle, path)
        texts = " ".join(_texts(page))
        assert "found no new release (upstream unchanged), so it ran no stages" in texts
        assert f"{path}?run={worked}" in texts and not [c for c in page if type(c).__name__ == "Graph"]
    page = app.run_page(app.stages_page, db, worked, "/stages")
    assert "the 2 newer runs found no new release" in " ".join(_texts(page[0]))
    assert any(getattr(c, "id", None) == "steps-table" for c in page)


def test_dashboard_url_takes_a_unique_prefix_and_lists_an_ambiguous_one(tmp_path):
    from pipeline_lib.dashboard import app

    db = tmp_path / "l.duckdb"
    ids = scheduled_refreshes(db)
    prefixes = {r["run_id"]: r["prefix"] for r in data.list_runs(db)}
    with read_only(db) as con:
        assert app._url_run(con, f"?run={prefixes[ids[1]]}", "/stages") == (ids[1], [])
        assert app._url_run(con, "", "/stages") == (None, [])
        run, message = app._url_run(con, f"?run={ids[0][:12]}", "/dataset")
    texts = _texts(message)
    assert run is None and texts[0] == f"run id prefix '{ids[0][:12]}' matches 3 runs; give more of the id:"
    assert [t for t in texts if t.startswith("/dataset?run=")] == [f"/dataset?run={i}" for i in ids[::-1]]


def test_plm_report_and_dashboard_take_the_lineage_file_from_config_and_overrides(tmp_path, capsys):
    from flows.cli import _db_path, _parser
    from flows.cli import main as plm

    db = tmp_path / "l.duckdb"
    ids = scheduled_refreshes(db)
    assert plm(["report", ids[0][:8], "--out", str(tmp_path / "r.html"), "--set", f"lineage.path={db}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"plm: error: run id prefix '{ids[0][:8]}' matches 3 runs") and all(i in err for i in ids)
    for cmd in (["dashboard"], ["report", "x"], ["lineage", "runs"]):
        args = _parser().parse_args(cmd + ["--config", str(ROOT / "configs/demo.yaml"), "--set", f"workdir={tmp_path}"])
        assert _db_path(args) == tmp_path.resolve() / "lineage.duckdb"
        assert _db_path(_parser().parse_args(cmd + ["--set", f"lineage.path={db}"])) == db.resolve()
    assert plm(["dashboard", "--set", "lineage.nope=1"]) == 2
    assert "lineage.nope" in capsys.readouterr().err


def test_report_of_a_no_new_release_run_names_the_last_run_that_ran_stages(tmp_path):
    db = tmp_path / "l.duckdb"
    worked, _, idle = scheduled_refreshes(db)
    prefixes = {r["run_id"]: r["prefix"] for r in data.list_runs(db)}
    text = write_report(db, idle, tmp_path / "idle.html").read_text()
    assert f"<title>PLM run {prefixes[idle]}</title>" in text
    assert "found no new release (upstream unchanged), so it ran no stages" in text and prefixes[worked] in text


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


def test_the_run_that_did_work_is_offered_however_many_empty_refreshes_came_after(tmp_path):
    """An hourly schedule with a monthly upstream: hundreds of no_new_release runs after the last that ran
    stages. The picker's window (here 5 runs) still offers that run, opens on it and names it in the note."""
    db = tmp_path / "l.duckdb"
    store = LineageStore(db)
    t = utcnow() - timedelta(days=1)
    store.start_run(RunRecord("worked", "data_refresh", "demo", {}, "cfg", "v", "/w", started_at=t))
    store.record_step(StepRecord("worked", "ingest", {}, "k", "completed", t, t))
    store.end_run("worked", "completed")
    for i in range(8):
        rid = f"empty-{i}"
        store.start_run(RunRecord(rid, "data_refresh", "demo", {}, "cfg", "v", "/w",
                                  started_at=t + timedelta(hours=i + 1)))
        store.end_run(rid, "no_new_release")
    assert "worked" not in {r["run_id"] for r in data.list_runs(db, limit=5)}
    runs = data.picker_runs(db, limit=5)
    assert data.default_run(runs) == "worked"
    note = data.run_note(runs, "empty-7")
    assert note is not None and note.empty and [r["run_id"] for r in note.links] == ["worked"]


def test_host_check_refuses_names_it_was_not_given(tmp_path):
    """Raw HTTP against the served dashboard: the Host header decides (DNS rebinding), not the address."""
    import http.client
    import threading

    from pipeline_lib.dashboard.app import make_server
    from pipeline_lib.lineage import LineageStore

    LineageStore(tmp_path / "lineage.duckdb")
    server = make_server(tmp_path / "lineage.duckdb", port=0, allow_hosts=["plm.lab"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    try:
        def status(host: str | None, path: str = "/") -> tuple[int, bytes]:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            con.putrequest("GET", path, skip_host=True)
            if host is not None:
                con.putheader("Host", host)
            con.endheaders()
            r = con.getresponse()
            out = r.status, r.read()
            con.close()
            return out

        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "PLM.LAB.evil.example"):
            code, body = status(host)
            assert code == 403 and b"is not allowed" in body, host
        assert status(f"evil.example:{port}", "/_dash-layout")[0] == 403      # the data endpoints too
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:8050", f"PLM.lab:{port}", "app.localhost"):
            assert status(host)[0] == 200, host
    finally:
        server.shutdown()
        server.server_close()
