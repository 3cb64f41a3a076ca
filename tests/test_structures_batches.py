"""The structures stage in batches: any batch size gives the one-batch shards, quarantine and stats; batches
run as cached tasks (a failed one re-runs alone) and give the same artifacts on a 2-worker Dask cluster.

    .venv/bin/pytest -q tests/test_structures_batches.py

Real fixture structures (AlphaFold DB models, PDB entries), a real tar archive, mini3di, real Prefect runs.
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow

from flows.end_to_end import run_structures_stage
from flows.runner import with_runner
from flows.runs import pipeline_run
from pipeline_lib import schemas
from pipeline_lib.config import Config
from pipeline_lib.lineage import LineageStore, artifact_for
from pipeline_lib.structures import batches as batches_lib
from pipeline_lib.structures.batches import merge_batches, plan_batches, read_batch, run_batch, write_batch
from pipeline_lib.structures.config import StructuresConfig
from pipeline_lib.structures.parse import parse_structure
from pipeline_lib.structures.stage import build_structure_shards
from tasks.common import StageOutput
from tests.conftest import fixture_path

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, dict]:
    """Sequences of the fixture chains (one mismatching its model), an AFDB folder with a broken file, the
    PDB folder, and a tar of the AFDB models that the folder listed first must win over."""
    tmp = tmp_path_factory.mktemp("inputs")
    afdb = tmp / "afdb"
    shutil.copytree(fixture_path("structures", "afdb"), afdb)
    (afdb / "broken.pdb").write_text("ATOM  garbage\n")
    with tarfile.open(tmp / "afdb.tar.gz", "w:gz") as tf:
        for f in sorted(afdb.glob("AF-*")):
            tf.add(f, arcname=f"models/{f.name}")
    rows = []
    for f in sorted(afdb.glob("AF-*")) + sorted(Path(fixture_path("structures", "pdb")).glob("*.pdb")):
        for ch in parse_structure(f):
            acc = f.name.split("-")[1] if f.name.startswith("AF-") else ch.name
            rows.append({"id": f"{acc}|{ch.name}", "accession": acc, "sequence": ch.sequence})
    rows[0]["sequence"] = rows[0]["sequence"][:-3] + "WWW"  # quarantined: differs from its model
    seqs = pa.Table.from_pylist([{**{f.name: None for f in schemas.SEQUENCES}, **r, "length": len(r["sequence"]),
                                  "seq_hash": f"{i:04d}"} for i, r in enumerate(rows)], schema=schemas.SEQUENCES)
    pq.write_table(seqs, tmp / "sequences.parquet")
    ids = [r["id"] for r in rows]
    pq.write_table(pa.table({"id": ids, "cluster_c50": ids}), tmp / "clusters.parquet")
    pq.write_table(pa.table({"id": ids, "split": [SPLITS[i % 3] for i in range(len(ids))]}), tmp / "splits.parquet")
    sources = [{"kind": "directory", "path": str(afdb)},
               {"kind": "directory", "path": str(fixture_path("structures", "pdb"))},
               {"kind": "archive", "paths": [str(tmp / "afdb.tar.gz")]}]
    return tmp, {"enabled": True, "backend": "mini3di", "sources": sources}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _build(tmp: Path, out: Path, settings: dict):
    from pipeline_lib.config import ShardsConfig

    return build_structure_shards(tmp / "sequences.parquet", tmp / "clusters.parquet", tmp / "splits.parquet", out,
                                  StructuresConfig(**settings), levels=["c50"],
                                  shards_cfg=ShardsConfig(rows_per_shard=4), download_dir=tmp / "dl")


def test_any_batch_size_gives_the_one_batch_shards_quarantine_and_stats(inputs, tmp_path):
    tmp, settings = inputs
    one = _build(tmp, tmp_path / "one", settings | {"task_batch_size": 1000})
    assert len(plan_batches(StructuresConfig(**settings, task_batch_size=2), accessions=[])) == 3 + 2 + 1
    many = _build(tmp, tmp_path / "many", settings | {"task_batch_size": 2})
    assert _files(tmp_path / "many") == _files(tmp_path / "one")
    assert many.quarantine == one.quarantine and many.stats == one.stats
    assert [q["reason"] for q in one.quarantine] == ["unreadable_structure", "structure_sequence_mismatch"]
    s = one.stats
    assert s["files_in"] == s["files_encoded"] + s["files_quarantined"] + s["files_without_usable_chain"]
    rows = pq.read_table(tmp_path / "one" / "train").to_pylist() + pq.read_table(tmp_path / "one" / "valid").to_pylist()
    assert {r["structure_source"] for r in rows if r["id"].startswith(("A0A", "O49", "Q5T", "Q96"))} == {"directory"}


def test_batch_outputs_read_back_as_they_were_written(inputs, tmp_path):
    tmp, settings = inputs
    cfg = StructuresConfig(**settings, task_batch_size=3)
    results = [run_batch(b, cfg, backend="mini3di", download_dir=tmp) for b in plan_batches(cfg, accessions=[])]
    back = []
    for i, res in enumerate(results):
        (tmp_path / str(i)).mkdir()
        back.append(read_batch(tmp_path / str(i), write_batch(res, tmp_path / str(i))))
    mem, disk = merge_batches(results), merge_batches(back)
    assert disk.records == mem.records and disk.tally == mem.tally
    assert disk.encode == mem.encode and disk.source == mem.source


def _stage_inputs(tmp: Path) -> dict[str, StageOutput]:
    def out(stage: str, name: str) -> StageOutput:
        return StageOutput(stage, stage, str(tmp), False, {name: artifact_for(tmp / name, stage)}, {}, {})

    return {"ingest": out("ingest", "sequences.parquet"), "cluster": out("cluster", "clusters.parquet"),
            "split": out("split", "splits.parquet")}


@flow(name="structures_batches_test")
def _structures_only(cfg: Config, tmp: str):
    with pipeline_run(cfg, "structures") as ctx:
        return run_structures_stage(ctx, cfg, _stage_inputs(Path(tmp)))


def _config(workdir: Path, settings: dict, **runner) -> Config:
    return Config(name="batches", workdir=str(workdir), source={"kind": "embedded"},
                  cluster={"levels": [{"name": "c50", "min_seq_id": 0.5}]}, shards={"rows_per_shard": 4},
                  structures=settings | {"task_batch_size": 2}, runner=runner or {"kind": "threads"})


def _artifacts(out: StageOutput) -> dict[str, str]:
    return {str(Path(a.path).relative_to(out.directory)): a.content_hash for a in out.outputs.values()}


@pytest.fixture(scope="module")
def thread_run(inputs, prefect_harness):
    tmp, settings = inputs
    cfg = _config(tmp / "work-threads", settings)
    return cfg, with_runner(_structures_only, cfg)(cfg, str(tmp))


def test_stage_on_threads_matches_the_library_and_a_failed_batch_reruns_alone(inputs, thread_run, tmp_path,
                                                                              monkeypatch):
    tmp, settings = inputs
    cfg, out = thread_run
    lib = _build(tmp, tmp_path / "lib", settings)
    assert _files(Path(out.directory) / "shards") == _files(tmp_path / "lib") and out.stats == lib.stats
    assert pq.read_table(Path(out.directory) / "quarantine.parquet").to_pylist() == lib.quarantine

    work = tmp_path / "work"
    real, calls, failed = batches_lib.run_batch, [], []

    def fail_third(batch, *a, **k):
        calls.append(batch.index)
        if batch.index == 2 and not failed:
            failed.append(batch.index)
            raise RuntimeError("batch 2 fails once")
        return real(batch, *a, **k)

    monkeypatch.setattr("tasks.structures.run_batch", fail_third)
    with pytest.raises(RuntimeError, match="batch 2 fails once"):
        with_runner(_structures_only, cfg)(cfg.model_copy(update={"workdir": str(work)}), str(tmp))
    calls.clear()
    again = with_runner(_structures_only, cfg)(cfg.model_copy(update={"workdir": str(work)}), str(tmp))
    assert calls == [2] and _artifacts(again) == _artifacts(out)
    store = LineageStore(work / "lineage.duckdb")
    steps = store.query("SELECT stage, status FROM steps WHERE run_id=?", [store.runs()[0]["run_id"]])
    assert sorted((s["stage"], s["status"]) for s in steps) == \
        [("structures", "completed")] + [("structures_batch", "cached")] * 5 + [("structures_batch", "completed")]


def test_dask_cluster_of_two_workers_gives_the_thread_runners_artifacts(inputs, thread_run):
    pytest.importorskip("prefect_dask")
    tmp, settings = inputs
    cfg, threads = thread_run
    dask_cfg = _config(tmp / "work-dask", settings, kind="dask", dask={"n_workers": 2, "threads_per_worker": 1})
    out = with_runner(_structures_only, dask_cfg)(dask_cfg, str(tmp))
    assert not out.cached and _artifacts(out) == _artifacts(threads) and out.stats == threads.stats


def test_an_archive_member_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    """A 64 MiB member of zeros in a small .tar.gz, with max_file_bytes 8 MiB: refused from its tar header, so
    the batch's Python heap peak stays far below the member (read whole first, it cost the member's size and
    more: ~550 MB for a 300 MB member). The real model beside it is encoded."""
    import io
    import tracemalloc

    model = fixture_path("structures", "afdb", "AF-Q96HM7-F1-model_v4.pdb")
    tar = tmp_path / "models.tar.gz"
    with tarfile.open(tar, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("models/zeros.pdb")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
        tf.add(model, arcname="models/AF-Q96HM7-F1-model_v4.pdb")
    assert tar.stat().st_size < 2 << 20
    cfg = StructuresConfig(sources=[{"kind": "archive", "paths": [str(tar)]}], max_file_bytes=8 << 20)
    (batch,) = plan_batches(cfg, accessions=[])
    tracemalloc.start()
    try:
        res = run_batch(batch, cfg, backend="mini3di", download_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert res.source.refused == {"too_large": 1}
    assert len(res.records) == 1 and res.tally.encoded == {"models/AF-Q96HM7-F1-model_v4.pdb"}


def test_a_source_with_no_usable_structure_warns_and_the_stage_fails_clearly(inputs, tmp_path, caplog):
    """A folder holding only formats this reader does not take (MMTF, BinaryCIF, PDBML: named), a README and a
    symbolic link back to itself (not followed, counted): the source warns with what it skipped, and a stage
    whose sources give no structure at all fails saying so, instead of writing all-'#' SaProt shards."""
    import logging

    from pipeline_lib.errors import DataValidationError

    tmp, _ = inputs
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("1abc.mmtf", "2xyz.bcif", "3def.xml", "README"):
        (folder / name).write_bytes(b"not read")
    (folder / "loop").symlink_to(folder)
    settings = {"enabled": True, "backend": "mini3di", "sources": [{"kind": "directory", "path": str(folder)}]}
    with caplog.at_level(logging.WARNING), pytest.raises(DataValidationError) as err:
        _build(tmp, tmp_path / "out", settings)
    warned = [r.getMessage() for r in caplog.records if "structure source" in r.getMessage()]
    assert warned and "0 structure files" in warned[0]
    for part in ("1 .mmtf (MMTF, not supported)", "1 .bcif (BinaryCIF, not supported)",
                 "1 .xml (PDBML/XML, not supported)", "1 symlinked_directory"):
        assert part in warned[0]
    assert "the structure sources gave no structure (directory " in str(err.value)
