"""Multi-level MMseqs2 clustering, like UniRef: cluster at the highest identity, then cluster those
representatives at the next cutoff, and so on.

    result = cluster_sequences(Path("ingest/sequences.parquet"), out_dir, ClusterConfig(), tmp_dir)
    # or level by level (the pipeline caches each level on its own):
    cluster_level(seqs, cfg.levels[0], d0, tmp0, mm)                               # d0/members.parquet
    cluster_level(seqs, cfg.levels[1], d1, tmp1, mm, previous=d0 / "members.parquet")
    assemble_clusters(seqs, {"c90": d0 / "members.parquet", "c50": d1 / "members.parquet"}, out_dir, tmp)

Output of a level: ``members.parquet`` (``rep``, ``member``: row ordinals of the sequences table). Of the whole:
``clusters.parquet`` (``id`` -> ``cluster_<level>`` representative at every level) and ``cluster_sizes.parquet``
(level, representative, number of sequences).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError, ToolError
from pipeline_lib.io import duckdb_connect, sql_path, sql_str
from pipeline_lib.progress import Progress
from pipeline_lib.sequences.config import ClusterConfig, ClusterLevel
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["ClusterResult", "LevelResult", "cluster_sequences", "cluster_level", "assemble_clusters",
           "write_fasta_from_parquet"]

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    sequences: int
    clusters_per_level: dict[str, int]
    commands: list[list[str]] = field(default_factory=list)
    mmseqs_version: str = ""


@dataclass
class LevelResult:
    members: int        # sequences this level clustered (the previous level's representatives)
    clusters: int
    command: list[str]
    mmseqs_version: str
    refresh: dict[str, Any] | None = None   # an incremental level: sequences kept / removed / added


def write_fasta_from_parquet(parquet: Path, fasta: Path, keep: np.ndarray | None = None,
                             header: str | None = None) -> int:
    """Write ``>ordinal`` / sequence records (row number as id: mmseqs rewrites ``sp|ACC|NAME`` ids), or the
    ``header`` column's value (one word, e.g. ``seq_hash``) as id, in row order; with ``keep`` (a boolean mask
    over the rows) only those rows. Returns the records written."""
    n = written = 0
    pf = pq.ParquetFile(parquet)
    with open(fasta, "w") as fh:
        for batch in pf.iter_batches(columns=["sequence", *([header] if header else [])], batch_size=65536):
            seqs = batch.column("sequence").to_pylist()
            names = batch.column(header).to_pylist() if header else range(n, n + len(seqs))
            for name, seq in zip(names, seqs, strict=True):
                if keep is None or keep[n]:
                    fh.write(f">{name}\n{seq}\n")
                    written += 1
                n += 1
    return written


def representatives(members: Path, n: int) -> np.ndarray:
    """Mask of the rows that represent a cluster in a level's ``members.parquet`` (streamed)."""
    mask = np.zeros(n, dtype=bool)
    for batch in pq.ParquetFile(members).iter_batches(columns=["rep"], batch_size=1 << 20):
        reps = batch.column(0).to_numpy()
        if len(reps) and (reps.min() < 0 or reps.max() >= n):
            raise DataValidationError(f"representatives outside the {n} sequence rows", path=str(members))
        mask[reps] = True
    return mask


def _tsv_to_parquet(tsv: Path, out: Path) -> int:
    """mmseqs' ``<rep>\t<member>`` ordinals as ``members.parquet``, sorted by member; returns the clusters."""
    con = duckdb_connect()
    try:
        try:
            con.execute(f"""CREATE TEMP TABLE m AS SELECT * FROM read_csv({sql_path(tsv)}, delim='\t',
                header=false, columns={{'rep': 'BIGINT', 'member': 'BIGINT'}})""")
        except duckdb.Error as exc:  # mmseqs wrote something, but not "<rep>\t<member>" ordinals
            first = str(exc).splitlines()[0]
            raise DataValidationError(f"mmseqs cluster table is not two integer columns: {first}",
                                      path=str(tsv)) from exc
        con.execute(f"COPY (SELECT rep, member FROM m ORDER BY member) TO {sql_str(out)} "
                    "(FORMAT parquet, COMPRESSION zstd)")
        return con.execute("SELECT count(DISTINCT rep) FROM m").fetchone()[0]
    finally:
        con.close()


def rows_of(sequences: Path) -> int:
    return pq.ParquetFile(sequences).metadata.num_rows


