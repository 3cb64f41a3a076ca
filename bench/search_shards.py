"""Query-sharded MMseqs2 search (pipeline_lib/sequences/search.py) on synthetic families: one search of all queries
against one target database, then the same queries in chunks on a local Dask cluster; the merged hits are
checked to equal the single search's, line for line.

    .venv/bin/python bench/search_shards.py --sequences 100000 --queries 8000 --chunks 4

Queries are a seeded sample of the family set (``pipeline_lib/sequences/families.py``), the target the rest, with the
leakage audit's search options (sensitivity 5.7, coverage 0.5 of the query). Rows: one search on 1 and on 2 mmseqs
threads; ``createindex`` of the target (what the pipeline's target stages do once); the chunks on 2 Dask worker
processes of 1 thread each (mmseqs 1 thread per chunk), reading that index.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline_lib.sequences.audit import search_options  # noqa: E402
from pipeline_lib.sequences.config import AuditConfig  # noqa: E402
from pipeline_lib.sequences.families import FamilySpec, generate_families, load_seeds  # noqa: E402
from pipeline_lib.sequences.search import (  # noqa: E402
    build_target_db,
    chunk_count,
    chunk_rows,
    index_target_db,
    search_chunk,
)
from pipeline_lib.tools.mmseqs import MMseqs  # noqa: E402


def _chunk(seqs: str, rows: np.ndarray, db: str, out: str, tmp: str) -> float:
    t = time.perf_counter()
    search_chunk(Path(seqs), rows, Path(db), Path(out), Path(tmp), MMseqs(threads=1), search_options(AuditConfig()))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=8000)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search_shards_"))
    ids, seqs = [], []
    for fam in generate_families(FamilySpec(n=args.sequences, seed=args.seed), load_seeds()):
        for m in fam.members:
            ids.append(m.id)
            seqs.append(m.sequence)
    table = work / "sequences.parquet"
    pq.write_table(pa.table({"id": ids, "sequence": seqs}), table)
    rng = np.random.default_rng(args.seed)
    queries = np.sort(rng.choice(len(ids), args.queries, replace=False))
    target = np.setdiff1d(np.arange(len(ids)), queries)
    db, n_target = build_target_db(table, target, work / "target", MMseqs(threads=2))
    print(f"{len(ids):,} family sequences: {len(queries):,} queries against {n_target:,} targets", flush=True)
    print("| how | mmseqs threads | wall s | speedup |\n|---|---|---|---|")
    walls = {}
    for threads in (1, 2):
        t = time.perf_counter()
        search_chunk(table, queries, db, work / f"one_{threads}.tsv", work / f"one_{threads}", MMseqs(threads=threads),
                     search_options(AuditConfig()))
        walls[threads] = time.perf_counter() - t
        print(f"| one search | {threads} | {walls[threads]:.1f} | 1.00 |", flush=True)

    t = time.perf_counter()
    index_target_db(db, MMseqs(threads=2), search_options(AuditConfig()))  # as audit_target / decontam_target do
    index_wall = time.perf_counter() - t
    print(f"| createindex of the target (once, as the target stage does) | 2 | {index_wall:.1f} | |", flush=True)

    import distributed

    per_chunk = -(-len(queries) // args.chunks)
    n = chunk_count(len(queries), per_chunk)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, \
            distributed.Client(cluster) as client:
        t = time.perf_counter()
        futures = [client.submit(_chunk, str(table), chunk_rows(queries, per_chunk, i), str(db),
                                 str(work / f"chunk{i}.tsv"), str(work / f"chunk{i}")) for i in range(n)]
        client.gather(futures)
        wall = time.perf_counter() - t
    merged = [line for i in range(n) for line in (work / f"chunk{i}.tsv").read_text().splitlines()]
    same = merged == (work / "one_2.tsv").read_text().splitlines()
    total = wall + index_wall
    print(f"| {n} chunks on 2 Dask workers, indexed target | 1 each | {wall:.1f} (+ {index_wall:.1f} index = "
          f"{total:.1f}) | {walls[1] / total:.2f} vs 1 thread, {walls[2] / total:.2f} vs 2 threads |")
    print(f"merged chunk hits equal the single search's: {same} ({len(merged):,} hits)")
    shutil.rmtree(work)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
