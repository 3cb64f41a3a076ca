"""Train/valid/test split by cluster, and optional decontamination against evaluation sets.

    splits = assign_splits(clusters_parquet, out_dir, SplitConfig(), level="c50", seed=0)

A cluster's split is a pure function of the seed and its representative id (a hash mapped to [0, 1)),
so no cluster spans two splits, the split is the same on any machine, and a cluster keeps its split
when a refresh adds other clusters. Decontamination drops training sequences that an MMseqs2 search
finds at or above an identity threshold against evaluation FASTA files; they go to quarantine.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.cluster import write_fasta_from_parquet
from pipeline_lib.config import DecontaminateConfig, SplitConfig
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["SplitResult", "split_of", "assign_splits", "decontaminate"]

log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    sizes: dict[str, int]
    clusters: dict[str, int]
    decontaminated: int = 0
    commands: list[list[str]] = field(default_factory=list)


def split_of(representative: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{representative}".encode()).digest()[:8], "big") / 2**64
    if u < valid_fraction:
        return "valid"
    if u < valid_fraction + test_fraction:
        return "test"
    return "train"


def assign_splits(clusters: Path, out_dir: Path, cfg: SplitConfig, *, level: str, seed: int,
                  excluded: set[str] | None = None) -> SplitResult:
    """Write ``splits.parquet`` (id, split); ``excluded`` ids (decontaminated) are left out."""
    col = f"cluster_{level}"
    table = pq.read_table(clusters, columns=["id", col])
    reps = table.column(col).to_pylist()
    memo: dict[str, str] = {}
    split = [memo.setdefault(r, split_of(r, seed, cfg.valid_fraction, cfg.test_fraction)) for r in reps]
    ids = table.column("id").to_pylist()
    if excluded:
        keep = [i not in excluded for i in ids]
        ids = [i for i, k in zip(ids, keep) if k]
        split = [s for s, k in zip(split, keep) if k]
    pq.write_table(pa.table({"id": ids, "split": split}, schema=schemas.SPLITS), out_dir / "splits.parquet",
                   compression="zstd")
    sizes = {s: split.count(s) for s in ("train", "valid", "test")}
    per_cluster = {s: sum(1 for v in memo.values() if v == s) for s in ("train", "valid", "test")}
    log.info("split by %s: %s sequences, %s clusters", level, sizes, per_cluster)
    return SplitResult(sizes=sizes, clusters=per_cluster)


def decontaminate(sequences: Path, clusters: Path, cfg: DecontaminateConfig, split_cfg: SplitConfig, *,
                  level: str, seed: int, tmp_dir: Path, threads: int = 1,
                  binary: str | None = None) -> tuple[list[dict], list[str]]:
    """Search would-be training sequences against the evaluation FASTA files.

    Returns (quarantine rows for hits at >= ``cfg.min_seq_id``, the mmseqs argv used).
    """
    if not cfg.fasta:
        return [], []
    tmp_dir.mkdir(parents=True, exist_ok=True)
    query = tmp_dir / "train.fasta"
    write_fasta_from_parquet(sequences, query)
    ids = pq.read_table(sequences, columns=["id"]).column("id").to_pylist()
    reps = pq.read_table(clusters, columns=[f"cluster_{level}"]).column(0).to_pylist()
    is_train = [split_of(r, seed, split_cfg.valid_fraction, split_cfg.test_fraction) == "train" for r in reps]
    targets = tmp_dir / "eval.fasta"
    with open(targets, "w") as out:
        for f in cfg.fasta:
            from pipeline_lib.fasta import read_fasta  # local import keeps module import light

            for rec in read_fasta(f):
                out.write(f">{Path(f).name}:{rec.index}\n{rec.sequence.upper().rstrip('*')}\n")
    mm = MMseqs(binary=binary, threads=threads)
    hits = tmp_dir / "hits.m8"
    args = ["easy-search", str(query), str(targets), str(hits), str(tmp_dir / "search_tmp"),
            "--min-seq-id", str(cfg.min_seq_id), "-c", str(cfg.coverage), "--threads", str(threads), "-v", "1"]
    mm.run(*args, log_file=tmp_dir / "mmseqs.log")
    best: dict[int, tuple[float, str]] = {}
    with open(hits) as fh:
        for line in fh:
            q, t, pident = line.split("\t")[:3]
            ident = float(pident) / (100.0 if float(pident) > 1.0 else 1.0)
            qi = int(q)
            if ident >= cfg.min_seq_id and is_train[qi] and ident > best.get(qi, (-1.0, ""))[0]:
                best[qi] = (ident, t)
    rows = [dict(stage="split", source_file=str(sequences), source_record=qi, id=ids[qi], reason="decontaminated",
                 detail=f"{ids[qi]}: {ident:.2f} identity to evaluation sequence {t}", raw=None)
            for qi, (ident, t) in sorted(best.items())]
    log.info("decontamination: %d training sequences removed", len(rows))
    return rows, ["mmseqs", *args]
