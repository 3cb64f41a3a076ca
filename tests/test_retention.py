"""Retention: three refreshes of three source releases with keep_releases=2 delete the oldest release's own
stage directories (real Prefect runs, real mmseqs, real DuckDB lineage), and nothing another run uses."""
import json
from pathlib import Path

import pytest

from flows.data_refresh import data_refresh
from pipeline_lib.lineage import LineageStore, RunRecord, StepRecord, utcnow
from pipeline_lib.retention import apply_retention, plan_retention
from pipeline_lib.retention import main as retention_main
from tests.conftest import ROOT
from tests.helpers import family_fasta

DEMO = str(ROOT / "configs" / "demo.yaml")
ONE_LEVEL = "cluster.levels=[{name: c50, min_seq_id: 0.5}]"  # one linclust level: seconds per refresh


def _stage_dirs(store: LineageStore, work: Path, run_id: str) -> set[Path]:
    rows = store.query("SELECT stage, cache_key FROM steps WHERE run_id=? AND stage NOT IN ('retention', 'report')",
                       [run_id])
    return {work / "stages" / r["stage"] / r["cache_key"][:16] for r in rows}


@pytest.fixture(scope="module")
def three_releases(prefect_harness, tmp_path_factory):
    """The same source path holding a new release each time (like a re-downloaded file)."""
    tmp = tmp_path_factory.mktemp("retention")
    fa, work = tmp / "upstream.fa", tmp / "work"
    results = []
    for seed in range(3):
        family_fasta(fa, seed=seed, families=2, mutants=2, unrelated=3, length=60)
        results.append(data_refresh(DEMO, [f"workdir={work}", f"source={{kind: fasta, paths: [{fa}]}}",
                                           "retention.keep_releases=2", ONE_LEVEL]))
    return work, results


def test_oldest_release_unique_dirs_deleted_and_recorded(three_releases):
    work, (r1, r2, r3) = three_releases
    store = LineageStore(work / "lineage.duckdb")
    d1, d2, d3 = (_stage_dirs(store, work, r.run_id) for r in (r1, r2, r3))
    only_first = d1 - d2 - d3
    assert {p.parent.name for p in only_first} == \
        {"ingest", "cluster_level", "cluster", "split", "audit_target", "audit_chunk", "audit", "shards_partition",
         "shards"}
    assert not any(p.exists() for p in only_first)
    assert all(p.is_dir() and (p / "_SUCCESS.json").is_file() for p in d2 | d3)
    shared = d1 & (d2 | d3)  # the source directory: same parameters for every release
    assert shared and all(p.is_dir() for p in shared)

    rows = store.query("SELECT run_id, stats FROM steps WHERE stage='retention' ORDER BY started_at")
    assert [r["run_id"] for r in rows] == [r1.run_id, r2.run_id, r3.run_id]
    first, second, third = (json.loads(r["stats"]) for r in rows)
    assert first["deleted"] == [] and second["deleted"] == []
    assert {Path(d["path"]) for d in third["deleted"]} == only_first
    assert len(third["kept_releases"]) == 2 and len(third["dropped_releases"]) == 1
    assert third["freed_bytes"] == sum(d["bytes"] for d in third["deleted"]) > 0
    # the deleted outputs stay in lineage, as inputs of the retention step
    shard = next(a for a in r1.stages["shards"].outputs.values() if a.kind == "shard")
    used_by = store.show(shard.path)["artifact"]["used_by"]
    assert any(u["stage"] == "retention" and u["run_id"] == r3.run_id for u in used_by)


