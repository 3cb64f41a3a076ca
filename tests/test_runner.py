"""Task runners from config: the demo's data flow on threads and on a local Dask cluster gives the same artifacts.

    .venv/bin/pytest -q tests/test_runner.py

Real Prefect runs (ephemeral API), a real Dask ``LocalCluster`` of two worker processes, real mmseqs and DuckDB.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pyarrow.parquet as pq
import pytest
from conftest_http import http_server  # noqa: F401  (fixture)
from http_server import Fault
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.cli import main as plm
from flows.data_refresh import data_refresh
from flows.runner import run_configured, task_runner
from pipeline_lib.config import RunnerConfig, load_config
from pipeline_lib.errors import ConfigError, DataValidationError, TransientError
from pipeline_lib.lineage import LineageStore, StepRecord, utcnow
from tasks.artifacts import flow_run_artifacts
from tasks.common import RunContext, code_version, lineage_task, resolve, retry_transient
from tests.conftest import ROOT
from tests.helpers import family_fasta

DEMO = str(ROOT / "configs" / "demo.yaml")
DATA_STAGES = ("ingest", "cluster", "split", "shards")


def overrides(workdir: Path, *extra: str) -> list[str]:
    # linear-time clustering at both levels (as in test_flow.py) and one mmseqs thread: the demo corpus in
    # seconds, and on a busy 2-core machine two workers each running two threads would only thrash; shard
    # partitions of 1,000 rows: the demo's ~2,300 sequences make 3, written side by side on the workers
    return [f"workdir={workdir}", "cluster.threads=1",
            "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]",
            f"shards.partition_rows={PARTITION_ROWS}", *extra]


PARTITION_ROWS = 1000


def artifacts(result) -> dict[str, str]:
    """Content hash of every data artifact, by stage and file name relative to its stage directory (the shard
    manifest aside: its provenance names the run; compared without it below)."""
    out = {}
    for stage in DATA_STAGES:
        out_dir = Path(result.stages[stage].directory)
        for art in result.stages[stage].outputs.values():
            if art.kind != "manifest":
                out[f"{stage}/{Path(art.path).relative_to(out_dir)}"] = art.content_hash
    return out


def manifest_without_provenance(result) -> dict:
    manifest = json.loads(Path(result.stages["shards"].path("manifest.json")).read_text())
    manifest.pop("provenance")
    return manifest


AUDIT_CHUNK = 80


def without_audit(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [p for p in params if not p[0].startswith("audit")]


def step_params(result) -> list[tuple[str, str]]:
    rows = LineageStore(result.lineage).query("SELECT stage, params FROM steps WHERE run_id=?", [result.run_id])
    return sorted((r["stage"], r["params"]) for r in rows)  # (shard partitions finish in any order)


CODE_AT_START = code_version.__wrapped__()


@pytest.fixture(scope="module")
def thread_run(prefect_harness, tmp_path_factory):
    return run_configured(data_refresh, DEMO, overrides(tmp_path_factory.mktemp("threads") / "work"))


def _spy_cluster():
    """A real ``LocalCluster`` that notes its workers' pids and, before it closes, the tasks they ran."""
    import distributed

    class SpyCluster(distributed.LocalCluster):
        seen: list[SpyCluster] = []

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.kwargs, self.task_stream = kwargs, []
            self.spy = distributed.Client(self, set_as_default=False)
            self.spy.get_task_stream()  # starts the scheduler's task-stream record
            self.worker_pids = self.spy.run(os.getpid)
            SpyCluster.seen.append(self)

        def close(self, *args, **kwargs):
            if getattr(self, "spy", None) is not None:
                self.task_stream, spy, self.spy = self.spy.get_task_stream(), self.spy, None
                spy.close()
            return super().close(*args, **kwargs)

    return SpyCluster


