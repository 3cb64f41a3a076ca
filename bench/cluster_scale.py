"""How mmseqs clustering scales with the number of sequences: CPU seconds and peak RSS per run, and the slope
that docs/scale.md extrapolates to UniRef50.

    .venv/bin/python bench/cluster_scale.py --fasta /tmp/bench01/bench_0.1gb.fasta.gz --records 81000 162000
    .venv/bin/python bench/cluster_scale.py --fasta F --records 20250 --method cluster --min-seq-id 0.3

The FASTA is the one ``bench/data_path.py`` generates (random proteins, UniRef-style headers); the first N
records of it are clustered with the mmseqs binary the pipeline uses, on ``--threads`` threads. Peak RSS is
``getrusage(RUSAGE_CHILDREN)`` of a fresh process per run (the largest mmseqs child). Random sequences have
almost no homologs, so the CPU times are lower bounds for real proteins; the k-mer table memory is not.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.sequences.fasta import read_fasta  # noqa: E402
from pipeline_lib.tools.mmseqs import MMseqs  # noqa: E402

_CHILD = """
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f'{{"wall": {time.perf_counter() - t}, "cpu": {ru.ru_utime + ru.ru_stime}, "rss_mib": {ru.ru_maxrss / 1024}}}')
"""


def first_records(src: Path, n: int, dest: Path) -> int:
    residues = 0
    with open(dest, "w") as fh:
        for i, rec in enumerate(read_fasta(src)):
            if i == n:
                break
            fh.write(f">{rec.header}\n{rec.sequence}\n")
            residues += len(rec.sequence)
    return residues


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fasta", required=True, type=Path)
    ap.add_argument("--records", type=int, nargs="+", required=True)
    ap.add_argument("--method", choices=["linclust", "cluster"], default="linclust")
    ap.add_argument("--min-seq-id", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    mm = MMseqs()
    rows = []
    for n in args.records:
        with tempfile.TemporaryDirectory() as tmp:
            fa = Path(tmp) / "in.fasta"
            residues = first_records(args.fasta, n, fa)
            argv = [mm.binary, f"easy-{args.method}", str(fa), f"{tmp}/c", f"{tmp}/tmp", "--min-seq-id",
                    str(args.min_seq_id), "-c", "0.8", "--cov-mode", "1", "--threads", str(args.threads), "-v", "1"]
            out = subprocess.run([sys.executable, "-c", _CHILD, *argv], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((n, residues, r))
            print(f"| {args.method} {args.min_seq_id} | {n:,} | {residues:,} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                  f"{r['rss_mib']:.0f} |", flush=True)
    if len(rows) >= 2:
        (n0, _, a), (n1, _, b) = rows[0], rows[-1]
        print(f"slope: {(b['cpu'] - a['cpu']) / (n1 - n0) * 1e3:.3f} ms CPU and "
              f"{(b['rss_mib'] - a['rss_mib']) * 1024 / (n1 - n0):.2f} KiB RSS per sequence")


if __name__ == "__main__":
    main()
