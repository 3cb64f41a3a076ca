"""Incremental refresh vs clustering from scratch: wall and CPU time of the two cluster levels (c90 and c50,
linclust both unless ``--methods`` says otherwise) for release B, computed from release A with ``mmseqs
clusterupdate`` (``cluster.incremental: true``) or from nothing (the default path, ``easy-linclust``).

    .venv/bin/python bench/cluster_refresh.py --sequences 1000000 --work /tmp/refresh_bench

Release A is a synthetic family set (``pipeline_lib/sequences/families.py``, deterministic by ``--seed``: real seed
proteins grown along random trees with BLOSUM62 substitutions and indels). Release B = A minus ``--removed`` (0.5 %)
of its sequences, plus ``--added`` (1 %) new ones: half new members of A's families (grown with them, held back
from A), half new families. Both releases go through the real ingest; the timings
cover only the cluster levels (what ``cluster.incremental`` changes), each measured as this process's and its
children's CPU (``getrusage``) and wall clock. Read the ratio first; absolute times are for 2 cores.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.config import ClusterLevel, IngestConfig  # noqa: E402
from pipeline_lib.sequences.cluster import cluster_level  # noqa: E402
from pipeline_lib.sequences.cluster_update import agreement, cluster_level_incremental  # noqa: E402
from pipeline_lib.sequences.families import FamilySpec, generate_families, load_seeds  # noqa: E402
from pipeline_lib.sequences.ingest import ingest_fasta  # noqa: E402
from pipeline_lib.tools.mmseqs import MMseqs  # noqa: E402

LEVELS: list[ClusterLevel] = []   # set from --methods


def generate(n: int, seed: int, prefix: str) -> list[tuple[str, bytes]]:
    """``n`` family sequences (pipeline_lib/sequences/families.py), ids prefixed so two sets never collide."""
    return [(f"{prefix}{m.id}", m.sequence.encode()) for fam in generate_families(FamilySpec(n=n, seed=seed),
                                                                                   load_seeds()) for m in fam.members]


def write_fasta(path: Path, records: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as fh:
        for name, seq in records:
            fh.write(b">" + name.encode() + b"\n" + seq + b"\n")


class Meter:
    """Wall and CPU seconds (this process and its finished children) of a block."""

    def __enter__(self) -> Meter:
        self.t, self.c = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t, self._cpu() - self.c

    @staticmethod
    def _cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def levels(seqs: Path, root: Path, mm: MMseqs, *, incremental: bool, old: Path | None = None) -> dict[str, Meter]:
    from pipeline_lib.sequences.cluster import assemble_clusters

    members: dict[str, Path] = {}
    prev, meters = None, {}
    for lv in LEVELS:
        out = root / lv.name
        out.mkdir(parents=True)
        with Meter() as m:
            if incremental:
                res = cluster_level_incremental(seqs, lv, out, out / "_mm", mm, previous=prev,
                                                old_level=old / lv.name if old else None)
            else:
                res = cluster_level(seqs, lv, out, out / "_mm", mm, previous=prev)
            shutil.rmtree(out / "_mm", ignore_errors=True)
        meters[lv.name] = m
        print(f"  {root.name} {lv.name}: {res.members:,} in, {res.clusters:,} clusters, {m.wall:.1f} s wall, "
              f"{m.cpu:.1f} s CPU" + (f", refresh {res.refresh}" if res.refresh else ""), flush=True)
        prev = members[lv.name] = out / "members.parquet"
    assemble_clusters(seqs, members, root, root / "_duckdb")
    return meters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=1_000_000)
    ap.add_argument("--removed", type=float, default=0.005)
    ap.add_argument("--added", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--methods", default="linclust,linclust",
                    help="the mmseqs method of c90 and c50 (configs/demo.yaml: linclust,cluster)")
    ap.add_argument("--skip-default-a", action="store_true",
                    help="skip timing release A on the default path (a comparison with the kept-databases path)")
    args = ap.parse_args()
    m90, m50 = args.methods.split(",")
    LEVELS[:] = [ClusterLevel(name="c90", min_seq_id=0.9, method=m90),
                 ClusterLevel(name="c50", min_seq_id=0.5, method=m50)]
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    n_removed, n_added = int(args.sequences * args.removed), int(args.sequences * args.added)
    # the new release's additions: half are new members of existing families (held back from A), half new families
    grown = generate(args.sequences + n_added // 2, args.seed, "")
    late = set(rng.choice(len(grown), n_added // 2, replace=False).tolist())
    a = [r for i, r in enumerate(grown) if i not in late]
    drop = set(rng.choice(len(a), n_removed, replace=False).tolist())
    b = [r for i, r in enumerate(a) if i not in drop] + [grown[i] for i in sorted(late)] + \
        generate(n_added - len(late), args.seed + 1, "N")
    for name, recs in (("a", a), ("b", b)):
        write_fasta(work / f"{name}.fasta", recs)
        ingest_fasta([work / f"{name}.fasta"], work / f"ingest_{name}", IngestConfig(min_length=11))
    del a, b, grown
    mm = MMseqs(threads=args.threads)
    seqs_a, seqs_b = work / "ingest_a" / "sequences.parquet", work / "ingest_b" / "sequences.parquet"
    print(f"release A: {args.sequences:,} sequences; B: -{n_removed:,} +{n_added:,}; levels {args.methods}; "
          f"mmseqs {mm.version()}, {args.threads} threads", flush=True)
    plain_a = None if args.skip_default_a else levels(seqs_a, work / "A_plain", mm, incremental=False)
    kept_a = levels(seqs_a, work / "A", mm, incremental=True)
    scratch = levels(seqs_b, work / "B_scratch", mm, incremental=False)
    update = levels(seqs_b, work / "B_incremental", mm, incremental=True, old=work / "A")
    agree = {lv.name: agreement(work / "B_scratch" / "clusters.parquet", work / "B_incremental" / "clusters.parquet",
                                f"cluster_{lv.name}") for lv in LEVELS}

    def total(ms: dict[str, Meter], what: str) -> float:
        return sum(getattr(m, what) for m in ms.values())

    print("\n| run | c90 wall s | c50 wall s | wall s | CPU s | vs scratch (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    table = [("A, default (easy-*)", plain_a), ("A, incremental on (first release: databases kept)", kept_a),
             ("B from scratch (easy-*)", scratch), ("B incremental (clusterupdate from A)", update)]
    for label, ms in ((label, ms) for label, ms in table if ms is not None):
        print(f"| {label} | {ms['c90'].wall:.1f} | {ms['c50'].wall:.1f} | {total(ms, 'wall'):.1f} | "
              f"{total(ms, 'cpu'):.1f} | {total(ms, 'cpu') / total(scratch, 'cpu'):.0%} |")
    print("\nagreement of B incremental with B from scratch:", json.dumps(agree))


if __name__ == "__main__":
    main()
