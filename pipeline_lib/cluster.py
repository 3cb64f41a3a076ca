"""Multi-level MMseqs2 clustering, like UniRef: cluster at the highest identity, then cluster those
representatives at the next cutoff, and so on.

    result = cluster_sequences(Path("ingest/sequences.parquet"), out_dir, ClusterConfig(), tmp_dir)

Output: ``clusters.parquet`` (``id`` -> ``cluster_<level>`` representative at every level) and
``cluster_sizes.parquet`` (level, representative, number of sequences).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline_lib.config import ClusterConfig
from pipeline_lib.errors import DataValidationError, ToolError
from pipeline_lib.io import duckdb_connect, sql_str
from pipeline_lib.progress import Progress
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["ClusterResult", "cluster_sequences", "write_fasta_from_parquet"]

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    sequences: int
    clusters_per_level: dict[str, int]
    commands: list[list[str]] = field(default_factory=list)
    mmseqs_version: str = ""


def write_fasta_from_parquet(parquet: Path, fasta: Path, keep: np.ndarray | None = None) -> int:
    """Write ``>ordinal`` / sequence records (row number as id: mmseqs rewrites ``sp|ACC|NAME`` ids), in row
    order; with ``keep`` (a boolean mask over the rows) only those rows. Returns the records written."""
    n = written = 0
    pf = pq.ParquetFile(parquet)
    with open(fasta, "w") as fh:
        for batch in pf.iter_batches(columns=["sequence"], batch_size=65536):
            for seq in batch.column("sequence").to_pylist():
                if keep is None or keep[n]:
                    fh.write(f">{n}\n{seq}\n")
                    written += 1
                n += 1
    return written


def _representatives(tsv: Path, n: int) -> np.ndarray:
    """Mask of the rows that represent a cluster in mmseqs' ``<rep>\t<member>`` file (streamed)."""
    mask = np.zeros(n, dtype=bool)
    opts = pacsv.ReadOptions(column_names=["rep", "member"], block_size=64 << 20)
    convert = pacsv.ConvertOptions(column_types={"rep": pa.int64(), "member": pa.int64()}, include_columns=["rep"])
    try:
        with pacsv.open_csv(tsv, read_options=opts, parse_options=pacsv.ParseOptions(delimiter="\t"),
                            convert_options=convert) as reader:
            for batch in reader:
                mask[batch.column(0).to_numpy()] = True
    except (pa.ArrowInvalid, IndexError) as exc:  # not "<rep>\t<member>" ordinals of this input
        first = str(exc).splitlines()[0]
        raise DataValidationError(f"mmseqs cluster table is not two integer columns: {first}", path=str(tsv)) from exc
    return mask


def cluster_sequences(sequences: Path, out_dir: Path, cfg: ClusterConfig, tmp_dir: Path) -> ClusterResult:
    mm = MMseqs(binary=cfg.binary, threads=cfg.threads)
    version = mm.version()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fasta = tmp_dir / "level_input.fasta"
    n = write_fasta_from_parquet(sequences, fasta)
    if n == 0:
        raise DataValidationError("no sequences to cluster", path=str(sequences))
    result = ClusterResult(sequences=n, clusters_per_level={}, mmseqs_version=version)
    tsvs: dict[str, Path] = {}
    # one line (and a Prefect progress bar, through pipeline_lib.progress listeners) per finished level
    with Progress("mmseqs cluster", total=len(cfg.levels), unit="levels", every_s=0) as prog:
        for level in cfg.levels:
            prefix = tmp_dir / f"{level.name}"
            args = mm.easy_cluster(fasta, prefix, tmp_dir / f"{level.name}_tmp", method=level.method,
                                   min_seq_id=level.min_seq_id, coverage=level.coverage, cov_mode=level.cov_mode,
                                   cluster_mode=level.cluster_mode, log_file=tmp_dir / "mmseqs.log")
            result.commands.append(["mmseqs", *args])
            tsvs[level.name] = Path(f"{prefix}_cluster.tsv")
            missing = [p.name for p in (tsvs[level.name], Path(f"{prefix}_rep_seq.fasta")) if not p.is_file()]
            if missing:  # exit code 0 is not enough: a wrapper or a killed child can "succeed" with nothing written
                raise ToolError(f"mmseqs exited 0 but did not write {', '.join(missing)}", argv=[mm.binary, *args])
            shutil.rmtree(tmp_dir / f"{level.name}_tmp", ignore_errors=True)
            # The next level clusters this level's representatives in row order, not in the order of mmseqs'
            # rep_seq.fasta: with several threads that order changes from run to run, and the next level's
            # choice between equally good representatives follows the input order (same input, other clusters).
            if level is not cfg.levels[-1]:
                fasta = tmp_dir / f"{level.name}_next_input.fasta"
                write_fasta_from_parquet(sequences, fasta, keep=_representatives(tsvs[level.name], n))
            prog.update()
    result.clusters_per_level = _write_outputs(sequences, tsvs, out_dir, tmp_dir)
    for level in cfg.levels:
        log.info("cluster %s (min_seq_id %.2f): %d clusters", level.name, level.min_seq_id,
                 result.clusters_per_level[level.name])
    return result


def _write_outputs(sequences: Path, tsvs: dict[str, Path], out_dir: Path, tmp_dir: Path) -> dict[str, int]:
    """Compose the per-level (representative, member) tables into id -> representative at every level.

    Level k clusters the representatives of level k-1, so a sequence's level-k representative is the
    level-k representative of its level-(k-1) representative. DuckDB does the joins out of core.
    """
    from pipeline_lib.ingest import DUCKDB_MEMORY_LIMIT  # shared memory cap for DuckDB work

    names = list(tsvs)
    con = duckdb_connect()
    try:
        con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'; SET temp_directory={sql_str(tmp_dir)}")
        for lv, tsv in tsvs.items():
            try:
                con.execute(f"""CREATE TEMP TABLE l_{lv} AS SELECT * FROM read_csv({sql_str(tsv)}, delim='\t',
                    header=false, columns={{'rep': 'BIGINT', 'member': 'BIGINT'}})""")
            except duckdb.Error as exc:  # mmseqs wrote something, but not "<rep>\t<member>" ordinals
                first = str(exc).splitlines()[0]
                raise DataValidationError(f"mmseqs cluster table is not two integer columns: {first}",
                                          path=str(tsv)) from exc
        select = [f"r_{names[0]}.id AS cluster_{names[0]}"]
        joins = []
        for prev, lv in zip(names, names[1:]):
            joins.append(f"JOIN l_{lv} ON l_{lv}.member = l_{prev}.rep")
            select.append(f"r_{lv}.id AS cluster_{lv}")
        con.execute(f"""CREATE TEMP TABLE seqs AS
            SELECT id, file_row_number AS ord FROM read_parquet({sql_str(sequences)}, file_row_number=true)""")
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
