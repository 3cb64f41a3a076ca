"""Deployments against a real Prefect server: the scheduler fires them, a process worker runs them.

    .venv/bin/python -m pytest -q tests/test_deploy.py

Starts `prefect server start` on a free 127.0.0.1 port with its own PREFECT_HOME (analytics off, the scheduler's
loops shortened with its documented settings), deploys with `plm deploy` (and prefect.yaml with `prefect deploy
--all`) and starts `plm worker` / `prefect worker start` to execute the runs on a tiny FASTA file: the path of
docs/operations.md. Each test uses a work pool of its own, so no worker takes another test's runs. Every wait is
bounded; the module takes about three minutes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from flows.deploy import DEFAULT_POOL, FLOWS, deploy, ensure_work_pool, parse_interval, upcoming_runs
from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError, PipelineError
from pipeline_lib.lineage import LineageStore
from tests.conftest import ROOT
from tests.helpers import family_fasta
from tests.http_server import LocalHTTPServer

SERVER_START_S = 120
RUN_S = 150
PLM = str(Path(sys.executable).parent / "plm")
DEMO = str(ROOT / "configs" / "demo.yaml")
# the scheduler's loops, shortened for the test (defaults: 60 s and 5 s); docs/operations.md names the same settings
FAST_SCHEDULER = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                  "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process and everything it started (a worker's flow-run subprocesses): its own session."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # flow runs the worker left behind
    except ProcessLookupError:
        pass


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as under systemd, whatever started pytest


@contextmanager
def prefect_server(home: Path, **extra_env: str):
    """A real Prefect server subprocess; yields (api_url, env for Prefect child processes)."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONPATH": str(ROOT), **extra_env}
    log = home / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--no-ui"], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after {SERVER_START_S}s:\n{_tail(log)}")
            time.sleep(0.5)
        yield api, env
    finally:
        _stop(proc)
        assert "bulk DML" not in _tail(log, 10**6), "the scheduler failed: " + _tail(log)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-server-home"), **FAST_SCHEDULER) as s:
        yield s


@pytest.fixture
def api(server):
    """Point this process's Prefect client at the test server (whatever harness is active)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server[0]}):
        yield server


def _tiny_source(tmp_path: Path) -> list[str]:
    """Overrides that run the demo config on a tiny FASTA file in its own workdir (seconds, not a minute)."""
    fasta = tmp_path / "tiny.fa"
    family_fasta(fasta, families=4, mutants=3, unrelated=12)
    return [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{fasta}]}}",
            "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]"]


def _start_worker(argv: list[str], env: dict, tmp_path: Path, log: Path, *,
                  sigint_ignored: bool = False) -> subprocess.Popen:
    """A worker in a session of its own (so _stop ends its flow runs too), fast polling, its own PREFECT_HOME."""
    worker_env = {**env, "PREFECT_HOME": str(tmp_path / f"home-{log.stem}"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with open(log, "w") as fh:
        return subprocess.Popen(argv, env=worker_env, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored
                                else _sigint_default)


def _wait_log(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in _tail(log, 10**6):
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{_tail(log)}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout_s}s:\n{_tail(log)}"
        time.sleep(0.5)


def test_prefect_yaml_declares_valid_deployments():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = spec["deployments"]
    assert {d["entrypoint"] for d in deployments} == set(FLOWS.values())
    for d in deployments:
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        assert flow.name == d["entrypoint"].split(":")[1]
        assert set(d["parameters"]) <= set(flow.parameters.properties)   # the server rejects unknown ones
        load_config(ROOT / d["parameters"]["config_path"])            # the configs exist and validate
        assert d["work_pool"]["name"] == DEFAULT_POOL
        for s in d["schedules"]:
            Cron(s["cron"], timezone=s["timezone"])                     # raises on an invalid cron string


def test_deploy_refuses_without_a_long_lived_server(monkeypatch):
    """Without PREFECT_API_URL, Prefect's client would start a temporary server, and deploy would report success
    against it a second before it is gone; with one that does not answer, a clear error too."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ConfigError, match="needs a long-lived Prefect server: PREFECT_API_URL is not set"):
            deploy(DEMO, "0 3 * * 1", check_s=0)
    port = _free_port()
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        with pytest.raises(PipelineError, match=f"127.0.0.1:{port}/api does not answer"):
            deploy(DEMO, "0 3 * * 1", check_s=0)


