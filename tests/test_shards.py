import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline_lib.cluster import cluster_sequences
from pipeline_lib.config import ClusterConfig, IngestConfig, ShardsConfig, SplitConfig
from pipeline_lib.ingest import ingest_fasta
from pipeline_lib.shards import read_manifest, verify_manifest, write_sequence_shards
from pipeline_lib.split import assign_splits
from pipeline_lib.tokenizer import ESM_ALPHABET
from tests.helpers import family_fasta


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    family_fasta(d / "in.fa", families=20, mutants=3, unrelated=20, length=90)
    ingest_fasta([d / "in.fa"], d, IngestConfig())
    cluster_sequences(d / "sequences.parquet", d, ClusterConfig(), d / "tmp")
    assign_splits(d / "clusters.parquet", d, SplitConfig(valid_fraction=0.2, test_fraction=0.2), level="c50", seed=0)
    manifest = write_sequence_shards(d / "sequences.parquet", d / "clusters.parquet", d / "splits.parquet", d / "out",
                                     levels=["c90", "c50"], cfg=ShardsConfig(rows_per_shard=25, row_group_rows=10))
    return d, manifest


def test_manifest_describes_files_exactly(shards):
    d, manifest = shards
    assert manifest["vocabulary"]["tokens"] == list(ESM_ALPHABET.tokens)
    total = sum(v["rows"] for v in manifest["splits"].values())
    assert total == pq.ParquetFile(d / "sequences.parquet").metadata.num_rows
    train = manifest["splits"]["train"]["files"]
    assert len(train) > 1 and all(f["rows"] <= 25 for f in train)
    assert pq.ParquetFile(d / "out" / train[0]["path"]).metadata.num_row_groups >= 2
    assert verify_manifest(d / "out") == []
    assert read_manifest(d / "out") == manifest


def test_verify_detects_tampering(shards, tmp_path):
    import shutil

    d, manifest = shards
    copy = tmp_path / "copy"
    shutil.copytree(d / "out", copy)
    victim = copy / manifest["splits"]["train"]["files"][0]["path"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert any("sha256 mismatch" in p for p in verify_manifest(copy))


def test_tokens_decode_to_sequences_and_readers_agree(shards):
    d, manifest = shards
    seqs = {r["id"]: r["sequence"] for r in pq.read_table(d / "sequences.parquet").to_pylist()}
    path = d / "out" / manifest["splits"]["train"]["files"][0]["path"]
    for row in pq.read_table(path).to_pylist():
        assert ESM_ALPHABET.decode(row["tokens"]) == seqs[row["id"]]
        assert len(row["tokens"]) == row["length"] + 2
    n_duck = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{d / 'out'}/*/*.parquet')").fetchall()[0][0]
    assert n_duck == len(seqs)
    polars = pytest.importorskip("polars")
    assert polars.read_parquet(path).height == manifest["splits"]["train"]["files"][0]["rows"]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(d / "hf"))
    assert ds[0]["tokens"][0] == ESM_ALPHABET.cls_idx
