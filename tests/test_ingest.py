import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import IngestConfig
from pipeline_lib.ingest import ingest_fasta
from tests.conftest import fixture_path


def test_counts_reconcile_and_nothing_is_lost(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_bytes(b"junk before header\n>a\nMKVLAAGIVLLA*\n>b dup seq\nmkvlaagivlla\n>a\nMKKKKKKKKKKKKK\n"
                   b">bad\nMK12VLAAGIVL\n>short\nMKV\n>\nMKVLAAGIVLLAW\n>c\nMKVLAAGIVLLAWW\n")
    stats = ingest_fasta([fa], tmp_path / "out", IngestConfig(min_length=5))
    assert stats.records_in == 8
    assert (stats.kept, stats.duplicates, stats.quarantined) == (2, 1, 5)
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert [(f.name, f.type) for f in seqs.schema] == [(f.name, f.type) for f in schemas.SEQUENCES]
    assert seqs.column("id").to_pylist() == ["a", "c"]
    assert seqs.column("sequence").to_pylist()[0] == "MKVLAAGIVLLA"
    dups = pq.read_table(tmp_path / "out" / "duplicates.parquet").to_pylist()
    assert [(d["id"], d["kept_id"]) for d in dups] == [("b", "a")]
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert sorted(r["reason"] for r in q) == ["duplicate_id", "invalid_characters", "malformed_header",
                                               "missing_header", "too_short"]
    assert all(r["source_file"] == str(fa) for r in q)
    assert len(seqs) + len(dups) + len(q) == stats.records_in


def test_real_fasta_and_memory_independent_row_groups(tmp_path):
    fa = fixture_path("sequences", "uniprot_trembl_500.fasta")
    stats = ingest_fasta([fa], tmp_path, IngestConfig(batch_rows=64))
    assert stats.records_in == 500 and stats.kept + stats.duplicates + stats.quarantined == 500
    t = pq.read_table(tmp_path / "sequences.parquet")
    assert all(v is not None for v in t.column("tax").to_pylist())
    assert set(t.column("db").to_pylist()) == {"sp", "tr"}