def test_dask_local_cluster_gives_the_thread_runners_artifacts(thread_run, tmp_path, monkeypatch):
    import distributed

    spy_cls = _spy_cluster()
    monkeypatch.setattr(distributed, "LocalCluster", spy_cls)  # what DaskTaskRunner starts when given no address
    # the leakage audit's held-out queries in chunks of 80 (the thread run searched them in one)
    res = run_configured(data_refresh, DEMO, overrides(tmp_path / "work", "runner.kind=dask",
                                                       f"split.audit.chunk_queries={AUDIT_CHUNK}"))

    assert res.status == "completed" and not any(res.stages[s].cached for s in DATA_STAGES)
    assert artifacts(res) == artifacts(thread_run) and len(artifacts(res)) >= 7
    assert manifest_without_provenance(res) == manifest_without_provenance(thread_run)
    # the runner enters neither cache keys nor the config hash (and no artifact names its workdir)
    assert without_audit(step_params(res)) == without_audit(step_params(thread_run))
    # query-sharded audit: the chunks ran on the workers; their hits, merged in chunk order, are the one search's
    from tests.test_split_audit import chunk_hits

    one, many = chunk_hits(thread_run), chunk_hits(res)
    queries = sum(res.stages["audit"].stats[s]["queries"] for s in ("valid", "test"))
    assert len(one) == 1 and len(many) == -(-queries // AUDIT_CHUNK) >= 3
    assert [line for f in many for line in f.read_text().splitlines()] == one[0].read_text().splitlines()
    assert pq.read_table(res.stages["audit"].path("audit.parquet")).equals(
        pq.read_table(thread_run.stages["audit"].path("audit.parquet")))
    if code_version.__wrapped__() == CODE_AT_START:  # (unless the sources were edited while the test ran)
        assert {s: res.stages[s].cache_key for s in DATA_STAGES} == \
            {s: thread_run.stages[s].cache_key for s in DATA_STAGES}
    runs = {r["run_id"]: r["config_hash"] for r in LineageStore(res.lineage).runs()}
    assert runs[res.run_id] == load_config(DEMO, overrides(tmp_path / "work", "runner.kind=dask",
                                                           f"split.audit.chunk_queries={AUDIT_CHUNK}")).hash()

    (cluster,) = spy_cls.seen
    assert cluster.kwargs | {"n_workers": 2, "threads_per_worker": 1, "processes": True} == cluster.kwargs
    pids = set(cluster.worker_pids.values())
    assert len(pids) == 2 and os.getpid() not in pids
    done = [t for t in cluster.task_stream if t["status"] == "OK"]
    rows = res.stages["ingest"].outputs["sequences.parquet"].rows
    partitions = -(-rows // PARTITION_ROWS)
    assert partitions >= 2
    # source, ingest, each cluster level, cluster, split, the audit's target, chunks and summary, each shard
    # partition and the shards manifest each ran as a task on one of the two worker processes; the partitions'
    # rows and tokens add up to the manifest's
    assert len(done) == 5 + 2 + 2 + len(many) + partitions and {t["worker"] for t in done} <= set(cluster.worker_pids)
    steps = LineageStore(res.lineage).query("SELECT stage, status, stats FROM steps WHERE run_id=?", [res.run_id])
    assert sorted(s["stage"] for s in steps) == \
        sorted(["source", *DATA_STAGES, "cluster_level", "cluster_level", "audit_target", *["audit_chunk"] * len(many),
                "audit", *["shards_partition"] * partitions])  # kept by the workers, written here
    assert {s["status"] for s in steps} == {"completed"}
    parts = [json.loads(s["stats"]) for s in steps if s["stage"] == "shards_partition"]
    assert sorted(p["partition"] for p in parts) == list(range(partitions))
    for split, info in manifest_without_provenance(res)["splits"].items():
        assert info["rows"] == sum(p["splits"][split]["rows"] for p in parts)
        assert info["tokens"] == sum(p["splits"][split]["tokens"] for p in parts)
    bar = next(a for a in flow_run_artifacts(res.run_id) if a.key == "shard-partitions")
    assert float(bar.data) == 100.0 and f"{partitions} / {partitions} partitions done" in bar.description


def test_ray_local_instance_gives_the_thread_runners_artifacts(thread_run, tmp_path):
    """The same data flow on a local Ray instance (prefect-ray, the optional ``ray`` extra): same artifacts, and
    a stage task runs in a Ray worker process whose lineage reaches the database through the flow."""
    pytest.importorskip("prefect_ray", reason="optional extra: pip install 'plm-pipeline[ray]'")
    from prefect import flow

    from flows.runner import task_runner

    res = run_configured(data_refresh, DEMO, overrides(tmp_path / "work", "runner.kind=ray"))
    assert res.status == "completed" and not any(res.stages[s].cached for s in DATA_STAGES)
    assert artifacts(res) == artifacts(thread_run)
    assert manifest_without_provenance(res) == manifest_without_provenance(thread_run)
    assert step_params(res) == step_params(thread_run)

    db = tmp_path / "probe.duckdb"
    LineageStore(db)

    @flow(task_runner=task_runner(RunnerConfig(kind="ray")))
    def probe_flow() -> tuple[str, int]:
        ctx = RunContext("run-ray", str(tmp_path), str(db))
        return resolve(ctx, _lineage_probe.submit(ctx, False))

    store_kind, worker_pid = probe_flow()
    assert store_kind == "PendingLineage" and worker_pid != os.getpid()
    assert LineageStore(db).query("SELECT status FROM steps WHERE step_id='probe-False'") == [{"status": "completed"}]


def test_process_pool_runner_finds_the_thread_runners_stages_cached(thread_run):
    """Same workdir, another runner: every stage is found cached under the same key, from worker processes."""
    workdir = Path(thread_run.lineage).parent
    res = run_configured(data_refresh, DEMO, overrides(workdir, "runner.kind=processes", "runner.max_workers=1"))
    assert res.status == "completed"
    if code_version.__wrapped__() != CODE_AT_START:
        pytest.skip("the sources were edited while the test ran: every cache key changed")
    assert all(res.stages[s].cached for s in DATA_STAGES)
    assert {s: res.stages[s].cache_key for s in DATA_STAGES} == {s: thread_run.stages[s].cache_key for s in DATA_STAGES}
    assert artifacts(res) == artifacts(thread_run)


def test_a_deployed_flow_moves_itself_to_the_configured_runner(thread_run, monkeypatch):
    """A deployment calls the flow itself, on Prefect's default thread pool: the flow runs itself again as a
    subflow on the runner its config names, and only that subflow opens a lineage run."""
    import flows.runner

    asked: list[str] = []
    real = flows.runner.task_runner
    monkeypatch.setattr(flows.runner, "task_runner", lambda cfg: asked.append(cfg.kind) or real(cfg))
    workdir = Path(thread_run.lineage).parent
    before = len(LineageStore(thread_run.lineage).runs())
    res = data_refresh(DEMO, overrides(workdir, "runner.kind=processes", "runner.max_workers=1"))  # not run_configured
    assert asked == ["processes"] and res.status == "completed"
    assert len(LineageStore(thread_run.lineage).runs()) == before + 1
    with_threads = data_refresh(DEMO, overrides(workdir))  # already on its runner: no subflow
    assert asked == ["processes"] and with_threads.status == "completed"


def test_source_urls_download_side_by_side_then_fetch_finds_them(prefect_harness, http_server, tmp_path):  # noqa: F811
    family_fasta(tmp_path / "all.fa", families=6, mutants=2, unrelated=6, length=80)
    records = (tmp_path / "all.fa").read_text().split(">")[1:]
    urls = []
    for i, part in enumerate((records[::2], records[1::2])):
        http_server.put(f"/part{i}.fa", ("".join(">" + r for r in part)).encode())
        # check_release's HEAD answers at once; the download then stalls 1.5 s midway
        http_server.add_faults(f"/part{i}.fa", Fault(), Fault(stall_s=1.5, stall_after=200))
        urls.append(http_server.url(f"/part{i}.fa"))
    res = run_configured(data_refresh, DEMO, overrides(tmp_path / "work", f"source={{kind: fasta, paths: {urls}}}"))

    assert res.status == "completed" and res.stages["ingest"].stats["records_in"] == len(records)
    for i in range(2):  # one GET each: the source stage found the files in place
        assert [r.method for r in http_server.requests_for(f"/part{i}.fa")] == ["HEAD", "GET"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(res.run_id)])))
    downloads = [r for r in runs if r.name.startswith("source_url")]
    assert len(downloads) == 2 and all(r.state.is_completed() for r in downloads)
    # both were downloading at once: each started before the other ended
    assert max(r.start_time for r in downloads) < min(r.end_time for r in downloads)


