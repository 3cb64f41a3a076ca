"""Deployments against a real Prefect server: register, trigger, and watch a process worker run the flow.

    .venv/bin/python -m pytest -q tests/test_deploy.py

Starts `prefect server start` on a free 127.0.0.1 port with its own PREFECT_HOME (analytics off), registers
data_refresh through flows.deploy.deploy (and prefect.yaml through `prefect deploy --all`), triggers a run
with run_deployment and starts `prefect worker start --pool ...` to execute it on a tiny FASTA file.
Every wait is bounded; the module takes about a minute.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.deploy import DEFAULT_POOL, FLOWS, deploy, ensure_work_pool
from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError
from pipeline_lib.lineage import LineageStore
from tests.conftest import ROOT
from tests.helpers import family_fasta

SERVER_START_S = 120
RUN_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server subprocess; yields (api_url, env for Prefect child processes)."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
    log = home / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--no-ui"], env=env, stdout=fh, stderr=subprocess.STDOUT)
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


@pytest.fixture
def api(server):
    """Point this process's Prefect client at the test server (whatever harness is active)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server[0]}):
        yield server


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


def test_deploy_rejects_bad_input_before_touching_the_server():
    with pytest.raises(ConfigError, match="invalid schedule"):
        deploy(str(ROOT / "configs" / "demo.yaml"), "every monday")
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        deploy(str(ROOT / "configs" / "demo.yaml"), "0 3 * * 1", timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="unknown flow"):
        deploy(str(ROOT / "configs" / "demo.yaml"), "0 3 * * 1", flow="train_everything")
    with pytest.raises(ConfigError):
        deploy(str(ROOT / "configs" / "demo.yaml"), "0 3 * * 1", overrides=["cluster.threads=lots"])


def test_deployment_runs_on_a_process_worker(api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    _, env = api
    fasta = tmp_path / "tiny.fa"
    family_fasta(fasta, families=4, mutants=3, unrelated=12)
    overrides = [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{fasta}]}}",
                 "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]"]
    dep_id = deploy(str(ROOT / "configs" / "demo.yaml"), "0 3 * * 1", name="test-refresh", overrides=overrides)
    assert deploy(str(ROOT / "configs" / "demo.yaml"), "0 3 * * 1", name="test-refresh",
                  overrides=overrides) == dep_id                       # re-deploying updates in place
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
        assert dep.work_pool_name == DEFAULT_POOL and dep.pull_steps
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
        assert dep.parameters == {"config_path": "configs/demo.yaml", "overrides": overrides, "if_changed": True}
        assert client.read_work_pool(DEFAULT_POOL).type == "process"

    log = tmp_path / "worker.log"
    worker_env = {**env, "PREFECT_HOME": str(tmp_path / "worker-home"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    first = run_deployment("data_refresh/test-refresh", timeout=0, as_subflow=False)
    with open(log, "w") as fh:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", DEFAULT_POOL,
                                   "--limit", "1"], env=worker_env, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_S
        state = _wait_final(first.id, worker, deadline)
        assert state is not None and state.is_completed(), f"flow run state {state}:\n{_tail(log)}"
        second = run_deployment("data_refresh/test-refresh", timeout=0, as_subflow=False)   # same source again
        state = _wait_final(second.id, worker, deadline)
        assert state is not None and state.is_completed(), f"flow run state {state}:\n{_tail(log)}"
    finally:
        _stop(worker)
    runs = {r["run_id"]: r for r in LineageStore(tmp_path / "work" / "lineage.duckdb").runs()}
    assert runs[str(first.id)]["status"] == "completed"          # lineage runs carry the flow run ids
    assert runs[str(second.id)]["status"] == "no_new_release"     # if_changed: nothing new upstream, stopped early


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
