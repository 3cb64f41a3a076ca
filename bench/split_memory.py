"""Split stage memory: peak RSS of ``assign_splits`` on generated cluster tables of growing size.

    .venv/bin/python bench/split_memory.py --rows 1000000 4000000 [--workdir /tmp/bench_split]

Each size runs in a fresh process (so peaks do not carry over): a ``clusters.parquet`` of UniRef-like ids
with one representative per three rows on average is written once, then ``assign_splits`` streams it.
Prints a markdown table of rows, wall seconds and peak RSS (``getrusage``, DuckDB included).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline_lib.config import SplitConfig
from pipeline_lib.sequences.split import assign_splits
clusters, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
t = time.perf_counter()
res = assign_splits(clusters, out, SplitConfig(), level="c50", seed=0)
print(json.dumps({"wall_s": time.perf_counter() - t, "sizes": res.sizes, "clusters": res.clusters,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_clusters(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("cluster_c50", pa.string())])) as w:
        for start in range(0, rows, 1 << 20):
            n = min(1 << 20, rows - start)
            idx = np.arange(start, start + n)
            reps = rng.integers(0, rows // 3 + 1, n)
            w.write_table(pa.table({"id": pa.array([f"UniRef50_A0A{i:09d}" for i in idx]),
                                    "cluster_c50": pa.array([f"UniRef50_A0A{r * 3:09d}" for r in reps])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_split"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("| rows | distinct clusters | wall s | peak RSS MiB |\n|---:|---:|---:|---:|")
    for rows in args.rows:
        clusters = args.workdir / f"clusters_{rows}.parquet"
        if not clusters.exists():
            make_clusters(clusters, rows)
        out = subprocess.run([sys.executable, "-c", CHILD, str(clusters), str(args.workdir / f"out_{rows}")],
                             check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        r = json.loads(out.stdout[out.stdout.rindex('{"wall_s"'):])  # after DuckDB's progress bar, if any
        print(f"| {rows:,} | {sum(r['clusters'].values()):,} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
