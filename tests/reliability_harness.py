"""The crash-and-resume harness shared by test_reliability_crash.py, test_reliability_crash_stages.py and
test_reliability_concurrency.py: real ``plm`` subprocesses against the session's Prefect test API, a fault
runner that pauses one at a chosen point so that the test can SIGKILL it, and the checks on what a killed or
resumed run leaves in its workdir.

``FAULT_RUNNER`` (written to a temporary file) runs the real CLI with one library function wrapped so that
on its n-th call it writes a pause file and sleeps; the test sees the file (:func:`kill_when_paused`) and
SIGKILLs the whole process group. In ``race`` mode it makes two runs interleave inside the ingest stage.
A module that runs ``plm`` imports the ``prefect_api`` fixture from here (and re-exports it in ``__all__``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_lib.io import sha256_file, stable_hash
from pipeline_lib.lineage import LineageStore
from tests.conftest import ROOT
from tests.helpers import family_fasta

PLM = Path(sys.executable).with_name("plm")
MARKER = "_SUCCESS.json"
STAGES = ("ingest", "cluster", "split", "shards")
RUN_TIMEOUT_S = 120

FAULT_RUNNER = r'''
"""``plm`` with one function wrapped for fault injection (tests only; see tests/reliability_harness.py).

PLM_FAULT=pause:STAGE:MODULE:QUALNAME@N  on the N-th call made while stage STAGE runs (STAGE '*': any
                                         stage), write $PLM_FAULT_FILE (our pid) and sleep until killed
PLM_FAULT=race:DIR                       two runs: the second enters the ingest stage while the first
                                         is inside it (computing)
"""
import importlib, os, sys, time
from pathlib import Path


def wrap(module, qualname, before):
    owner = importlib.import_module(module)
    *parents, name = qualname.split(".")
    for p in parents:
        owner = getattr(owner, p)
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def wait_for(path, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


current = {"stage": None}


def track(ctx, stage, *_a, **_k):
    current["stage"] = stage


def install(spec):
    kind, _, arg = spec.partition(":")
    if kind == "pause":
        stage, _, target = arg.partition(":")
        target, _, nth = target.partition("@")
        module, _, qualname = target.partition(":")
        calls = [0]

        def pause(*_a, **_k):
            if stage != "*" and current["stage"] != stage:
                return
            calls[0] += 1
            if calls[0] == int(nth or 1):
                Path(os.environ["PLM_FAULT_FILE"]).write_text(str(os.getpid()))
                time.sleep(600)

        wrap(module, qualname, pause)
    elif kind == "race":
        d = Path(arg)
        role = {}

        def enter_stage(ctx, stage, *_a, **_k):
            if stage != "ingest":
                return
            try:
                os.close(os.open(d / "first", os.O_CREAT | os.O_EXCL))
                role["first"] = True
            except FileExistsError:
                wait_for(d / "first-computing")
                (d / "second-entering").write_text(str(os.getpid()))

        def computing(*_a, **_k):
            if role.get("first") and current["stage"] == "ingest" and not (d / "first-computing").exists():
                (d / "first-computing").write_text(str(os.getpid()))
                wait_for(d / "second-entering")
                time.sleep(1.0)  # the second run is now inside run_stage("ingest")

        wrap("tasks.data", "run_stage", enter_stage)
        wrap("pyarrow.parquet", "ParquetWriter.write_table", computing)
    else:
        raise SystemExit(f"unknown PLM_FAULT {spec!r}")


for task_module in ("tasks.data", "tasks.structures", "tasks.msa", "tasks.train"):
    wrap(task_module, "run_stage", track)
install(os.environ["PLM_FAULT"])
from flows.cli import main  # noqa: E402
sys.exit(main(sys.argv[1:]))
'''


# --- helpers shared with test_reliability_concurrency.py and test_reliability_crash_stages.py ------

@pytest.fixture(scope="module")
def prefect_api(prefect_harness) -> str:
    """The URL of the session's Prefect test server, handed to every ``plm`` subprocess."""
    import prefect.settings

    return prefect.settings.PREFECT_API_URL.value()


def write_small_config(directory: Path) -> Path:
    """A 40-sequence family FASTA and a config that clusters it at two levels into small shards."""
    directory.mkdir(parents=True, exist_ok=True)
    fasta = directory / "families.fa"
    family_fasta(fasta, seed=7, families=6, mutants=4, unrelated=10)
    cfg = directory / "small.yaml"
    cfg.write_text(f"""name: reliability
source: {{kind: fasta, paths: ["{fasta}"]}}
ingest: {{min_length: 30, batch_rows: 8}}
cluster:
  threads: 1
  levels:
    - {{name: c90, min_seq_id: 0.9}}
    - {{name: c50, min_seq_id: 0.5}}
split: {{valid_fraction: 0.2, test_fraction: 0.2}}
shards: {{rows_per_shard: 5, row_group_rows: 2}}
""")
    return cfg


def plm_env(api_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLM_")}
    env.update(PREFECT_API_URL=api_url, PREFECT_LOGGING_LEVEL="INFO", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONUNBUFFERED="1", **extra)
    return env


def start_plm(cfg: Path, workdir: Path, env: dict[str, str], log: Path, *, fault: str | None = None,
              runner: Path | None = None, cmd: str = "data") -> subprocess.Popen:
    """Start ``plm CMD CFG --set workdir=W`` in its own process group (so a kill takes its children too)."""
    if fault:
        assert runner is not None
        argv, env = [sys.executable, str(runner)], {**env, "PLM_FAULT": fault}
    else:
        argv = [str(PLM)]
    argv += [cmd, str(cfg), "--set", f"workdir={workdir}"]
    with open(log, "w") as fh:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = RUN_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"plm data did not finish in {timeout_s}s:\n{tail(log)}")


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:]


