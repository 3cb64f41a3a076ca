"""Crash and resume: SIGKILL ``plm data`` at chosen points, re-run it, and check that nothing partial is
ever under a final name, that the resumed artifacts equal an uninterrupted run's, and that lineage
marks each killed run 'crashed'.

    .venv/bin/pytest -q tests/test_reliability_crash.py

Every run is a real ``plm data`` subprocess talking to the session's Prefect test API (so no run pays
for an ephemeral server). Kill points are deterministic: ``FAULT_RUNNER`` (tests/reliability_harness.py,
written to a temporary file) runs the real CLI with one library function wrapped so that on its n-th call
it writes a pause file and sleeps; the test sees the file and SIGKILLs the whole process group. The mmseqs
kills go through a wrapper script named by ``$PLM_MMSEQS`` that pauses inside one clustering level. Every
stage is killed at two points or more (``KILL_POINTS``), all in one sequence of runs on one workdir, each
run getting further than the last, so an extra point costs one run start, not a whole pipeline run. The
harness is in tests/reliability_harness.py, shared with ``test_reliability_concurrency.py`` and
``test_reliability_crash_stages.py``.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline_lib.lineage import LineageStore
from pipeline_lib.tools.mmseqs import find_mmseqs
from tests.reliability_harness import (
    artifact_hashes,
    assert_nothing_partial,
    final_stage_dirs,
    finish,
    kill_when_paused,
    lineage_runs,
    plm_env,
    prefect_api,
    reference_hashes,
    shared_inputs,
    start_plm,
    tail,
    temporaries,
)

__all__ = ["prefect_api"]  # the fixture, re-exported so pytest finds it here

MMSEQS_PAUSE = """#!/bin/sh
# mmseqs, except that clustering level {level} pauses so that the test can kill the run
case "$*" in
  *{level}_tmp*) echo $$ > "{pause}"; sleep 600 ;;
