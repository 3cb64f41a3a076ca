"""Data-path benchmark: ingest + tokenize + shard throughput and peak memory on a generated FASTA,
beside the plain speed of decompressing and reading the same file.

    .venv/bin/python bench/data_path.py --size-gb 1 [--workdir bench/out]

Generates a gzip FASTA of random proteins (lengths 50-1000, UniRef-style headers) of at least
``--size-gb`` uncompressed (cached in the workdir), then times (1) plain decompression + read in 4 MiB
blocks with the fastest decompressor available (ISA-L ``igzip`` when the ``isal`` package is installed, the
one the pipeline uses too) and with the standard ``gzip`` module for reference, (2) the pipeline's
``ingest_fasta`` and the shards stage's partitions and manifest (every sequence its own cluster, all in train;
the default ``shards.partition_rows``). Wall and CPU seconds are both shown: CPU time is what to compare on
a busy machine. Peak memory is the process's max RSS (``getrusage``, so no spike is missed), DuckDB's buffers
and the pipeline's threads included. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.config import IngestConfig, ShardsConfig  # noqa: E402
from pipeline_lib.sequences.fasta import DECOMPRESSOR, open_maybe_gzip  # noqa: E402
from pipeline_lib.sequences.ingest import ingest_fasta  # noqa: E402
from pipeline_lib.sequences.shards import assemble_shards, partition_ranges, write_shard_partition  # noqa: E402

AA = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def generate(path: Path, size_bytes: int, seed: int = 0) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    written = n = 0
    with gzip.open(path, "wb", compresslevel=1) as fh:
        while written < size_bytes:
            lengths = rng.integers(50, 1000, size=2000)
            letters = AA[rng.integers(0, 20, size=int(lengths.sum()))].tobytes()
            out, pos = [], 0
            for ln in lengths:
                seq = letters[pos: pos + ln]
                pos += ln
                lines = b"\n".join(seq[i: i + 60] for i in range(0, ln, 60))
                out.append(b">UniRef50_B%09d Generated protein n=1 Tax=Bench TaxID=1 RepID=B%09d_BENCH\n%s\n"
                           % (n, n, lines))
                n += 1
            block = b"".join(out)
            fh.write(block)
            written += len(block)
    return written, n


class Timer:
    """Wall and process CPU seconds (all threads) of a block."""

    def __enter__(self) -> Timer:
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t, time.process_time() - self.c


def plain_read(path: Path, opener) -> tuple[int, Timer]:
    n = 0
    with Timer() as t, opener(path) as fh:
        while block := fh.read(1 << 22):
            n += len(block)
    return n, t


def gunzip_cli(path: Path) -> Timer | None:
    """``gzip -dc FILE > /dev/null``: plain decompression with the standard tool (None where it is missing)."""
    exe = shutil.which("gzip")
    if exe is None:
        return None
    with Timer() as t, open(os.devnull, "wb") as sink:
        subprocess.run([exe, "-dc", str(path)], stdout=sink, check=True)
    return t


def shard_partitions(seqs: Path, clusters: Path, splits: Path, run: Path, cfg: ShardsConfig) -> list[Path]:
    """What the shards stage does, in one process: every partition, then the files linked into place and the
    manifest (the stage runs each partition as a task of its own, side by side on the task runner)."""
    written = []
    for i, rows in enumerate(partition_ranges(pq.ParquetFile(seqs).metadata.num_rows, cfg.partition_rows)):
        part = run / "partitions" / f"partition-{i:05d}"
        written.append((part, write_shard_partition(seqs, clusters, splits, part, levels=["c100"], cfg=cfg,
                                                    rows=rows)))
    assemble_shards(written, run / "shards", levels=["c100"])
    return [part for part, _ in written]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--workdir", default="bench/out/data_path")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work / "run", ignore_errors=True)
    (work / "run").mkdir(parents=True, exist_ok=True)
    fasta = work / f"bench_{args.size_gb:g}gb.fasta.gz"
    if not fasta.exists():
        t = time.perf_counter()
        raw, n = generate(fasta, int(args.size_gb * 1e9))
        print(f"generated {fasta} ({raw / 1e9:.2f} GB uncompressed, {n} records) in {time.perf_counter() - t:.0f}s")
    raw_bytes, fast = plain_read(fasta, open_maybe_gzip)   # what the pipeline reads with
    _, slow = plain_read(fasta, lambda p: gzip.open(p, "rb"))
    cli = gunzip_cli(fasta)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Timer() as ingest:
        stats = ingest_fasta([fasta], work / "run" / "ingest", IngestConfig())
    seqs = work / "run" / "ingest" / "sequences.parquet"
    con = duckdb.connect(config={"memory_limit": "256MB", "threads": 2})
    con.execute(f"COPY (SELECT id, id AS cluster_c100 FROM read_parquet('{seqs}')) TO '{work}/run/clusters.parquet'")
    con.execute(f"COPY (SELECT id, 'train' AS split FROM read_parquet('{seqs}')) TO '{work}/run/splits.parquet'")
    con.close()
    with Timer() as shard:
        partitions = shard_partitions(seqs, work / "run" / "clusters.parquet", work / "run" / "splits.parquet",
                                      work / "run", ShardsConfig())
    print(f"tokenize+shard: {len(partitions)} partition(s) of at most {ShardsConfig().partition_rows:,} rows")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    wall, cpu = ingest.wall + shard.wall, ingest.cpu + shard.cpu
    mb = raw_bytes / 1e6
    print(f"machine: {os.cpu_count()} cores; plain read = decompress + read in 4 MiB blocks; pipeline decompressor: "
          f"{DECOMPRESSOR}; load average before the run {os.getloadavg()[0]:.1f}")
    cli_cell = f"{cli.wall:.1f} s ({mb / cli.wall:.0f} MB/s)" if cli else "n/a"
    cli_ratio = f"{(ingest.wall + shard.wall) / cli.wall:.1f}x" if cli else "n/a"
    print("| input (uncompressed) | records | plain read, " + DECOMPRESSOR + " | plain read, gzip module | "
          "gzip -dc | ingest | tokenize+shard | pipeline total | pipeline MB/s | residues/s | ratio to plain (" +
          DECOMPRESSOR + ") | ratio to plain (gzip module) | ratio to gzip -dc | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {raw_bytes / 1e9:.2f} GB | {stats.records_in:,} | {fast.wall:.1f} s ({mb / fast.wall:.0f} MB/s) | "
          f"{slow.wall:.1f} s ({mb / slow.wall:.0f} MB/s) | {cli_cell} | {ingest.wall:.1f} s (cpu {ingest.cpu:.1f}) | "
          f"{shard.wall:.1f} s (cpu {shard.cpu:.1f}) | {wall:.1f} s (cpu {cpu:.1f}) | {mb / wall:.0f} | "
          f"{stats.residues_kept / wall / 1e6:.1f} M | "
          f"{wall / fast.wall:.1f}x | {wall / slow.wall:.1f}x | {cli_ratio} | {peak:.0f} MiB |")
    if rss_before / 1024 > peak * 0.9:
        print(f"(peak RSS was reached before the pipeline ran: {rss_before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
