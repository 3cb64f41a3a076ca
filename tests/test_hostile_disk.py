"""A full disk (a 2 MiB tmpfs mounted by the test; skipped where mount fails): ingest, shard writing and
lineage fail with the disk's own error, leave nothing under a final name, and recover once space is free.

    .venv/bin/pytest -q tests/test_hostile_disk.py
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib.config import IngestConfig, load_config
from pipeline_lib.errors import DataValidationError
from pipeline_lib.lineage import LineageStore
from pipeline_lib.sequences.ingest import ingest_fasta
from tests.hostile_helpers import failed_steps, final_stage_dirs, ingest_on, random_fasta, stage_context, stage_output


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (needs root, or a mount namespace that allows it)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here: {(r.stderr or r.stdout).strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def assert_no_final_files(root: Path) -> None:
    """Nothing under a final name but complete files: temporaries only carry '.tmp-' in their name."""
    for p in root.rglob("*"):
        if p.is_file() and ".tmp-" not in str(p) and p.suffix == ".parquet":
            _ = pq.ParquetFile(p).metadata  # raises on a truncated Parquet file


@pytest.mark.timeout(90)  # a writer thread that waits for ever must fail the test, not hang it
def test_disk_full_during_ingest(tiny_disk, tmp_path):
    src = random_fasta(tmp_path / "big.fa", 12_000, 400)   # ~5 MB in, ~2.5 MB of Parquet out
    workdir, lineage = tiny_disk / "work", tmp_path / "lineage.duckdb"
    with pytest.raises(OSError, match="No space left on device"):
        ingest_on(workdir, src, lineage)
    assert final_stage_dirs(workdir, "ingest") == []
    assert [p for p in (workdir / "stages" / "ingest").iterdir() if p.is_dir()] == []  # temporary removed
    assert_no_final_files(workdir)
    step = failed_steps(lineage, "ingest")
    assert step[0]["status"] == "failed" and "No space left on device" in step[0]["error"]


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with a ballast file (another process's data, say); returns it."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 10, 1):  # unbuffered: nothing left to flush (and fail) at close
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return ballast


@pytest.mark.parametrize("lineage_first", [True, False], ids=["lineage made at run start", "lineage made at failure"])
def test_disk_full_with_lineage_on_the_same_disk(tiny_disk, tmp_path, lineage_first):
    """The default layout, on a disk something else filled: recording the failure fails too. Today the
    'lineage database is busy' error replaces the stage's own, and a lineage.duckdb created on the full
    disk stays broken for every later run, even once space is free again."""
    src = random_fasta(tmp_path / "small.fa", 50, 100)
    workdir = tiny_disk / "work"
    if lineage_first:  # as pipeline_run does before any stage
        LineageStore(workdir / "lineage.duckdb")
    ballast = fill(tiny_disk)
    with pytest.raises(OSError, match="No space left on device") as err:
        ingest_on(workdir, src)
    assert "lineage" not in str(err.value)
    ballast.unlink()
    assert LineageStore(workdir / "lineage.duckdb").runs() == []  # usable, not "not a valid DuckDB file"
    assert final_stage_dirs(workdir, "ingest") == []


@pytest.mark.timeout(90)  # a writer thread that waits for ever must fail the test, not hang it
def test_disk_full_during_shards(tiny_disk, tmp_path):
    from tasks import data

    src = random_fasta(tmp_path / "big.fa", 12_000, 400)
    ingest_fasta([src], tmp_path / "ingest", IngestConfig())
    seqs = tmp_path / "ingest" / "sequences.parquet"
    ids = pq.read_table(seqs, columns=["id"]).column("id")
    pq.write_table(pa.table({"id": ids, "cluster_c90": ids}), tmp_path / "clusters.parquet")
    pq.write_table(pa.table({"id": ids, "split": pa.repeat(pa.scalar("train"), len(ids))}), tmp_path / "splits.parquet")
    workdir = tiny_disk / "work"
    cfg = load_config(None, [f"workdir={workdir}", "cluster.levels=[{name: c90, min_seq_id: 0.9}]",
                             "shards.rows_per_shard=2000"])
    ctx = stage_context(workdir, lineage=tmp_path / "lineage.duckdb")
    with pytest.raises(Exception) as err:  # the shard files are written by the partition tasks
        data.shards_partition.fn(ctx, cfg, stage_output("ingest", {"sequences.parquet": seqs}),
                                 stage_output("cluster", {"clusters.parquet": tmp_path / "clusters.parquet"}),
                                 stage_output("split", {"splits.parquet": tmp_path / "splits.parquet"}),
                                 0, (0, len(ids)))
    assert "No space left on device" in str(err.value)
    assert final_stage_dirs(workdir, "shards_partition") == []
    assert [p for p in workdir.rglob("*.parquet") if ".tmp-" not in str(p)] == []
    assert_no_final_files(workdir)
    step = failed_steps(tmp_path / "lineage.duckdb", "shards_partition")
    assert step[0]["status"] == "failed" and "No space left on device" in step[0]["error"]


@pytest.mark.timeout(90)  # a writer thread that waits for ever must fail the test, not hang it
def test_failed_shard_writing_leaves_no_threads(tmp_path):
    """A shard writer that fails must end its threads (an earlier version left them waiting, files open)."""
    import threading
    import time

    from pipeline_lib.config import ShardsConfig
    from pipeline_lib.sequences.shards import write_sequence_shards

    n = 20_000
    ids = [f"s{i}" for i in range(n)]
    seqs = ["MKVLA"] * n
    seqs[-1] = None  # the tokenizer refuses it, after the first shards are under way
    pq.write_table(pa.table({"id": ids, "seq_hash": [f"{i:032x}" for i in range(n)], "length": [5] * n,
                             "sequence": seqs}), tmp_path / "sequences.parquet")
    pq.write_table(pa.table({"id": ids, "cluster_c90": ids}), tmp_path / "clusters.parquet")
    pq.write_table(pa.table({"id": ids, "split": ["train"] * n}), tmp_path / "splits.parquet")
    before = set(threading.enumerate())
    with pytest.raises(DataValidationError, match="null"):
        write_sequence_shards(tmp_path / "sequences.parquet", tmp_path / "clusters.parquet",
                              tmp_path / "splits.parquet", tmp_path / "out", levels=["c90"],
                              cfg=ShardsConfig(rows_per_shard=1000, row_group_rows=100))
    deadline = time.monotonic() + 2
    while (left := [t.name for t in set(threading.enumerate()) - before if t.is_alive()]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
