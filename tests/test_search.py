"""Query-chunk helpers of pipeline_lib/sequences/search.py (the flows' chunked searches are tested end to end in
tests/test_split_audit.py and tests/test_runner.py)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib.sequences.cluster import write_fasta_from_parquet
from pipeline_lib.sequences.search import chunk_count, chunk_rows, search_chunk, write_rows_fasta
from pipeline_lib.tools.mmseqs import MMseqs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_fasta_reads_only_what_it_needs_and_equals_the_masked_writer(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 1000
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), int(rng.integers(5, 40)))) for _ in range(n)]
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(n)], "sequence": seqs}), tmp_path / "s.parquet",
                   row_group_size=97)  # rows straddle row groups
    rows = np.sort(rng.choice(n, int(rng.integers(1, 300)), replace=False))
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    assert write_rows_fasta(tmp_path / "s.parquet", rows, tmp_path / "a.fa") == len(rows)
    write_fasta_from_parquet(tmp_path / "s.parquet", tmp_path / "b.fa", keep=keep)
    assert (tmp_path / "a.fa").read_text() == (tmp_path / "b.fa").read_text()


def test_chunks_cover_the_queries_once():
    rows = np.arange(0, 1000, 7)
    n = chunk_count(len(rows), 30)
    assert n == 5 and chunk_count(0, 30) == 0
    assert np.array_equal(np.concatenate([chunk_rows(rows, 30, i) for i in range(n)]), rows)


def test_a_chunk_without_queries_runs_no_mmseqs(tmp_path):
    argv = search_chunk(tmp_path / "never-read.parquet", np.zeros(0, dtype=np.int64), tmp_path / "db",
                        tmp_path / "hits.tsv", tmp_path / "tmp", MMseqs(), ["-s", "5.7"])
    assert argv == [] and (tmp_path / "hits.tsv").read_text() == ""
