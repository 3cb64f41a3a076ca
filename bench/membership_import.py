"""Throughput and peak memory of the UniRef membership import on a generated ``uniref50.xml.gz`` in UniProt's
layout, beside plain decompression of the same file.

    .venv/bin/python bench/membership_import.py --gz-mb 1024 --dir /tmp/membership_bench

Writes (once, then reuses) a gzip file of at least ``--gz-mb`` MiB: UniRef50 entries with 1-12 UniRef90 clusters of
1-4 members each, every member with the properties and one-line sequence UniProt writes (sequences drawn from a
pool of random proteins, accessions unique). Then, each in a fresh process: (1) decompression alone, reading the
gzip stream 16 MiB at a time as the import does; (2) ``read_membership`` to Parquet. Prints uncompressed MB/s, wall
and CPU seconds and peak RSS (``getrusage``) of each, and the ratio. Target (#17): import within 2x of
decompression, peak RSS < 1 GB.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AA = "ACDEFGHIKLMNPQRSTVWY"


def _member(tag: str, acc: str, u90: str, u50: str, seq: str) -> str:
    return (f'<{tag}>\n  <dbReference type="UniProtKB ID" id="{acc}_BENCH">\n'
            f'    <property type="UniProtKB accession" value="{acc}"/>\n'
            f'    <property type="UniParc ID" value="UPI{acc[-10:]}"/>\n'
            f'    <property type="UniRef100 ID" value="UniRef100_{acc}"/>\n'
            f'    <property type="UniRef90 ID" value="{u90}"/>\n'
            f'    <property type="UniRef50 ID" value="{u50}"/>\n'
            '    <property type="protein name" value="Uncharacterized protein"/>\n'
            '    <property type="source organism" value="Bacillus subtilis"/>\n'
            '    <property type="NCBI taxonomy" value="1423"/>\n'
            f'    <property type="length" value="{len(seq)}"/>\n  </dbReference>\n'
            f'  <sequence length="{len(seq)}" checksum="0123456789ABCDEF">{seq}</sequence>\n</{tag}>\n')


def generate(path: Path, gz_mb: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    pool = ["".join(rng.choice(AA) for _ in range(rng.randint(80, 600))) for _ in range(2000)]
    entries = pairs = 0
    with gzip.open(path, "wt", compresslevel=6, encoding="latin-1") as out:
        out.write('<?xml version="1.0" encoding="ISO-8859-1" ?>\n<UniRef50 xmlns="http://uniprot.org/uniref" '
                  'releaseDate="2026-04-01" version="2026_03">\n')
        while True:
            u50 = f"UniRef50_B{entries:09d}"
            parts = [f'<entry id="{u50}" updated="2026-02-05">\n<name>Cluster: Uncharacterized protein</name>\n'
                     '<property type="member count" value="1"/>\n']
            first = True
            for j in range(rng.randint(1, 12)):
                u90 = f"UniRef90_B{entries:09d}{j:02d}"
                pairs += 1
                for k in range(rng.randint(1, 4)):
                    parts.append(_member("representativeMember" if first else "member",
                                         f"B{entries:09d}{j:02d}{k}", u90, u50, rng.choice(pool)))
                    first = False
            parts.append("</entry>\n")
            out.write("".join(parts))
            entries += 1
            if entries % 20000 == 0 and path.stat().st_size >= gz_mb << 20:
                break
        out.write("</UniRef50>\n")
    return {"entries": entries, "pairs": pairs}


def _child(kind: str, path: str, out: str) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "decompress":
        n = 0
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(16 << 20):
                n += len(chunk)
    else:
        sys.path.insert(0, str(ROOT))
        from pipeline_lib.sequences.uniref_membership import read_membership

        n = read_membership(path, out).bytes_read
    print(json.dumps({"bytes": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gz-mb", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/membership_bench"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"uniref50_{args.gz_mb}mb.xml.gz"
    if not path.exists():
        t0 = time.perf_counter()
        info = generate(path.with_suffix(".tmp"), args.gz_mb)
        path.with_suffix(".tmp").rename(path)
        print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB gzip, {info}) in "
              f"{time.perf_counter() - t0:.0f} s")
    results = {}
    for kind in ("decompress", "import"):
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(args.dir / "m.parquet")],
                              capture_output=True, text=True, check=True)
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| step | uncompressed | wall s | CPU s | MB/s (uncompressed) | peak RSS MB |\n|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['bytes'] / 1e9:.2f} GB | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['bytes'] / 1e6 / r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    ratio = results["import"]["wall_s"] / results["decompress"]["wall_s"]
    print(f"\nimport / decompression wall time: {ratio:.2f}x (gzip file {path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
