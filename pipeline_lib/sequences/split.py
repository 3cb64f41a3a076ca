"""Train/valid/test split by cluster, and optional decontamination against evaluation sets.

    splits = assign_splits(clusters_parquet, out_dir, SplitConfig(), level="c50", seed=0)

A cluster's split is a pure function of the seed and its representative id (a hash mapped to [0, 1)),
so no cluster spans two splits, the split is the same on any machine, and a cluster keeps its split
when a refresh adds other clusters. Both steps stream their Parquet inputs in batches (DuckDB counts the
distinct clusters out of core), so memory stays flat at UniRef scale. Decontamination drops training sequences that an
MMseqs2 search
finds at or above an identity threshold against evaluation FASTA files; they go to quarantine.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.io import sql_path
from pipeline_lib.sequences.cluster import write_fasta_from_parquet
from pipeline_lib.sequences.config import DecontaminateConfig, SplitConfig
from pipeline_lib.sequences.ingest_dedupe import spilling_connection
from pipeline_lib.sequences.search import fasta_target_db, search_chunk
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["SplitResult", "split_of", "assign_splits", "decontaminate", "decontam_masks", "decontam_options",
           "decontam_rows", "write_decontam_targets"]

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
BATCH_ROWS = 1 << 20


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


def _split_column(reps: pa.Array, seed: int, cfg: SplitConfig) -> pa.Array:
    """The split of every row of a batch, hashing each distinct representative once."""
    uniq = pc.unique(reps)
    names = pa.array([split_of(r, seed, cfg.valid_fraction, cfg.test_fraction) for r in uniq.to_pylist()],
                     pa.string())
    return pc.take(names, pc.index_in(reps, value_set=uniq))


def _add_counts(counts: dict[str, int], values: pa.Array) -> None:
    for item in pc.value_counts(values).to_pylist():
        counts[item["values"]] += item["counts"]


def _clusters_per_split(clusters: Path, col: str, seed: int, cfg: SplitConfig, tmp_dir: Path) -> dict[str, int]:
    """Distinct representatives per split, found out of core by DuckDB (tens of millions at UniRef scale)."""
    counts = dict.fromkeys(SPLITS, 0)
    con = spilling_connection(tmp_dir)
    try:
        for batch in con.sql(f"SELECT DISTINCT {col} FROM read_parquet({sql_path(clusters)})").to_arrow_reader(
                BATCH_ROWS):
            _add_counts(counts, _split_column(batch.column(0), seed, cfg))
    finally:
        con.close()
    return counts


def assign_splits(clusters: Path, out_dir: Path, cfg: SplitConfig, *, level: str, seed: int,
                  excluded: set[str] | None = None) -> SplitResult:
    """Write ``splits.parquet`` (id, split) in the row order of ``clusters``; ``excluded`` ids
    (decontaminated) are left out. Streams ``clusters`` in batches: memory does not grow with its size."""
    col = f"cluster_{level}"
    sizes = dict.fromkeys(SPLITS, 0)
    dropped = pa.array(sorted(excluded or ()), pa.string())
    with pq.ParquetWriter(out_dir / "splits.parquet", schemas.SPLITS, compression="zstd") as writer:
        # pre_buffer=False: with it, the reader keeps every row group it has read until the end
        reader = pq.ParquetFile(clusters, pre_buffer=False)
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=["id", col]):
            ids, split = batch.column(0), _split_column(batch.column(1), seed, cfg)
            if len(dropped):
                keep = pc.invert(pc.is_in(ids, value_set=dropped))
                ids, split = ids.filter(keep), split.filter(keep)
            _add_counts(sizes, split)
            writer.write_table(pa.table({"id": ids, "split": split}, schema=schemas.SPLITS))
    per_cluster = _clusters_per_split(clusters, col, seed, cfg, out_dir / "_duckdb_tmp")
    shutil.rmtree(out_dir / "_duckdb_tmp", ignore_errors=True)
    log.info("split by %s: %s sequences, %s clusters", level, sizes, per_cluster)
    return SplitResult(sizes=sizes, clusters=per_cluster)


def _rows_at(path: Path, columns: list[str], rows: list[int]) -> dict[int, tuple]:
    """The values of ``columns`` at the given row numbers of a Parquet file, streamed batch by batch."""
    wanted = pa.array(sorted(set(rows)), pa.int64())
    out: dict[int, tuple] = {}
    offset = 0
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=columns):
        local = pc.subtract(wanted.filter(pc.and_(pc.greater_equal(wanted, offset),
                                                  pc.less(wanted, offset + batch.num_rows))), offset)
        if len(local):
            picked = batch.take(local)
            tuples = zip(*(picked.column(c).to_pylist() for c in columns), strict=True)
            for i, values in zip(local.to_pylist(), tuples, strict=False):
                out[offset + i] = values
        offset += batch.num_rows
    return out


def _train_mask(clusters: Path, level: str, seed: int, split_cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``clusters`` (the sequences' order): is it train, is it valid or test."""
    parts = []
    for batch in pq.ParquetFile(clusters, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS,
                                                                           columns=[f"cluster_{level}"]):
        parts.append(pc.equal(_split_column(batch.column(0), seed, split_cfg), "train").to_numpy(
            zero_copy_only=False))
    train = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return train, ~train


