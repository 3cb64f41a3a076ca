"""Two ``plm data`` runs started at once on one workdir and one lineage database, read by the dashboard
all the while.

    .venv/bin/pytest -q tests/test_reliability_concurrency.py

The runs go through the fault runner of ``reliability_harness.py`` in ``race`` mode, which makes the
interleaving that breaks today happen every time: the second run enters the ingest stage while the first
is inside it. Without a lock, the second run's clean-up of temporaries deletes the first run's half-built
stage directory. With ``tasks/common.py`` holding a :class:`pipeline_lib.locks.FileLock` per stage key
(the patch in ``docs/reliability.md``), the second run waits, says for whom, then finds the stage cached.

Meanwhile a reader thread renders the dashboard's pages over HTTP (the Dash callback a browser calls,
served on 127.0.0.1) and reads its data functions directly, as fast as it can: no read may fail or take
longer than :data:`READ_BOUND_S`, and neither run may be held up by the reads.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline_lib.dashboard import data
from pipeline_lib.errors import PipelineError
from pipeline_lib.lineage import LineageStore
from tests.reliability_harness import (
    artifact_hashes,
    assert_nothing_partial,
    finish,
    lineage_runs,
    plm_env,
    prefect_api,
    reference_hashes,
    shared_inputs,
    start_plm,
    tail,
)

__all__ = ["prefect_api"]  # the fixture, re-exported so pytest finds it here

READ_BOUND_S = 8.0  # the dashboard waits up to 3 s for a writer's lock, then reads a snapshot
PAGES = ("/", "/stages", "/dataset", "/lineage", "/training")


class DashboardReader(threading.Thread):
    """Polls a served dashboard and the data functions behind it until stopped; records every read."""

    def __init__(self, db: Path, url: str) -> None:
        super().__init__(daemon=True)
        self.db, self.url = db, url
        self.stop = threading.Event()
        self.reads: list[tuple[str, float]] = []     # (what, seconds)
        self.errors: list[str] = []
        self.statuses: set[str] = set()              # run statuses seen while reading

    def _render(self, page: str, run_id: str) -> None:
        body = {"output": "page.children", "outputs": {"id": "page", "property": "children"},
                "inputs": [{"id": "url", "property": "pathname", "value": page},
                           {"id": "run", "property": "value", "value": run_id},
                           {"id": "version", "property": "data", "value": None}],
                "changedPropIds": ["url.pathname"], "state": []}
        req = urllib.request.Request(f"{self.url}/_dash-update-component", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        if '"className":"error"' in text:  # the page caught an exception and shows it
            raise AssertionError(f"page {page} shows an error: {text[:2000]}")

    def _timed(self, what: str, fn, *args):
        t0 = time.monotonic()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001  (every failure is a finding)
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        finally:
            self.reads.append((what, time.monotonic() - t0))

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.db.exists():
                time.sleep(0.05)
                continue
            runs = self._timed("list_runs", data.list_runs, self.db) or []
            self.statuses |= {r["status"] for r in runs}
            for r in runs:
                steps = self._timed("run_steps", data.run_steps, self.db, r["run_id"]) or []
                self._timed("stage_summary", data.stage_summary, steps)
                self._timed("dataset", data.dataset, self.db, r["run_id"])
            if runs:
                for page in PAGES:
                    self._timed(f"GET {page}", self._render, page, runs[0]["run_id"])


@pytest.fixture(scope="module")
def two_runs(prefect_api, tmp_path_factory):
    from pipeline_lib.dashboard.app import make_server

    cfg, runner = shared_inputs(tmp_path_factory)
    env = plm_env(prefect_api)
    expected = reference_hashes(tmp_path_factory, env)
    tmp = tmp_path_factory.mktemp("two-runs")
    workdir, race = tmp / "shared-work", tmp / "race"
    race.mkdir()
    server = make_server(workdir / "lineage.duckdb", port=0, refresh_s=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reader = DashboardReader(workdir / "lineage.duckdb", f"http://127.0.0.1:{server.server_port}")
    reader.start()
    try:
        logs = [tmp / "run-a.log", tmp / "run-b.log"]
        started = time.monotonic()
        procs = [start_plm(cfg, workdir, env, log, fault=f"race:{race}", runner=runner) for log in logs]
        codes = [finish(p, log) for p, log in zip(procs, logs, strict=False)]
        elapsed = time.monotonic() - started
    finally:
        reader.stop.set()
        reader.join(timeout=60)
        server.shutdown()
        server.server_close()
    assert codes == [0, 0], "\n\n".join(f"exit {c}:\n{tail(log)}" for c, log in zip(codes, logs, strict=False))
    return workdir, race, procs, logs, expected, reader, elapsed


def test_two_runs_at_once_both_complete_with_the_same_artifacts(two_runs):
    workdir, race, procs, logs, expected, _, _ = two_runs
    assert lineage_runs(workdir) == {p.pid: "completed" for p in procs}
    assert_nothing_partial(workdir)
    assert artifact_hashes(workdir) == expected

    first = int((race / "first-computing").read_text())
    second = int((race / "second-entering").read_text())
    second_log = logs[[p.pid for p in procs].index(second)].read_text()
    assert f"waiting for lock {workdir / 'stages' / 'ingest'}" in second_log and f"held by pid {first}" in second_log
    store = LineageStore(workdir / "lineage.duckdb")
    ingest = store.query("SELECT r.pid, s.status FROM steps s JOIN runs r USING (run_id) WHERE s.stage='ingest'")
    assert {(r["pid"], r["status"]) for r in ingest} == {(first, "completed"), (second, "cached")}


def test_dashboard_reads_throughout_both_runs(two_runs):
    workdir, _, procs, _, _, reader, elapsed = two_runs
    assert reader.errors == []
    kinds = {what for what, _ in reader.reads}
    assert {"list_runs", "run_steps", "dataset", *(f"GET {p}" for p in PAGES)} <= kinds
    assert "running" in reader.statuses, "the reads should overlap the runs"
    slowest = max(reader.reads, key=lambda r: r[1])
    assert slowest[1] < READ_BOUND_S, f"slowest read {slowest}"
    assert len(reader.reads) >= 20, f"only {len(reader.reads)} reads in {elapsed:.0f} s"
    # and the pages still render the finished runs once both are done
    with pytest.raises(PipelineError):
        data.list_runs(workdir / "missing.duckdb")
    assert {r["status"] for r in data.list_runs(workdir / "lineage.duckdb")} == {"completed"}


def test_dashboard_waits_for_a_database_being_created(tmp_path):
    """The first run creates ``lineage.duckdb``: a read between DuckDB making the file and the run committing
    its tables found no ``runs`` table and failed with a raw ``CatalogException`` (seen by the reader above).
    Now the read waits for the tables like it waits for a lock, and says what is wrong if they never come."""
    import duckdb

    db = tmp_path / "lineage.duckdb"
    duckdb.connect(str(db)).close()  # the file as DuckDB creates it, before any table
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="has no lineage tables"):
        data.list_runs(db)
    assert 2.5 < time.monotonic() - t0 < READ_BOUND_S  # it waited its lock_wait_s (3 s), then gave up

    creator = threading.Timer(0.5, lambda: LineageStore(db))  # the run commits its schema meanwhile
    creator.start()
    assert data.list_runs(db) == []
    creator.join()
