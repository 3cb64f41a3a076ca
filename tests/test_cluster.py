import pyarrow.parquet as pq
import pytest

from pipeline_lib.cluster import cluster_sequences
from pipeline_lib.config import ClusterConfig, ClusterLevel, IngestConfig
from pipeline_lib.errors import ToolError
from pipeline_lib.ingest import ingest_fasta
from pipeline_lib.tools.mmseqs import MMseqs
from tests.helpers import family_fasta


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    groups = family_fasta(d / "in.fa")
    ingest_fasta([d / "in.fa"], d, IngestConfig())
    cfg = ClusterConfig(levels=[ClusterLevel(name="c90", min_seq_id=0.9), ClusterLevel(name="c50", min_seq_id=0.5,
                                                                                         method="cluster")])
    res = cluster_sequences(d / "sequences.parquet", d, cfg, d / "tmp")
    return groups, res, pq.read_table(d / "clusters.parquet").to_pylist(), d


def test_point_mutants_share_a_cluster_and_unrelated_do_not(clustered):
    groups, res, rows, _ = clustered
    rep = {r["id"]: r["cluster_c90"] for r in rows}
    for name, ids in groups.items():
        assert len({rep[i] for i in ids}) == 1, f"{name} split across clusters"
    reps_of_groups = [rep[ids[0]] for ids in groups.values()]
    assert len(set(reps_of_groups)) == len(groups)  # different families never merge
    assert res.clusters_per_level == {"c90": len(groups), "c50": len(groups)}
    assert res.mmseqs_version and res.commands[0][:2] == ["mmseqs", "easy-linclust"]


def test_levels_are_nested_and_sizes_add_up(clustered):
    _, _, rows, d = clustered
    c90_to_c50 = {}
    for r in rows:  # every c90 cluster maps to exactly one c50 cluster
        assert c90_to_c50.setdefault(r["cluster_c90"], r["cluster_c50"]) == r["cluster_c50"]
    sizes = pq.read_table(d / "cluster_sizes.parquet").to_pylist()
    for level in ("c90", "c50"):
        assert sum(s["size"] for s in sizes if s["level"] == level) == len(rows)


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(ToolError, match="not found"):
        MMseqs(binary=tmp_path / "no-mmseqs").run("version")


def test_failing_binary_shows_command_and_stderr(tmp_path):
    with pytest.raises(ToolError) as err:
        MMseqs().easy_cluster(tmp_path / "missing.fa", tmp_path / "out", tmp_path / "tmp")
    msg = str(err.value)
    assert "easy-linclust" in msg and "exit code" in msg and "missing.fa" in msg
    assert err.value.stderr_tail


def test_next_level_input_is_in_row_order_so_reruns_give_the_same_clusters(clustered, tmp_path):
    """mmseqs writes a level's representatives in an order that changes with thread timing, and the next level
    breaks ties by input order: the next level must read the representatives in row order instead."""
    _, _, rows, d = clustered
    text = (d / "tmp" / "c90_next_input.fasta").read_text()
    ids = [int(line[1:]) for line in text.splitlines() if line.startswith(">")]
    reps = sorted({r["cluster_c90"] for r in rows})
    assert ids == sorted(ids) and len(ids) == len(reps)
    cfg = ClusterConfig(threads=2, levels=[ClusterLevel(name="c90", min_seq_id=0.9),
                                           ClusterLevel(name="c50", min_seq_id=0.5, method="cluster")])
    again = cluster_sequences(d / "sequences.parquet", tmp_path, cfg, tmp_path / "tmp")
    assert again.clusters_per_level == {"c90": len(reps), "c50": len({r["cluster_c50"] for r in rows})}
    assert pq.read_table(tmp_path / "clusters.parquet").to_pylist() == rows