def decontam_masks(clusters: Path, level: str, seed: int, split_cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence row: would it be train, would it be valid or test (what decontamination searches, and against)."""
    return _train_mask(clusters, level, seed, split_cfg)


def write_decontam_targets(sequences: Path, is_held: np.ndarray, cfg: DecontaminateConfig, out: Path) -> int:
    """The search targets: the held-out rows as ``>held:<row>`` (with ``cfg.held_out``), then every record of the
    evaluation FASTA files as ``><file name>:<record>``. Returns the records written."""
    written = 0
    with open(out, "w") as fh:
        if cfg.held_out:  # ">held:<row>": the held-out row, named by its id in the quarantine detail
            held = out.with_name(out.name + ".held")
            written += write_fasta_from_parquet(sequences, held, keep=is_held)
            with open(held) as src:
                for line in src:
                    fh.write(f">held:{line[1:]}" if line.startswith(">") else line)
            held.unlink()
        from pipeline_lib.sequences.fasta import read_fasta  # local import keeps module import light

        for f in cfg.fasta:
            for rec in read_fasta(f):
                fh.write(f">{Path(f).name}:{rec.index}\n{rec.sequence.upper().rstrip('*')}\n")
                written += 1
    return written


def decontam_options(cfg: DecontaminateConfig) -> list[str]:
    return ["--min-seq-id", str(cfg.min_seq_id), "-c", str(cfg.coverage)]


def decontam_rows(sequences: Path, is_train: np.ndarray, hits: Iterable[str],
                  cfg: DecontaminateConfig) -> list[dict]:
    """Quarantine rows for the training rows with a hit at >= ``cfg.min_seq_id`` (the best hit named)."""
    best: dict[int, tuple[float, str]] = {}
    for line in hits:
        q, t, pident = line.split("\t")[:3]
        ident = float(pident) / (100.0 if float(pident) > 1.0 else 1.0)
        qi = int(q)
        cur = best.get(qi, (-1.0, ""))
        # highest identity, then the smallest target name: the same choice whatever order mmseqs lists ties in
        if ident >= cfg.min_seq_id and (ident > cur[0] or (ident == cur[0] and t < cur[1])):
            best[qi] = (ident, t)
    # only the hit rows are looked up (a few, of tens of millions): their id, and the held-out ids they hit
    held = [int(t.removeprefix("held:")) for _, t in best.values() if t.startswith("held:")]
    ids = _rows_at(sequences, ["id"], list(best) + held)

    def target(t: str) -> str:
        return f"held-out sequence {ids[int(t.removeprefix('held:'))][0]}" if t.startswith("held:") \
            else f"evaluation sequence {t}"

    rows = [dict(stage="split", source_file=str(sequences), source_record=qi, id=ids[qi][0], reason="decontaminated",
                 detail=f"{ids[qi][0]}: {ident:.2f} identity to {target(t)}", raw=None)
            for qi, (ident, t) in sorted(best.items()) if is_train[qi]]
    log.info("decontamination: %d training sequences removed", len(rows))
    return rows


def decontaminate(sequences: Path, clusters: Path, cfg: DecontaminateConfig, split_cfg: SplitConfig, *,
                  level: str, seed: int, tmp_dir: Path, threads: int = 1,
                  binary: str | None = None) -> tuple[list[dict], list[str]]:
    """Search would-be training sequences against the evaluation FASTA files, and against this build's own valid
    and test sequences when ``cfg.held_out``, in one search (the pipeline cuts the training rows into chunks that
    run as tasks: ``decontam_target`` / ``decontam_chunk``).

    Returns (quarantine rows for hits at >= ``cfg.min_seq_id``, the mmseqs argv used).
    """
    if not cfg.fasta and not cfg.held_out:
        return [], []
    tmp_dir.mkdir(parents=True, exist_ok=True)
    is_train, is_held = decontam_masks(clusters, level, seed, split_cfg)
    mm = MMseqs(binary=binary, threads=threads)
    write_decontam_targets(sequences, is_held, cfg, tmp_dir / "eval.fasta")
    db = fasta_target_db(tmp_dir / "eval.fasta", tmp_dir / "eval", mm, log_file=tmp_dir / "mmseqs.log")
    hits = tmp_dir / "hits.m8"
    argv = search_chunk(sequences, np.flatnonzero(is_train), db, hits, tmp_dir / "search", mm, decontam_options(cfg))
    with open(hits) as fh:
        return decontam_rows(sequences, is_train, fh, cfg), argv
