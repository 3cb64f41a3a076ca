import pyarrow.parquet as pq
import pytest

from pipeline_lib.config import ClusterConfig, ClusterLevel, IngestConfig
from pipeline_lib.errors import ToolError
from pipeline_lib.sequences.cluster import cluster_sequences
from pipeline_lib.sequences.ingest import ingest_fasta
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
    text = (d / "tmp" / "level_c50" / "mmseqs" / "level_input.fasta").read_text()   # c50 reads c90's reps
    ids = [int(line[1:]) for line in text.splitlines() if line.startswith(">")]
    reps = sorted({r["cluster_c90"] for r in rows})
    assert ids == sorted(ids) and len(ids) == len(reps)
    cfg = ClusterConfig(threads=2, levels=[ClusterLevel(name="c90", min_seq_id=0.9),
                                           ClusterLevel(name="c50", min_seq_id=0.5, method="cluster")])
    again = cluster_sequences(d / "sequences.parquet", tmp_path, cfg, tmp_path / "tmp")
    assert again.clusters_per_level == {"c90": len(reps), "c50": len({r["cluster_c50"] for r in rows})}
    assert pq.read_table(tmp_path / "clusters.parquet").to_pylist() == rows


def test_mmseqs_workflow_steps_are_read_from_its_own_output(clustered):
    """At verbosity 3 an mmseqs workflow names each module it starts; the adapter reads them off the real log."""
    _, _, _, d = clustered
    lines = (d / "tmp" / "level_c90" / "mmseqs" / "mmseqs.log").read_text().splitlines()
    steps = [s for s in map(MMseqs(binary="mmseqs").step_of, lines) if s]
    assert steps[:3] == ["createdb", "linclust", "kmermatcher"]
    assert {"clust", "createtsv", "result2repseq"} <= set(steps)
    assert not any(s.startswith("easy") for s in steps)  # the workflow's own echo is not a step


def _fake_mmseqs(tmp_path, body: str):
    script = tmp_path / "mmseqs"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    tool = MMseqs(binary=script)
    tool.heartbeat_s = 0.1
    return tool


def test_a_long_tool_run_logs_its_time_and_step_until_it_ends(tmp_path, caplog):
    tool = _fake_mmseqs(tmp_path, "echo 'createdb in.fa db -v 3'; sleep 0.6; echo 'clust db out -v 3'; sleep 0.6\n")
    with caplog.at_level("INFO", logger="pipeline_lib.tools.base"):
        tool.run("easy-cluster", "in.fa")
    beats = [r.getMessage() for r in caplog.records if "running for" in r.getMessage()]
    assert beats and all(b.startswith("mmseqs easy-cluster: running for") for b in beats)
    assert any("step 1 (createdb)" in b for b in beats) and any("step 2 (clust)" in b for b in beats)
    assert caplog.records[-1].getMessage().startswith("mmseqs easy-cluster: finished after")
    assert caplog.records[-1].getMessage().endswith(", 2 steps")


def test_a_failed_long_run_says_failed_and_a_short_run_stays_quiet(tmp_path, caplog):
    tool = _fake_mmseqs(tmp_path, "echo 'createdb in.fa db -v 3'; sleep 0.3; exit 3\n")
    with caplog.at_level("INFO", logger="pipeline_lib.tools.base"), pytest.raises(ToolError, match="exit code: 3"):
        tool.run("easy-cluster")
    assert "mmseqs easy-cluster: failed after" in caplog.records[-1].getMessage()
    caplog.clear()
    (tmp_path / "quick").mkdir()
    tool = _fake_mmseqs(tmp_path / "quick", "echo 'createdb in.fa db -v 3'\n")
    tool.heartbeat_s = 60
    with caplog.at_level("INFO", logger="pipeline_lib.tools.base"):
        tool.run("version")
    assert [r.getMessage() for r in caplog.records] == [f"running: {tool.binary} version"]
