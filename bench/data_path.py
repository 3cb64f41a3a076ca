"""Data-path benchmark: ingest + tokenize + shard throughput and peak memory on a generated FASTA,
beside the plain speed of decompressing and reading the same file.

    .venv/bin/python bench/data_path.py --size-gb 1 [--workdir bench/out]

Generates a gzip FASTA of random proteins (lengths 50-1000, UniRef-style headers) of at least
``--size-gb`` uncompressed, then times (1) gzip decompression + read in 4 MiB blocks, (2) the pipeline's
``ingest_fasta`` and ``write_sequence_shards`` (every sequence its own cluster, all in train). Peak
memory is the process's max RSS, sampled, including DuckDB's buffers. Prints a markdown table row.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.config import IngestConfig, ShardsConfig  # noqa: E402
from pipeline_lib.ingest import ingest_fasta  # noqa: E402
from pipeline_lib.shards import write_sequence_shards  # noqa: E402

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


class PeakRSS:
    def __init__(self) -> None:
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *a) -> None:
        self._stop.set()
        self.t.join()


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
    raw_bytes = 0
    t = time.perf_counter()
    with gzip.open(fasta, "rb") as fh:
        while block := fh.read(1 << 22):
            raw_bytes += len(block)
    t_plain = time.perf_counter() - t
    with PeakRSS() as mem:
        t = time.perf_counter()
        stats = ingest_fasta([fasta], work / "run" / "ingest", IngestConfig())
        t_ingest = time.perf_counter() - t
        seqs = work / "run" / "ingest" / "sequences.parquet"
        con = duckdb.connect()
        con.execute(f"COPY (SELECT id, id AS cluster_c100 FROM read_parquet('{seqs}')) TO '{work}/run/clusters.parquet'")
        con.execute(f"COPY (SELECT id, 'train' AS split FROM read_parquet('{seqs}')) TO '{work}/run/splits.parquet'")
        con.close()
        t = time.perf_counter()
        write_sequence_shards(seqs, work / "run" / "clusters.parquet", work / "run" / "splits.parquet",
                              work / "run" / "shards", levels=["c100"], cfg=ShardsConfig())
        t_shard = time.perf_counter() - t
    total = t_ingest + t_shard
    mb = raw_bytes / 1e6
    print("| input (uncompressed) | records | plain gunzip+read | ingest | tokenize+shard | pipeline total | "
          "pipeline MB/s | residues/s | ratio to plain | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {raw_bytes / 1e9:.2f} GB | {stats.records_in:,} | {t_plain:.1f} s ({mb / t_plain:.0f} MB/s) | "
          f"{t_ingest:.1f} s | {t_shard:.1f} s | {total:.1f} s | {mb / total:.0f} | "
          f"{stats.residues_kept / total / 1e6:.1f} M | {total / t_plain:.1f}x | {mem.peak / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