esac
exec "{real}" "$@"
"""


# (name, how to stop the run there, what must be finished by then, the stage whose temporary directory the
# kill leaves: the only temporary in the workdir, since each earlier one was removed by the run that redid
# its stage; None: killed after the stage's rename, so no temporary at all)
DATA = ("source", "ingest", "cluster_level", "cluster", "split", "audit_target", "audit_chunk", "audit", "shards")
KILL_POINTS = [
    ("ingest: mid-parse, between two Parquet row groups", "pause:ingest:pyarrow.parquet:ParquetWriter.write_table@2",
     set(DATA[:1]), "ingest"),
    ("ingest: parsed, DuckDB dedupe starting", "pause:ingest:pipeline_lib.sequences.ingest_dedupe:_find_duplicates@1",
     set(DATA[:1]), "ingest"),
    ("cluster: mmseqs running the first level (c90)", "mmseqs:c90", set(DATA[:2]), "cluster_level"),
    ("cluster: c90 cached as its own step, mmseqs running c50", "mmseqs:c50", set(DATA[:3]), "cluster_level"),
    ("split: splits.parquet written, quarantine.parquet not yet", "pause:split:pyarrow.parquet:write_table@1",
     set(DATA[:4]), "split"),
    ("split: renamed, lineage step not yet recorded", "pause:split:pipeline_lib.lineage:LineageStore.record_step@1",
     set(DATA[:5]), None),
    ("shards: between two shard writes (of a partition)",
     "pause:shards_partition:pyarrow.parquet:ParquetWriter.write_table@3", set(DATA[:8]), "shards_partition"),
    ("shards: renamed, lineage step not yet recorded", "pause:shards:pipeline_lib.lineage:LineageStore.record_step@1",
     set(DATA) | {"shards_partition"}, None),
]


def start_killable(cfg: Path, workdir: Path, env: dict[str, str], log: Path, fault: str, pause: Path,
                   runner: Path) -> subprocess.Popen:
    """Start ``plm data`` set to pause at ``fault``: a fault runner spec, or ``mmseqs:LEVEL``."""
    if fault.startswith("mmseqs:"):
        wrapper = pause.with_name(pause.name + "-mmseqs.sh")
        wrapper.write_text(MMSEQS_PAUSE.format(level=fault.split(":")[1], pause=pause, real=find_mmseqs()))
        wrapper.chmod(0o755)
        return start_plm(cfg, workdir, {**env, "PLM_MMSEQS": str(wrapper)}, log)
    return start_plm(cfg, workdir, {**env, "PLM_FAULT_FILE": str(pause)}, log, fault=fault, runner=runner)


@pytest.fixture(scope="module")
def crashed_then_resumed(prefect_api, tmp_path_factory):
    """Kill a run at each point in turn (each re-run resumes the last one's workdir), then finish."""
    cfg, runner = shared_inputs(tmp_path_factory)
    env = plm_env(prefect_api)
    base = tmp_path_factory.mktemp("crash")
    workdir = base / "resumed"
    seen = []
    for i, (name, fault, finished, _) in enumerate(KILL_POINTS):
        pause, log = base / f"pause-{i}", base / f"killed-{i}.log"
        proc = start_killable(cfg, workdir, env, log, fault, pause, runner)
        kill_when_paused(proc, pause, log)
        seen.append({"name": name, "pid": proc.pid, "finished": finished,
                     "final": {s: len(d) for s, d in final_stage_dirs(workdir).items()},
                     "temporaries": temporaries(workdir), "runs": lineage_runs(workdir)})
        assert_nothing_partial(workdir)  # checked right after every kill, before anything cleans up
    log = base / "resume.log"
    rc = finish(start_plm(cfg, workdir, env, log), log)
    assert rc == 0, tail(log)
    return workdir, seen, log


def test_every_data_stage_is_killed_at_two_points_at_least():
    killed_in = [name.split(":")[0] for name, *_ in KILL_POINTS]
    assert all(killed_in.count(stage) >= 2 for stage in ("ingest", "cluster", "split", "shards")), killed_in
    assert len({fault for _, fault, *_ in KILL_POINTS}) == len(KILL_POINTS)


def test_each_kill_left_only_finished_stages_under_final_names(crashed_then_resumed):
    _, seen, _ = crashed_then_resumed
    for point, (*_, inside) in zip(seen, KILL_POINTS, strict=True):
        done = {stage for stage, n in point["final"].items() if n}
        assert done == point["finished"], f"{point['name']}: finished stages {done}"
        assert point["runs"][point["pid"]] == "running", point  # nobody has noticed the crash yet
        # a kill inside a stage left that stage's work under a temporary name, and only there; the run
        # that redid a stage removed what the kill before had left
        assert [p.parent.name for p in point["temporaries"]] == ([inside] if inside else []), point


def test_resume_reproduces_an_uninterrupted_run(crashed_then_resumed, prefect_api, tmp_path_factory):
    workdir, _, log = crashed_then_resumed
    expected = reference_hashes(tmp_path_factory, plm_env(prefect_api))
    assert_nothing_partial(workdir)
    assert artifact_hashes(workdir) == expected
    assert temporaries(workdir) == [], "the resumed run should have removed the killed runs' temporaries"
    assert "shards       cached" in log.read_text()  # finished before the last kill: not redone


def test_lineage_marks_every_killed_run_crashed(crashed_then_resumed):
    workdir, seen, _ = crashed_then_resumed
    runs = lineage_runs(workdir)
    assert {runs[p["pid"]] for p in seen} == {"crashed"}
    assert sorted(runs.values()) == ["completed"] + ["crashed"] * len(seen)
    store = LineageStore(workdir / "lineage.duckdb")
    last = store.query("SELECT run_id FROM runs WHERE status='completed'")[0]["run_id"]
    steps = store.query("SELECT stage, status FROM steps WHERE run_id=? ORDER BY started_at", [last])
    assert [(s["stage"], s["status"]) for s in steps] == [
        ("source", "completed"), ("ingest", "cached"), ("cluster_level", "cached"), ("cluster_level", "cached"),
        ("cluster", "cached"), ("split", "cached"), ("audit_target", "cached"), ("audit_chunk", "cached"),
        ("audit", "cached"),
        ("shards_partition", "cached"), ("shards", "cached")]
    # the shard files trace back to the source FASTA even though the run that wrote them was killed
    shard = next((workdir / "stages" / "shards").glob("*/train/part-00000.parquet"))
    assert {"shards", "split", "cluster", "ingest", "source"} <= {s["stage"] for s in store.trace(str(shard))}