def kill_when_paused(proc: subprocess.Popen, pause_file: Path, log: Path, timeout_s: float = 90) -> None:
    """Wait for the fault hook to reach its point, then SIGKILL the run's process group.

    The hook writes its pid into ``pause_file`` just before it sleeps: an empty file is one being written."""
    deadline = time.monotonic() + timeout_s
    while not (pause_file.exists() and pause_file.read_text().strip()):
        if proc.poll() is not None:
            pytest.fail(f"run ended (exit {proc.returncode}) before the kill point {pause_file.name}:\n{tail(log)}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"kill point {pause_file.name} not reached in {timeout_s}s:\n{tail(log)}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def final_stage_dirs(workdir: Path) -> dict[str, list[Path]]:
    """Stage directories under their final names (not temporaries, not lock files)."""
    out: dict[str, list[Path]] = {}
    for stage_dir in sorted((workdir / "stages").glob("*")):
        out[stage_dir.name] = sorted(p for p in stage_dir.iterdir() if ".tmp-" not in p.name and p.is_dir())
    return out


def assert_nothing_partial(workdir: Path, skip: tuple[str, ...] = ()) -> None:
    """Under a final name there is only a finished stage: marker present, every output as recorded.

    ``skip``: stage folders with other rules (train writes in place, MSA batches have their own marker).
    """
    stages = workdir / "stages"
    if not stages.exists():
        return
    for stage_dir in stages.iterdir():
        if stage_dir.name in skip:
            continue
        for entry in stage_dir.iterdir():
            if ".tmp-" in entry.name or (entry.is_file() and entry.suffix == ".lock"):
                continue
            assert entry.is_dir(), f"unexpected file under a final name: {entry}"
            marker = entry / MARKER
            assert marker.is_file(), f"stage directory without {MARKER}: {entry}"
            for name, art in json.loads(marker.read_text())["outputs"].items():
                p = entry / art["path"]   # outputs inside the directory are named relative to it
                assert p.exists(), f"{entry}: output {name} missing"
                if p.is_file():
                    assert p.stat().st_size == art["bytes"] and sha256_file(p) == art["content_hash"], \
                        f"{entry}: output {name} differs from its marker"


def temporaries(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "stages").glob("*/*") if ".tmp-" in p.name)


def artifact_hashes(workdir: Path, stages: tuple[str, ...] = STAGES) -> dict[str, dict[str, str]]:
    """``{stage/key: {relative file: sha256}}`` of every finished stage in ``stages`` (default: all but source).

    ``_SUCCESS.json`` (finish time, absolute paths) is left out, and the manifest is compared without
    ``provenance.run_id`` and ``provenance.config_hash``: they name the run that wrote it and its config,
    workdir included, so they differ between two workdirs by design.
    """
    out: dict[str, dict[str, str]] = {}
    for stage, dirs in final_stage_dirs(workdir).items():
        if stage not in stages:
            continue
        for d in dirs:
            files = {}
            for f in sorted(p for p in d.rglob("*") if p.is_file() and p.name != MARKER):
                if f.name == "manifest.json":
                    m = json.loads(f.read_text())
                    m.get("provenance", {}).pop("run_id", None)
                    m.get("provenance", {}).pop("config_hash", None)
                    files[str(f.relative_to(d))] = stable_hash(m)
                else:
                    files[str(f.relative_to(d))] = sha256_file(f)
            out[f"{stage}/{d.name}"] = files
    return out


def lineage_runs(workdir: Path) -> dict[int, str]:
    """``{pid: status}`` of the runs in the workdir's lineage database."""
    rows = LineageStore(workdir / "lineage.duckdb").query("SELECT pid, status FROM runs")
    return {r["pid"]: r["status"] for r in rows}


# --- the harness -------------------------------------------------------------------------------------

def shared_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """The config (with its FASTA) and the fault runner, one copy per pytest session.

    Every flow test uses the same FASTA path: ``sequences.parquet`` records it, so artifacts from two
    workdirs only compare equal when they were made from the very same file.
    """
    base = tmp_path_factory.getbasetemp() / "reliability-inputs"
    cfg, runner = base / "small.yaml", base / "plm_with_faults.py"
    if not runner.exists():
        write_small_config(base)
        runner.write_text(FAULT_RUNNER)
    return cfg, runner


def reference_hashes(tmp_path_factory, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Artifact hashes of one uninterrupted run in a fresh workdir (run once per session, then reused)."""
    base = tmp_path_factory.getbasetemp() / "reliability-reference"
    done = base / "hashes.json"
    if not done.exists():
        cfg, _ = shared_inputs(tmp_path_factory)
        base.mkdir(exist_ok=True)
        log = base / "reference.log"
        rc = finish(start_plm(cfg, base / "work", env, log), log)
        assert rc == 0, tail(log)
        hashes = artifact_hashes(base / "work")
        assert {k.split("/")[0] for k in hashes} == set(STAGES) and all(hashes.values())
        done.write_text(json.dumps(hashes))
    return json.loads(done.read_text())