def test_lineage_writes_from_several_processes_at_once_all_land(tmp_path):
    """DuckDB lets one process write at a time: each write retries while another holds the file."""
    db = tmp_path / "lineage.duckdb"
    LineageStore(db)
    script = (
        "import sys; from datetime import datetime, timezone\n"
        "from pipeline_lib.lineage import LineageStore, StepRecord\n"
        "store, w = LineageStore(sys.argv[1]), sys.argv[2]\n"
        "for i in range(15):\n"
        "    t = datetime.now(timezone.utc)\n"
        "    store.record_step(StepRecord('r', f'w{w}-{i}', {}, f'k{w}-{i}', 'completed', t, t))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db), str(w)], cwd=ROOT, stderr=subprocess.PIPE)
             for w in range(3)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    stages = {r["stage"] for r in LineageStore(db).query("SELECT stage FROM steps")}
    assert stages == {f"w{w}-{i}" for w in range(3) for i in range(15)}


@lineage_task(name="lineage_probe")
def _lineage_probe(ctx: RunContext, fail: bool) -> tuple[str, int]:
    """A stage-like task: records a step in lineage, then returns or fails."""
    t = utcnow()
    ctx.store.record_step(StepRecord(ctx.run_id, "probe", {"fail": fail}, "key", "failed" if fail else "completed",
                                     t, t, step_id=f"probe-{fail}"))
    ctx.store.record_metrics(ctx.run_id, f"probe-{fail}", [("probe/value", 1, 2.5)])
    if fail:
        raise DataValidationError("bad record", path="x.fa", record=3)
    return type(ctx.store).__name__, os.getpid()


def test_workers_hand_their_lineage_to_the_flow_process(prefect_harness, tmp_path):
    """DuckDB allows one writing process: on a process pool the task keeps its records, and they reach the
    database through the flow's process, from a result and from a failure alike."""
    from prefect import flow
    from prefect.task_runners import ProcessPoolTaskRunner

    db = tmp_path / "lineage.duckdb"
    LineageStore(db)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def probe_flow() -> tuple:
        ctx = RunContext("run-1", str(tmp_path), str(db))
        ok = resolve(ctx, _lineage_probe.submit(ctx, False))
        try:
            resolve(ctx, _lineage_probe.submit(ctx, True))
        except DataValidationError as exc:
            return ok, exc
        return ok, None

    (store_kind, worker_pid), error = probe_flow()
    assert store_kind == "PendingLineage" and worker_pid != os.getpid()   # the worker never had the database
    assert isinstance(error, DataValidationError) and error.record == 3
    steps = LineageStore(db).query("SELECT step_id, status FROM steps ORDER BY step_id")
    assert steps == [{"step_id": "probe-False", "status": "completed"}, {"step_id": "probe-True", "status": "failed"}]
    assert len(LineageStore(db).query("SELECT * FROM metrics WHERE name='probe/value' AND value=2.5")) == 2
    # in the writing process itself nothing is deferred
    here = RunContext("run-2", str(tmp_path), str(db))
    assert isinstance(here.store, LineageStore) and resolve(here, 7) == 7



@lineage_task(name="flaky_probe", retries=2, retry_condition_fn=retry_transient)
def _flaky_probe(ctx: RunContext, fail_times: int) -> int:
    """Records one step per attempt; its first ``fail_times`` attempts fail with a transient error."""
    from prefect.context import TaskRunContext

    attempt = TaskRunContext.get().task_run.run_count
    t = utcnow()
    failing = attempt <= fail_times
    ctx.store.record_step(StepRecord(ctx.run_id, "flaky", {"attempt": attempt}, "key",
                                     "failed" if failing else "completed", t, t, step_id=f"{ctx.run_id}-{attempt}"))
    if failing:
        raise TransientError(f"attempt {attempt}: connection reset")
    return os.getpid()


def test_a_retried_task_on_a_worker_records_every_attempt(prefect_harness, tmp_path):
    """Prefect retries a task inside the worker and returns only the last attempt: the failed attempts'
    records come back with it, once each, whether the last attempt succeeds or fails too."""
    from prefect import flow
    from prefect.task_runners import ProcessPoolTaskRunner

    db = tmp_path / "lineage.duckdb"
    LineageStore(db)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def probe_flow() -> tuple:
        ok = resolve(ctx := RunContext("run-ok", str(tmp_path), str(db)), _flaky_probe.submit(ctx, 1))
        try:
            resolve(ctx := RunContext("run-bad", str(tmp_path), str(db)), _flaky_probe.submit(ctx, 5))
        except TransientError as exc:
            return ok, exc
        return ok, None

    worker_pid, error = probe_flow()
    assert worker_pid != os.getpid() and isinstance(error, TransientError) and "attempt 3" in str(error)
    steps = LineageStore(db).query("SELECT run_id, step_id, status FROM steps ORDER BY run_id DESC, step_id")
    assert steps == [{"run_id": "run-ok", "step_id": "run-ok-1", "status": "failed"},
                     {"run_id": "run-ok", "step_id": "run-ok-2", "status": "completed"},
                     *[{"run_id": "run-bad", "step_id": f"run-bad-{i}", "status": "failed"} for i in (1, 2, 3)]]

def test_pipeline_errors_survive_the_trip_back_from_a_worker(tmp_path):
    """Dask pickles a failed task's exception back to the flow: the type and message must survive (an error
    whose keywords were lost would arrive as a TypeError from its constructor instead)."""
    from pipeline_lib.errors import ChecksumError, DataValidationError, DownloadError, ToolError
    from pipeline_lib.locks import LockTimeout
    from pipeline_lib.sources.download import PermanentDownloadError

    errors = [DataValidationError("truncated gzip", path="in.fa.gz", record=7), ToolError("mmseqs failed",
              argv=["mmseqs", "linclust"], returncode=1, stderr_tail="oops"), DownloadError("stalled"),
              ChecksumError("md5 mismatch"), PermanentDownloadError("HTTP 404", url="http://h/x.fa", status=404),
              LockTimeout(tmp_path / "a.lock", 2.5, {"pid": 12, "host": "n1"})]
    for exc in errors:
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    assert pickle.loads(pickle.dumps(errors[4])).status == 404


# --- configuration ---------------------------------------------------------------------------------

def test_runner_defaults_to_threads_and_builds_each_kind():
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    cfg = load_config(DEMO)
    assert cfg.runner.kind == "threads" and isinstance(task_runner(cfg.runner), ThreadPoolTaskRunner)
    assert isinstance(task_runner(RunnerConfig(kind="processes", max_workers=3)), ProcessPoolTaskRunner)
    existing = task_runner(load_config(DEMO, ["runner.kind=dask", "runner.dask.address=tcp://10.1.2.3:8786"]).runner)
    assert isinstance(existing, DaskTaskRunner) and existing.address == "tcp://10.1.2.3:8786"
    assert not existing.cluster_kwargs  # an existing scheduler: no local cluster
    local = task_runner(RunnerConfig(kind="dask", dask={"n_workers": 3, "threads_per_worker": 2}))
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["threads_per_worker"] == 2 and local.cluster_kwargs["processes"] is True


@pytest.mark.parametrize("override, message", [
    ("runner.kind=spark", "runner.kind: Input should be 'threads', 'processes', 'dask' or 'ray'"),
    ("runner.dask.address=10.1.2.3:8786", "runner.dask.address: Value error, must look like tcp://host:port"),
    ("runner.dask.address=tcp://host", "runner.dask.address: Value error, must look like tcp://host:port"),
    ("runner.dask.n_workers=0", "runner.dask.n_workers: Input should be greater than or equal to 1"),
    ("runner.ray.address=http://head:10001", "runner.ray.address: Value error, must be 'auto'"),
    ("runner.max_workers=0", "runner.max_workers: Input should be greater than or equal to 1"),
    ("runner.threads=4", "runner.threads: unknown key"),
])
def test_invalid_runner_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert message in str(err.value)


def test_valid_addresses_are_accepted():
    cfg = load_config(DEMO, ["runner.dask.address=tls://[fd00::5]:8786", "runner.ray.address=ray://head:10001"])
    assert cfg.runner.dask.address == "tls://[fd00::5]:8786" and cfg.runner.ray.address == "ray://head:10001"
    assert load_config(DEMO, ["runner.ray.address=auto"]).runner.ray.address == "auto"


def test_ray_without_prefect_ray_is_a_clear_config_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if the optional extra were not installed
    with pytest.raises(ConfigError,
                       match=r"runner.kind is 'ray' but prefect-ray is not installed.*plm-pipeline\[ray\]"):
        task_runner(RunnerConfig(kind="ray"))
    # the CLI reports it before Prefect starts, and nothing runs
    assert plm(["data", DEMO, "--set", f"workdir={tmp_path / 'work'}", "--set", "runner.kind=ray"]) == 2
    assert "prefect-ray is not installed" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