def test_dry_run_lists_without_deleting_and_running_runs_are_protected(three_releases, capsys):
    work, (r1, r2, r3) = three_releases
    store = LineageStore(work / "lineage.duckdb")
    d2 = _stage_dirs(store, work, r2.run_id) - _stage_dirs(store, work, r3.run_id)
    plan = plan_retention(store, work, config_name="demo", keep=1)
    assert {Path(d.path) for d in plan.doomed} == d2 and plan.old_runs == {r1.run_id, r2.run_id}
    assert all(p.exists() for p in d2)  # planning deletes nothing

    retention_main([str(work / "lineage.duckdb"), "--workdir", str(work), "--name", "demo", "--keep", "1"])
    out = capsys.readouterr().out
    assert all(str(p) in out for p in d2) and all(p.exists() for p in d2)

    # a run still going (this process) that uses release 2's cluster directory: that directory is kept
    cluster = r2.stages["cluster"]
    store.start_run(RunRecord("still-running", "data_refresh", "other", {}, "", "test", str(work)))
    store.record_step(StepRecord("still-running", "cluster", {}, cluster.cache_key, "cached", utcnow(), utcnow()))
    plan = plan_retention(store, work, config_name="demo", keep=1)
    assert Path(cluster.directory) not in {Path(d.path) for d in plan.doomed}
    stats = apply_retention(plan, store)
    assert Path(cluster.directory).is_dir() and Path(r2.stages["ingest"].directory).exists() is False
    assert {Path(d["path"]) for d in stats["deleted"]} == d2 - {Path(cluster.directory)}
    assert all(p.is_dir() for p in _stage_dirs(store, work, r3.run_id))


def test_end_to_end_applies_retention_too(prefect_harness, tmp_path):
    """`plm run` (end_to_end) keeps the newest keep_releases releases like data_refresh does: after a second
    release with keep_releases=1, the first release's own stage directories are gone and the run says so."""
    from flows.end_to_end import end_to_end

    fa, work = tmp_path / "upstream.fa", tmp_path / "work"
    results = []
    for seed in (10, 11):
        family_fasta(fa, seed=seed, families=2, mutants=2, unrelated=3, length=60)
        results.append(end_to_end(DEMO, [
            f"workdir={work}", f"source={{kind: fasta, paths: [{fa}]}}", "retention.keep_releases=1", ONE_LEVEL,
            "structures.enabled=false", "msa.enabled=false", "train.enabled=false", "evaluate.enabled=false"]))
    r1, r2 = results
    store = LineageStore(work / "lineage.duckdb")
    only_first = _stage_dirs(store, work, r1.run_id) - _stage_dirs(store, work, r2.run_id)
    assert {p.parent.name for p in only_first} == \
        {"ingest", "cluster_level", "cluster", "split", "audit_target", "audit_chunk", "audit", "shards_partition",
         "shards"}
    assert not any(p.exists() for p in only_first)
    assert all(p.is_dir() for p in _stage_dirs(store, work, r2.run_id))
    stats = json.loads(store.query("SELECT stats FROM steps WHERE run_id=? AND stage='retention'",
                                   [r2.run_id])[0]["stats"])
    assert {Path(d["path"]) for d in stats["deleted"]} == only_first
    assert len(stats["dropped_releases"]) == 1


def test_deleted_artifacts_match_paths_literally(tmp_path):
    """The lineage records of what retention deleted are the artifacts at or under the deleted paths; '_' and
    '%' in a path are characters, not LIKE wildcards."""
    from datetime import UTC, datetime

    from pipeline_lib.lineage import ArtifactRecord, LineageStore, StepRecord
    from pipeline_lib.retention import _deleted_artifacts

    store = LineageStore(tmp_path / "lineage.duckdb")
    t = datetime.now(UTC)
    arts = [ArtifactRecord(str(tmp_path / d / "x.parquet"), "x", h) for d, h in
            [("stages/a_b", "1"), ("stages/aXb", "2"), ("stages/a%b", "3"), ("stages/aYYb", "4")]]
    store.record_step(StepRecord("r", "s", {}, "k", "completed", t, t, outputs=arts))
    got = _deleted_artifacts(store, [str(tmp_path / "stages/a_b"), str(tmp_path / "stages/a%b")])
    assert sorted(a.content_hash for a in got) == ["1", "3"]
    assert {a.path for a in got} == {str(tmp_path / "stages/a_b/x.parquet"), str(tmp_path / "stages/a%b/x.parquet")}