def test_deploy_rejects_bad_input_before_touching_the_server():
    with pytest.raises(ConfigError, match="invalid schedule"):
        deploy(DEMO, "every monday")
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        deploy(DEMO, "0 3 * * 1", timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="unknown flow"):
        deploy(DEMO, "0 3 * * 1", flow="train_everything")
    with pytest.raises(ConfigError):
        deploy(DEMO, "0 3 * * 1", overrides=["cluster.threads=lots"])
    with pytest.raises(ConfigError, match="exactly one"):
        deploy(DEMO, "0 3 * * 1", interval="6h")
    with pytest.raises(ConfigError, match="exactly one"):
        deploy(DEMO)
    with pytest.raises(ConfigError, match="invalid interval"):
        deploy(DEMO, interval="6 weeks")


@pytest.mark.parametrize("text, seconds", [("20s", 20), ("15m", 900), ("6h", 21600), ("1d", 86400), ("90", 90),
                                           ("1.5h", 5400)])
def test_interval_parsing(text, seconds):
    assert parse_interval(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5m", "6w", "h", "1 h 2 m"])
def test_interval_parsing_rejects(text):
    with pytest.raises(ConfigError, match="invalid interval"):
        parse_interval(text)


def test_doctor_fails_clearly_without_a_reachable_server(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)   # a temporary server would answer and look healthy
    unset = subprocess.run([PLM, "doctor"], env=env, capture_output=True, text=True, timeout=120)
    assert unset.returncode == 1 and re.search(r"^server\s+fail\s+PREFECT_API_URL is not set", unset.stdout, re.M)
    closed = subprocess.run([PLM, "doctor"], env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"},
                            capture_output=True, text=True, timeout=120)
    assert closed.returncode == 1 and "does not answer" in closed.stdout, closed.stdout + closed.stderr


def _runs_of(client, dep_id: UUID) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
                                 sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def _wait_runs_final(dep_id: UUID, n: int, worker: subprocess.Popen, log: Path, timeout_s: float) -> list:
    """The deployment's first ``n`` runs (by scheduled time) once all are final; fails with the worker's log."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = _runs_of(client, dep_id)[:n]
            if len(runs) == n and all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            assert worker.poll() is None, f"worker exited with {worker.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, (f"runs not final after {timeout_s}s: "
                                                 f"{[(r.name, r.state_name) for r in runs]}\n{_tail(log)}")
            time.sleep(1)


def test_scheduled_refresh_fires_on_a_worker(api, tmp_path):
    """docs/operations.md's path: `plm deploy --interval`, `plm worker`, and the server's scheduler creating the
    runs. The first run builds the data, the second finds nothing new upstream; lineage and Prefect agree."""
    from prefect.client.orchestration import get_client

    _, env = api
    pool = "plm-scheduled"
    sets = [arg for o in _tiny_source(tmp_path) for arg in ("--set", o)]
    t0 = time.monotonic()
    out = subprocess.run([PLM, "deploy", DEMO, "--interval", "20s", "--name", "every-20s", "--pool", pool, *sets],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "one run at a time" in out.stdout and "next run" in out.stdout   # deploy saw the scheduler's runs
    dep_id = UUID(re.search(r"deployment ([0-9a-f-]{36})", out.stdout).group(1))
    log = tmp_path / "worker.log"
    worker = _start_worker([PLM, "worker", "--pool", pool], env, tmp_path, log)
    try:
        first, second = _wait_runs_final(dep_id, 2, worker, log, RUN_S)
        with get_client(sync_client=True) as client:
            client.delete_deployment(dep_id)   # no third run while the worker stops
    finally:
        _stop(worker)
    print(f"two scheduled runs done {time.monotonic() - t0:.0f} s after plm deploy started")
    assert first.auto_scheduled and second.auto_scheduled           # the scheduler made them, not a test
    assert (second.expected_start_time - first.expected_start_time).total_seconds() == 20
    assert first.state.is_completed() and second.state.is_completed(), _tail(log)
    store = LineageStore(tmp_path / "work" / "lineage.duckdb")
    runs = {r["run_id"]: r for r in store.runs()}
    assert set(runs) == {str(first.id), str(second.id)}             # lineage ids are the flow run ids
    assert runs[str(first.id)]["status"] == "completed"
    assert runs[str(second.id)]["status"] == "no_new_release"
    stages = {r["stage"]: r["status"] for r in store.query("SELECT stage, status FROM steps WHERE run_id=?",
                                                           [str(first.id)])}
    assert {"ingest", "cluster", "split", "shards"} <= set(stages) and set(stages.values()) == {"completed"}
    assert not store.query("SELECT * FROM steps WHERE run_id=?", [str(second.id)])


def test_deployment_runs_one_at_a_time(api, tmp_path):
    """concurrency limit 1: two runs triggered together on a worker without a limit run one after the other."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    _, env = api
    pool = "plm-overlap"
    overrides = _tiny_source(tmp_path)
    dep_id = deploy(DEMO, "0 3 * * 1", name="test-refresh", work_pool=pool, overrides=overrides)
    assert deploy(DEMO, "0 3 * * 1", name="test-refresh", work_pool=pool, overrides=overrides) == dep_id  # update
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
        assert dep.work_pool_name == pool and dep.pull_steps
        assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
        assert dep.parameters == {"config_path": "configs/demo.yaml", "overrides": overrides, "if_changed": True}
        assert client.read_work_pool(pool).type == "process"
    assert len(upcoming_runs(dep_id)) == 3                          # the scheduler's next Mondays

    runs = [run_deployment("data_refresh/test-refresh", timeout=0, as_subflow=False) for _ in range(2)]
    log = tmp_path / "worker.log"
    worker = _start_worker([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool], env, tmp_path, log)
    try:
        states = [_wait_final(r.id, worker, time.monotonic() + RUN_S) for r in runs]
    finally:
        _stop(worker)
    assert all(s is not None and s.is_completed() for s in states), f"{states}:\n{_tail(log)}"
    with get_client(sync_client=True) as client:
        done = sorted((client.read_flow_run(r.id) for r in runs), key=lambda r: r.start_time)
        waited = [s.name for s in client.read_flow_run_states(done[1].id)]
    assert done[1].start_time >= done[0].end_time, "the runs overlapped"
    assert "AwaitingConcurrencySlot" in waited, waited
    status = {r["run_id"]: r["status"] for r in LineageStore(tmp_path / "work" / "lineage.duckdb").runs()}
    assert status == {str(done[0].id): "completed", str(done[1].id): "no_new_release"}


def test_run_time_config_error_is_a_failed_run_with_a_webhook(api, tmp_path):
    """A custom run (Prefect UI or `prefect deployment run --param`) whose override does not load fails like a
    stage would: a failed run in lineage under the flow run's id, and the webhook."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    _, env = api
    pool = "plm-config-error"
    with LocalHTTPServer(tmp_path / "www") as hook:
        overrides = [*_tiny_source(tmp_path), f"notify.webhook_url={hook.url('/hook')}"]
        deploy(DEMO, "0 3 * * 1", name="config-error", work_pool=pool, overrides=overrides)
        run = run_deployment("data_refresh/config-error", timeout=0, as_subflow=False,
                             parameters={"overrides": [*overrides, "clusterr.threads=4"]})
        log = tmp_path / "worker.log"
        worker = _start_worker([PLM, "worker", "--pool", pool], env, tmp_path, log)
        try:
            state = _wait_final(run.id, worker, time.monotonic() + RUN_S)
        finally:
            _stop(worker)
        posts = [json.loads(r.body) for r in hook.requests if r.method == "POST"]
    assert state is not None and state.is_failed(), f"{state}:\n{_tail(log)}"
    failed = LineageStore(tmp_path / "work" / "lineage.duckdb").query("SELECT run_id, status, error FROM runs")
    assert [(r["run_id"], r["status"]) for r in failed] == [(str(run.id), "failed")]
    assert "clusterr: unknown key" in failed[0]["error"]
    assert [(p["run_id"], p["state"], "clusterr" in p["error"]) for p in posts] == [(str(run.id), "failed", True)]
    with get_client(sync_client=True) as client:
        assert "clusterr" in client.read_flow_run(run.id).state.message


def test_runs_started_through_the_api_may_not_name_executables_or_outside_paths(api, tmp_path):
    """Whoever can start a deployment's runs (the Prefect UI, `prefect deployment run --param`) sets their
    parameters: an override naming an executable is refused, as a failed run saying why, unless the deployment
    was created with --allow-unsafe-overrides (then the run takes it: here it fails later, at the binary)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    _, env = api
    pool = "plm-unsafe"
    overrides = _tiny_source(tmp_path)
    deploy(DEMO, "0 3 * * 1", name="guarded", work_pool=pool, overrides=overrides)
    deploy(DEMO, "0 3 * * 1", name="open", work_pool=pool, overrides=overrides, allow_unsafe_overrides=True)
    evil = [*overrides, f"cluster.binary={tmp_path / 'not-mmseqs'}"]
    runs = {name: run_deployment(f"data_refresh/{name}", timeout=0, as_subflow=False,
                                 parameters={"overrides": evil}) for name in ("guarded", "open")}
    outside = run_deployment("data_refresh/guarded", timeout=0, as_subflow=False,
                             parameters={"overrides": [*overrides, "lineage.path=/tmp/elsewhere.duckdb"]})
    log = tmp_path / "worker.log"
    worker = _start_worker([PLM, "worker", "--pool", pool], env, tmp_path, log)
    try:
        states = {name: _wait_final(run.id, worker, time.monotonic() + RUN_S)
                  for name, run in [*runs.items(), ("outside", outside)]}
    finally:
        _stop(worker)
    with get_client(sync_client=True) as client:
        msgs = {name: client.read_flow_run(run.id).state.message or ""
                for name, run in [*runs.items(), ("outside", outside)]}
    assert all(s is not None and s.is_failed() for s in states.values()), f"{states}:\n{_tail(log)}"
    assert "cluster.binary: names an executable" in msgs["guarded"] and "--allow-unsafe-overrides" in msgs["guarded"]
    assert "lineage.path: path outside the workdir" in msgs["outside"]
    assert "names an executable" not in msgs["open"] and "not-mmseqs" in msgs["open"]   # taken, then not found


def test_pausing_and_resuming_a_schedule_with_the_documented_commands(api, tmp_path):
    """docs/operations.md: `prefect deployment schedule pause|resume NAME ID` removes and restores the upcoming runs;
    `plm doctor` reports the server, the scheduler, the deployment and its pool."""
    from prefect.client.orchestration import get_client

    _, env = api
    pool = "plm-pause"
    dep_id = deploy(DEMO, "0 3 * * *", name="pause-me", work_pool=pool, overrides=_tiny_source(tmp_path))
    assert upcoming_runs(dep_id)
    with get_client(sync_client=True) as client:
        schedule_id = str(client.read_deployment(dep_id).schedules[0].id)
    listed = subprocess.run([sys.executable, "-m", "prefect", "deployment", "schedule", "ls",
                             "data_refresh/pause-me"], env=env, capture_output=True, text=True, timeout=60)
    assert schedule_id in listed.stdout, listed.stdout + listed.stderr
    for verb, expect_runs in (("pause", False), ("resume", True)):
        done = subprocess.run([sys.executable, "-m", "prefect", "deployment", "schedule", verb,
                               "data_refresh/pause-me", schedule_id], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + 30
        while bool(upcoming_runs(dep_id)) != expect_runs:
            assert time.monotonic() < deadline, f"after {verb}: upcoming runs {upcoming_runs(dep_id)}"
            time.sleep(1)
    doctor = subprocess.run([PLM, "doctor", "--pool", pool], env=env, capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr                # warnings only: no worker online
    rows = dict(re.findall(r"^(\S+(?: plm-\S+)?)\s+(ok|warn|fail)\s", doctor.stdout, re.M))
    assert rows["server"] == rows["scheduler"] == rows["sqlalchemy"] == rows["data_refresh/pause-me"] == "ok"
    assert rows["pool plm-pause"] == "warn" and "plm worker --pool plm-pause" in doctor.stdout


def test_deploy_fails_when_the_server_does_not_schedule(tmp_path):
    """A server whose scheduler creates no runs (here: switched off; with SQLAlchemy 2.1 it fails on every loop)
    makes `plm deploy` fail with the cause, and `plm doctor` exit 1."""
    with prefect_server(tmp_path, PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
                        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1") as (_, env):
        sets = [arg for o in _tiny_source(tmp_path) for arg in ("--set", o)]
        out = subprocess.run([PLM, "deploy", DEMO, "--cron", "0 3 * * *", "--name", "never", "--check-s", "6",
                              "--pool", "plm-never", *sets], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=180)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "created no scheduled run" in out.stderr and "scheduler service is disabled" in out.stderr
        doctor = subprocess.run([PLM, "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert re.search(r"^scheduler\s+fail", doctor.stdout, re.M) and re.search(r"^data_refresh/never\s+fail",
                                                                             doctor.stdout, re.M)


def test_workers_stop_cleanly_on_the_service_managers_signal(api, tmp_path):
    """The systemd unit of docs/operations.md stops the worker with SIGINT (KillSignal=SIGINT); `plm worker` also
    stops on SIGTERM when it was started with SIGINT ignored, as `cmd &` in a script leaves it."""
    _, env = api
    plain_log, plm_log = tmp_path / "plain.log", tmp_path / "plm.log"
    plain = _start_worker([sys.executable, "-m", "prefect", "worker", "start", "--pool", "plm-signals", "--limit",
                           "1"], env, tmp_path, plain_log)
    wrapped = _start_worker([PLM, "worker", "--pool", "plm-signals"], env, tmp_path, plm_log, sigint_ignored=True)
    try:
        for proc, log, sig in ((plain, plain_log, signal.SIGINT), (wrapped, plm_log, signal.SIGTERM)):
            _wait_log(log, "started!", proc)
            proc.send_signal(sig)
        for proc, log in ((plain, plain_log), (wrapped, plm_log)):
            assert proc.wait(timeout=30) == 0, _tail(log)
            assert "stopped!" in _tail(log)
    finally:
        _stop(plain)
        _stop(wrapped)


def _wait_final(flow_run_id, worker: subprocess.Popen, deadline: float):
    """The flow run's state once final (or the last one seen when the deadline passes or the worker dies)."""
    from prefect.client.orchestration import get_client

    state = None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and worker.poll() is None:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                break
            time.sleep(1)
    return state


def test_prefect_yaml_deploys_with_the_cli(api):
    from prefect.client.orchestration import get_client

    _, env = api
    ensure_work_pool(DEFAULT_POOL)
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    with get_client(sync_client=True) as client:
        for d in spec["deployments"]:
            flow_name = d["entrypoint"].split(":")[1]
            dep = client.read_deployment_by_name(f"{flow_name}/{d['name']}")
            assert [s.schedule.cron for s in dep.schedules] == [s["cron"] for s in d["schedules"]]
            assert [s.active for s in dep.schedules] == [s["active"] for s in d["schedules"]]
            assert dep.parameters == d["parameters"]
            assert dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)