def cluster_level(sequences: Path, level: ClusterLevel, out_dir: Path, tmp_dir: Path, mm: MMseqs,
                  previous: Path | None = None) -> LevelResult:
    """Cluster the rows of ``sequences`` that represent a cluster in the ``previous`` level's ``members.parquet``
    (every row, for the first level) at ``level``'s identity; write ``out_dir/members.parquet``.

    The input is written in row order, not in the order of mmseqs' rep_seq.fasta: with several threads that
    order changes from run to run, and mmseqs' choice between equally good representatives follows input order.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    n = rows_of(sequences)
    fasta = tmp_dir / "level_input.fasta"
    written = write_fasta_from_parquet(sequences, fasta, keep=representatives(previous, n) if previous else None)
    if written == 0:
        raise DataValidationError("no sequences to cluster", path=str(sequences))
    prefix = tmp_dir / level.name
    args = mm.easy_cluster(fasta, prefix, tmp_dir / f"{level.name}_tmp", method=level.method,
                           min_seq_id=level.min_seq_id, coverage=level.coverage, cov_mode=level.cov_mode,
                           cluster_mode=level.cluster_mode, log_file=tmp_dir / "mmseqs.log")
    tsv = Path(f"{prefix}_cluster.tsv")
    missing = [p.name for p in (tsv, Path(f"{prefix}_rep_seq.fasta")) if not p.is_file()]
    if missing:  # exit code 0 is not enough: a wrapper or a killed child can "succeed" with nothing written
        raise ToolError(f"mmseqs exited 0 but did not write {', '.join(missing)}", argv=[mm.binary, *args])
    shutil.rmtree(tmp_dir / f"{level.name}_tmp", ignore_errors=True)
    clusters = _tsv_to_parquet(tsv, out_dir / "members.parquet")
    log.info("cluster %s (min_seq_id %.2f): %d sequences in %d clusters", level.name, level.min_seq_id, written,
             clusters)
    return LevelResult(written, clusters, ["mmseqs", *args], mm.version())


def cluster_sequences(sequences: Path, out_dir: Path, cfg: ClusterConfig, tmp_dir: Path) -> ClusterResult:
    """Every level of ``cfg`` in turn, then :func:`assemble_clusters` (the levels' files under ``tmp_dir``)."""
    mm = MMseqs(binary=cfg.binary, threads=cfg.threads, mpi_runner=cfg.mpi_runner)
    result = ClusterResult(sequences=rows_of(sequences), clusters_per_level={}, mmseqs_version=mm.version())
    members: dict[str, Path] = {}
    previous = None
    # one line (and a Prefect progress bar, through pipeline_lib.progress listeners) per finished level
    with Progress("mmseqs cluster", total=len(cfg.levels), unit="levels", every_s=0) as prog:
        for level in cfg.levels:
            level_dir = tmp_dir / f"level_{level.name}"
            level_dir.mkdir(parents=True, exist_ok=True)
            mm.split_memory_limit = cfg.limit_of(level)
            res = cluster_level(sequences, level, level_dir, level_dir / "mmseqs", mm, previous=previous)
            result.commands.append(res.command)
            previous = members[level.name] = level_dir / "members.parquet"
            prog.update()
    result.clusters_per_level = assemble_clusters(sequences, members, out_dir, tmp_dir)
    return result


def assemble_clusters(sequences: Path, levels: dict[str, Path], out_dir: Path, tmp_dir: Path) -> dict[str, int]:
    """Compose the levels' ``members.parquet`` (highest identity first) into id -> representative at every
    level (``clusters.parquet``) and ``cluster_sizes.parquet``; returns the clusters per level.

    Level k clusters the representatives of level k-1, so a sequence's level-k representative is the
    level-k representative of its level-(k-1) representative. DuckDB does the joins out of core.
    """
    from pipeline_lib.sequences.ingest import DUCKDB_MEMORY_LIMIT  # shared memory cap for DuckDB work

    names = list(levels)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb_connect()
    try:
        con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'; SET temp_directory={sql_str(tmp_dir)}")
        for lv, members in levels.items():
            con.execute(f"CREATE TEMP TABLE l_{lv} AS SELECT rep, member FROM read_parquet({sql_path(members)})")
        select = [f"r_{names[0]}.id AS cluster_{names[0]}"]
        joins = []
        for prev, lv in zip(names, names[1:], strict=False):
            joins.append(f"JOIN l_{lv} ON l_{lv}.member = l_{prev}.rep")
            select.append(f"r_{lv}.id AS cluster_{lv}")
        con.execute(f"""CREATE TEMP TABLE seqs AS
            SELECT id, file_row_number AS ord FROM read_parquet({sql_path(sequences)}, file_row_number=true)""")
        con.execute(f"""CREATE TEMP TABLE clusters AS
            SELECT s.id, {', '.join(select)} FROM seqs s
            LEFT JOIN l_{names[0]} ON l_{names[0]}.member = s.ord {' '.join('LEFT ' + j for j in joins)}
            {' '.join(f'LEFT JOIN seqs r_{lv} ON r_{lv}.ord = l_{lv}.rep' for lv in names)}
            ORDER BY s.ord""")
        missing = con.execute(f"SELECT id FROM clusters WHERE {' OR '.join(f'cluster_{lv} IS NULL' for lv in names)} "
                              "LIMIT 3").fetchall()
        if missing:
            raise DataValidationError(f"mmseqs output lacks sequences, e.g. {[m[0] for m in missing]}",
                                      path=str(sequences))
        con.execute(f"COPY clusters TO {sql_str(out_dir / 'clusters.parquet')} (FORMAT parquet, COMPRESSION zstd)")
        union = " UNION ALL ".join(
            f"SELECT '{lv}' AS level, cluster_{lv} AS representative, count(*)::BIGINT AS size FROM clusters GROUP BY 2"
            for lv in names)
        con.execute(f"COPY (SELECT * FROM ({union}) ORDER BY level, size DESC, representative) "
                    f"TO {sql_str(out_dir / 'cluster_sizes.parquet')} (FORMAT parquet, COMPRESSION zstd)")
        return {lv: con.execute(f"SELECT count(DISTINCT cluster_{lv}) FROM clusters").fetchone()[0] for lv in names}
    finally:
        con.close()
