"""Structures benchmark: 3Di encoding throughput (structures/s, residues/s) and peak memory, by backend.

    .venv/bin/python bench/structures_bench.py --repeat 20 --workers 1 [--workers 4] [--batch-size 16]

With ``foldseek`` on PATH it adds the ``foldseek`` backend (our parse for pLDDT + ``foldseek createdb`` per batch)
and a bare ``foldseek createdb`` over the same files in one call (``--threads`` of it: ``--foldseek-threads``).

Encodes every file under ``../shared/fixtures/structures`` (AlphaFold DB, ColabFold, PDB and SCOP
entries: 39 files, 44 chains, 9,159 residues) ``--repeat`` times with the mini3di backend
(parse with gemmi + encode), and prints one markdown table row per worker count. Peak RSS is the
largest resident set of this process and, separately, of the largest worker process.
"""
from __future__ import annotations

import argparse
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline_lib.structures.threedi import EncodeStats, encode_structures  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "structures"


def run(files: list[Path], repeat: int, workers: int, batch_size: int,
        backend: str = "mini3di") -> dict[str, float]:
    """Encode ``files`` ``repeat`` times; return throughput and timings."""
    stats = EncodeStats()
    start = time.perf_counter()
    n = sum(1 for _ in encode_structures(files * repeat, backend, workers=workers,  # type: ignore[arg-type]
                                         batch_size=batch_size, stats=stats))
    elapsed = time.perf_counter() - start
    assert n == stats.chains and not stats.failures
    return {"seconds": elapsed, "files": stats.files, "chains": stats.chains, "residues": stats.residues,
            "structures_per_s": stats.files / elapsed, "chains_per_s": stats.chains / elapsed,
            "residues_per_s": stats.residues / elapsed}


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="times the fixture set is encoded")
    ap.add_argument("--workers", type=int, action="append", help="worker processes (repeatable); default 1")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--foldseek-threads", type=int, default=1)
    args = ap.parse_args()
    files = sorted(p for p in FIXTURES.rglob("*") if p.is_file())
    if not files:
        sys.exit(f"no structure fixtures under {FIXTURES}")
    print(f"<!-- {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{len(files)} files x {args.repeat} -->")
    print("| backend | workers | files | residues | seconds | structures/s | residues/s | "
          "peak RSS main (MiB) | peak RSS worker (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workers in args.workers or [1]:
        r = run(files, args.repeat, workers, args.batch_size)
        child = peak_rss_mib(resource.RUSAGE_CHILDREN) if workers > 1 else 0.0
        print(f"| mini3di | {workers} | {r['files']} | {r['residues']} | {r['seconds']:.2f} | "
              f"{r['structures_per_s']:.1f} | {r['residues_per_s']:,.0f} | "
              f"{peak_rss_mib(resource.RUSAGE_SELF):.0f} | {child:.0f} |", flush=True)
    if shutil.which("foldseek"):
        r = run(files, args.repeat, 1, args.batch_size, backend="foldseek")
        print(f"| foldseek (ours: parse + createdb per batch) | 1 | {r['files']} | {r['residues']} | "
              f"{r['seconds']:.2f} | {r['structures_per_s']:.1f} | {r['residues_per_s']:,.0f} | "
              f"{peak_rss_mib(resource.RUSAGE_SELF):.0f} | {peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} |",
              flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in"
            src.mkdir()
            for i in range(args.repeat):
                for f in files:
                    (src / f"r{i}_{f.name}").symlink_to(f)
            start = time.perf_counter()
            subprocess.run(["foldseek", "createdb", str(src), str(Path(tmp) / "db"), "--threads",
                            str(args.foldseek_threads), "-v", "1"], check=True)
            took = time.perf_counter() - start
        n = len(files) * args.repeat
        print(f"| foldseek createdb (bare, --threads {args.foldseek_threads}) | - | {n} | {r['residues']} | "
              f"{took:.2f} | {n / took:.1f} | {r['residues'] / took:,.0f} | - | "
              f"{peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} |", flush=True)


if __name__ == "__main__":
    main()
