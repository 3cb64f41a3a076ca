"""Where the shard stage's CPU goes: each piece of ``write_sequence_shards`` timed on its own.

    .venv/bin/python bench/data_path.py --size-gb 1 --workdir /tmp/bench_1gb     # makes the inputs
    .venv/bin/python bench/shards_profile.py /tmp/bench_1gb/run

Reads the ingest / cluster / split outputs that ``bench/data_path.py`` leaves in its run directory and times
the shard plan (DuckDB), reading + joining ``sequences.parquet``, tokenizing, and encoding one shard file
with the options the pipeline uses (and, for comparison, other token-column layouts and zstd levels).
"""
from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.io import sha256_file  # noqa: E402
from pipeline_lib.sequences.shards import _joined, _plan, tokenize_array, tokenize_binary  # noqa: E402


def timed(label: str, fn: Callable[[], object]) -> object:
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    print(f"| {label} | {time.process_time() - c:.2f} | {time.perf_counter() - w:.2f} |")
    return out


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench_1gb/run")
    seqs, clusters, splits = run / "ingest" / "sequences.parquet", run / "clusters.parquet", run / "splits.parquet"
    level = pq.ParquetFile(clusters).schema_arrow.names[1].removeprefix("cluster_")
    work = Path(tempfile.mkdtemp(prefix="shards_profile."))
    rows = (0, pq.ParquetFile(seqs).metadata.num_rows)  # one partition: every row
    print("| piece | cpu s | wall s |\n|---|---|---|")
    plan = timed("shard plan (DuckDB join + sort of the narrow columns)",
                 lambda: _plan(seqs, clusters, splits, [level], work, rows))

    def batches():
        return pq.ParquetFile(seqs, pre_buffer=False).iter_batches(8192, columns=["sequence"])
    timed("read sequences.parquet", lambda: sum(b.num_rows for b in batches()))
    timed("read + join with the plan", lambda: sum(
        s.num_rows for s, _ in _joined(seqs, pq.ParquetFile(plan, pre_buffer=False).iter_batches(65536), rows)))
    timed("read + tokenize (binary, as written)", lambda: sum(len(tokenize_binary(b.column(0))) for b in batches()))
    shard = next((run / "shards" / "train").glob("part-*.parquet"))
    table = pq.read_table(shard)
    dictionary = [n for n in table.column_names if n != "tokens"]
    timed(f"encode {shard.name} ({table.num_rows:,} rows) as written: binary tokens, zstd 1",
          lambda: pq.write_table(table, work / "a.parquet", compression="zstd", compression_level=1,
                                 row_group_size=8192, use_dictionary=dictionary))
    timed("sha256 of that file", lambda: sha256_file(work / "a.parquet"))
    tokens = table.select(["tokens"])
    for level_ in (1, 3):
        timed(f"tokens column alone, binary, zstd {level_}",
              lambda level_=level_: pq.write_table(tokens, work / "t.parquet", compression="zstd",
                                                   compression_level=level_,
                                     row_group_size=8192, use_dictionary=False))
    as_lists = pa.table({"tokens": pa.chunked_array([tokenize_array(c) for c in
                                                     pq.read_table(seqs, columns=["sequence"]).slice(0, table.num_rows)
                                                     .column(0).chunks])})
    timed("tokens column alone, list<uint8> (schema 1), zstd 3",
          lambda: pq.write_table(as_lists, work / "l.parquet", compression="zstd", compression_level=3,
                                 row_group_size=8192))


if __name__ == "__main__":
    main()
