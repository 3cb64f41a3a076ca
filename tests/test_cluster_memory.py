"""Clustering at scale on one node and across nodes: ``cluster.memory_limit`` reaches mmseqs as
``--split-memory-limit`` (so k-mer matching works in pieces and gives the same clustering, to MMseqs2's
tie-breaking), and ``cluster.mpi_runner``
runs MMseqs2's parallel steps under MPI with the same clusters as one rank."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline_lib.config import ClusterConfig, ClusterLevel, IngestConfig
from pipeline_lib.errors import ToolError
from pipeline_lib.sequences.cluster import cluster_level
from pipeline_lib.sequences.cluster_quality import partition_agreement
from pipeline_lib.sequences.families import FamilySpec, load_seeds, write_families
from pipeline_lib.sequences.ingest import ingest_fasta
from pipeline_lib.tools.mmseqs import MMseqs, find_mmseqs, is_mpi_build

C50 = ClusterLevel(name="c50", min_seq_id=0.5)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    d = tmp_path_factory.mktemp("fam")
    write_families(FamilySpec(n=3000, seed=7), load_seeds(), d / "fam.fasta.gz", d / "truth.parquet")
    ingest_fasta([d / "fam.fasta.gz"], d, IngestConfig())
    return d / "sequences.parquet"


def _level(sequences: Path, level: ClusterLevel, d: Path, mm: MMseqs):
    d.mkdir(parents=True)
    return cluster_level(sequences, level, d, d / "mm", mm)


def _members(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _partition(path: Path) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for row in _members(path):
        groups.setdefault(row["rep"], set()).add(row["member"])
    return {frozenset(g) for g in groups.values()}


def test_a_limit_below_the_kmer_table_splits_and_gives_the_same_clustering(sequences, tmp_path):
    whole = _level(sequences, C50, tmp_path / "a", MMseqs(threads=2))
    mm = MMseqs(threads=2, split_memory_limit="200K")
    split = _level(sequences, C50, tmp_path / "b", mm)
    assert "--split-memory-limit" not in whole.command
    assert split.command[split.command.index("--split-memory-limit") + 1] == "200K"
    # mmseqs says it could not hold the k-mer table at once, and the result is the same
    assert "need to split" in (tmp_path / "b" / "mm" / "mmseqs.log").read_text()
    assert "need to split" not in (tmp_path / "a" / "mm" / "mmseqs.log").read_text()
    # linclust's k-mer matcher picks each k-mer group's centre within a split, so a split run is not bit-identical
    # (MMseqs2's behaviour; measured: ARI 0.996 on this set) but it is the same clustering for every practical use
    a, b = (pq.read_table(tmp_path / d / "members.parquet").to_pydict() for d in ("a", "b"))
    assert a["member"] == b["member"]
    agreement = partition_agreement(a["rep"], b["rep"])
    assert agreement.ari > 0.99 and abs(split.clusters - whole.clusters) <= 0.01 * whole.clusters
    assert 100 < whole.clusters < 3000


def test_memory_limit_config():
    cfg = ClusterConfig(memory_limit="8G", levels=[ClusterLevel(name="c90", min_seq_id=0.9, memory_limit="500M"),
                                                   ClusterLevel(name="c50", min_seq_id=0.5, method="cluster")])
    assert [cfg.limit_of(lv) for lv in cfg.levels] == ["500M", "8G"]
    with pytest.raises(ValueError, match="prefilter needs"):  # mmseqs would stop with 'Cannot fit databases'
        ClusterConfig(memory_limit="1G", levels=[ClusterLevel(name="c30", min_seq_id=0.3, method="cluster")])
    with pytest.raises(ValueError, match="memory_limit"):
        ClusterConfig(memory_limit="8 GB")
    with pytest.raises(ValueError, match="without spaces"):
        ClusterConfig(mpi_runner=["mpirun -np 2"])


def test_mpi_runner_refuses_a_binary_without_mpi():
    assert not is_mpi_build(find_mmseqs())
    with pytest.raises(ToolError, match="needs an mmseqs built with MPI"):
        MMseqs(mpi_runner=["mpirun", "-np", "2"])


# The user's path (`--set cluster.memory_limit=...` in lineage, not in the cache key) is driven in
# tests/test_cluster_update.py::test_data_refresh_updates_the_previous_release, which runs a refresh under a limit.


# what `make mmseqs-mpi` builds (or any MPI build named by PLM_MMSEQS_MPI)
MPI_MMSEQS = os.environ.get("PLM_MMSEQS_MPI", str(Path(__file__).resolve().parents[1] / "build" / "mmseqs-mpi" / "bin"
                                                  / "mmseqs"))


@pytest.mark.skipif(not (Path(MPI_MMSEQS).is_file() and is_mpi_build(MPI_MMSEQS) and shutil.which("mpirun")),
                    reason="no MPI build of mmseqs (make mmseqs-mpi, or set PLM_MMSEQS_MPI) or no mpirun")
@pytest.mark.parametrize("method", ["linclust", "cluster"])
def test_two_mpi_ranks_give_the_clusters_of_one(sequences, tmp_path, monkeypatch, method):
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    level = ClusterLevel(name="c30", min_seq_id=0.3, method=method)
    _level(sequences, level, tmp_path / "one", MMseqs(binary=MPI_MMSEQS))
    mm = MMseqs(binary=MPI_MMSEQS, mpi_runner=["mpirun", "-np", "2", "--oversubscribe"])
    two = _level(sequences, level, tmp_path / "two", mm)
    assert two.command[two.command.index("--mpi-runner") + 1] == "mpirun -np 2 --oversubscribe"
    assert _members(tmp_path / "one" / "members.parquet") == _members(tmp_path / "two" / "members.parquet")


def test_preflight_names_a_binary_without_mpi(tmp_path):
    """Before any stage: the run is refused with the reason, not N ranks each redoing every step."""
    from pipeline_lib.config import load_config
    from pipeline_lib.errors import ConfigError
    from pipeline_lib.preflight import check
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"workdir={tmp_path}", "cluster.mpi_runner=[mpirun, -np, '2']"])
    with pytest.raises(ConfigError, match="is not an MPI build of mmseqs"):
        check(cfg, "data_refresh")
