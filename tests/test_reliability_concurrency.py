"""Two ``plm data`` runs started at once on one workdir and one lineage database.

    .venv/bin/pytest -q tests/test_reliability_concurrency.py

The runs go through the fault runner of ``test_reliability_crash.py`` in ``race`` mode, which makes the
interleaving that breaks today happen every time: the second run enters the ingest stage while the first
is inside it. Without a lock, the second run's clean-up of temporaries deletes the first run's half-built
stage directory. With ``tasks/common.py`` holding a :class:`pipeline_lib.locks.FileLock` per stage key
(the patch in ``docs/reliability.md``), the second run waits, says for whom, then finds the stage cached.
"""
from __future__ import annotations

import pytest

from pipeline_lib.lineage import LineageStore
from tests.test_reliability_crash import (
    artifact_hashes, assert_nothing_partial, finish, lineage_runs, plm_env, prefect_api, reference_hashes,
    shared_inputs, start_plm, tail,
)

__all__ = ["prefect_api"]  # the fixture, re-exported so pytest finds it here


def test_two_runs_at_once_both_complete_with_the_same_artifacts(prefect_api, tmp_path_factory, tmp_path):
    cfg, runner = shared_inputs(tmp_path_factory)
    env = plm_env(prefect_api)
    expected = reference_hashes(tmp_path_factory, env)
    workdir, race = tmp_path / "shared-work", tmp_path / "race"
    race.mkdir()
    logs = [tmp_path / "run-a.log", tmp_path / "run-b.log"]
    procs = [start_plm(cfg, workdir, env, log, fault=f"race:{race}", runner=runner) for log in logs]
    codes = [finish(p, log) for p, log in zip(procs, logs)]
    assert codes == [0, 0], "\n\n".join(f"exit {c}:\n{tail(log)}" for c, log in zip(codes, logs))

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
