import random

import pyarrow.parquet as pq

from pipeline_lib.config import ClusterConfig, DecontaminateConfig, IngestConfig, SplitConfig
from pipeline_lib.sequences.cluster import cluster_sequences
from pipeline_lib.sequences.ingest import ingest_fasta
from pipeline_lib.sequences.split import assign_splits, decontaminate, split_of
from tests.helpers import family_fasta, point_mutant


def test_split_is_deterministic_and_proportional():
    reps = [f"rep{i}" for i in range(20000)]
    a = [split_of(r, 7, 0.1, 0.2) for r in reps]
    assert a == [split_of(r, 7, 0.1, 0.2) for r in reps]
    assert abs(a.count("valid") / len(a) - 0.1) < 0.01 and abs(a.count("test") / len(a) - 0.2) < 0.015
    assert a != [split_of(r, 8, 0.1, 0.2) for r in reps]


def test_no_cluster_spans_two_splits(tmp_path):
    family_fasta(tmp_path / "in.fa", families=12, mutants=4, unrelated=10, length=120)
    ingest_fasta([tmp_path / "in.fa"], tmp_path, IngestConfig())
    cluster_sequences(tmp_path / "sequences.parquet", tmp_path, ClusterConfig(), tmp_path / "tmp")
    res = assign_splits(tmp_path / "clusters.parquet", tmp_path, SplitConfig(valid_fraction=0.3, test_fraction=0.3),
                        level="c50", seed=1)
    clusters = {r["id"]: r["cluster_c50"] for r in pq.read_table(tmp_path / "clusters.parquet").to_pylist()}
    split_of_cluster: dict[str, str] = {}
    for r in pq.read_table(tmp_path / "splits.parquet").to_pylist():
        assert split_of_cluster.setdefault(clusters[r["id"]], r["split"]) == r["split"]
    assert sum(res.sizes.values()) == len(clusters) and len(set(split_of_cluster.values())) > 1


def test_decontamination_removes_training_hits(tmp_path):
    family_fasta(tmp_path / "in.fa", families=6, mutants=1, unrelated=6, length=150, seed=3)
    ingest_fasta([tmp_path / "in.fa"], tmp_path, IngestConfig())
    cluster_sequences(tmp_path / "sequences.parquet", tmp_path, ClusterConfig(), tmp_path / "tmp")
    seqs = {r["id"]: r["sequence"] for r in pq.read_table(tmp_path / "sequences.parquet").to_pylist()}
    split_cfg = SplitConfig(valid_fraction=0.0, test_fraction=0.0)  # everything would be training
    eval_fa = tmp_path / "eval.fa"
    eval_fa.write_text(f">probe\n{point_mutant(random.Random(0), seqs['unrelated2'], 3)}\n")
    rows, cmd = decontaminate(tmp_path / "sequences.parquet", tmp_path / "clusters.parquet",
                              DecontaminateConfig(fasta=[str(eval_fa)], min_seq_id=0.9), split_cfg,
                              level="c50", seed=0, tmp_dir=tmp_path / "dc")
    assert [r["id"] for r in rows] == ["unrelated2"] and rows[0]["reason"] == "decontaminated"
    assert "eval.fa" in rows[0]["detail"] and cmd[1] == "easy-search"
    res = assign_splits(tmp_path / "clusters.parquet", tmp_path, split_cfg, level="c50", seed=0,
                        excluded={r["id"] for r in rows})
    assert res.sizes["train"] == len(seqs) - 1


def test_streamed_batches_give_the_split_of_one_batch(tmp_path, monkeypatch):
    """The split stage streams its inputs (flat memory at UniRef scale): the batch size changes nothing."""
    import pyarrow as pa

    import pipeline_lib.sequences.split as split_mod

    rng = random.Random(0)
    n = 5000
    ids = [f"id{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "cluster_c50": [f"rep{rng.randrange(700)}" for _ in range(n)]}),
                   tmp_path / "clusters.parquet")
    dropped = set(rng.sample(ids, 40))
    cfg = SplitConfig(valid_fraction=0.15, test_fraction=0.15)
    results = {}
    for rows in (split_mod.BATCH_ROWS, 333):
        monkeypatch.setattr(split_mod, "BATCH_ROWS", rows)
        out = tmp_path / f"b{rows}"
        out.mkdir()
        res = assign_splits(tmp_path / "clusters.parquet", out, cfg, level="c50", seed=5, excluded=dropped)
        results[rows] = (res, pq.read_table(out / "splits.parquet"))
        assert not (out / "_duckdb_tmp").exists()
    (one, t1), (many, t2) = results.values()
    assert t1.equals(t2) and one == many
    assert t1.num_rows == n - len(dropped) and not set(t1.column("id").to_pylist()) & dropped
    assert t1.column("id").to_pylist() == [i for i in ids if i not in dropped]          # row order kept
    reps = pq.read_table(tmp_path / "clusters.parquet").column("cluster_c50").to_pylist()
    assert sum(one.clusters.values()) == len(set(reps))
    assert one.clusters["valid"] == len({r for r in reps if split_of(r, 5, 0.15, 0.15) == "valid"})
