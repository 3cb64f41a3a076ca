"""Ingest, phase 2 (dedupe): duplicate ids and duplicate sequences, found by DuckDB on the narrow columns.

    found = dedupe(raw_path, q_path, out_dir, tmp_dir, batch_rows, parquet_options)

Phase 1 (:mod:`pipeline_lib.sequences.ingest`) wrote every usable record to ``raw_path`` in input order and every
rejected one to ``q_path``. DuckDB (memory-capped, spilling to ``tmp_dir``) reads only row number, id and
seq_hash: one scan finds the ids and sequences seen more than once, usually none, and only those rows are
looked at again. A later record with an id already used is quarantined (``duplicate_id``); a later record
with a sequence already kept goes to ``duplicates.parquet`` with the kept id. The wide rows are rewritten
(streamed, in order) only when something was dropped; otherwise phase 1's files are renamed into place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.io import duckdb_connect, sql_path, sql_str

__all__ = ["dedupe", "Dedupe", "DUCKDB_MEMORY_LIMIT", "spilling_connection"]

DUCKDB_MEMORY_LIMIT = os.environ.get("PLM_DUCKDB_MEMORY", "512MB")


@dataclass(frozen=True)
class Dedupe:
    kept: int                 # rows of sequences.parquet
    duplicate_ids: int        # quarantined as duplicate_id
    duplicates: int           # duplicate sequences, mapped onto the kept id
    residues_dropped: int     # residues of the two above


def _np(a: pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def spilling_connection(tmp_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection capped at ``DUCKDB_MEMORY_LIMIT`` that spills to ``tmp_dir`` (out-of-core work)."""
    con = duckdb_connect()
    con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'")
    con.execute(f"SET temp_directory={sql_str(tmp_dir)}")
    con.execute("SET threads=2")
    con.execute("SET preserve_insertion_order=false")  # cheaper; a query that needs an order has an ORDER BY
    return con


def _write_query(con: duckdb.DuckDBPyConnection, sql: str, path: Path, schema: pa.Schema,
                 prefix: Path | None = None) -> None:
    """Stream a query's rows (after the rows of Parquet file ``prefix``, if given) into ``path`` with ``schema``."""
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        if prefix is not None:
            for batch in pq.ParquetFile(prefix, pre_buffer=False).iter_batches(65536):
                writer.write_batch(batch)
        for batch in con.sql(sql).to_arrow_reader(65536):
            writer.write_table(pa.Table.from_batches([batch]).select(schema.names).cast(schema))


def _drop_rows(con: duckdb.DuckDBPyConnection, raw_path: Path, out: Path, batch_rows: int,
               options: dict[str, Any]) -> None:
    """Copy ``raw_path`` to ``out`` without the rows numbered in table ``dropped`` (both streams in row order)."""
    drops = con.sql("SELECT ord FROM dropped ORDER BY ord").to_arrow_reader(1 << 20)
    pending = np.empty(0, dtype=np.int64)
    offset = 0
    with pq.ParquetWriter(out, schemas.SEQUENCES, **options) as writer:
        for batch in pq.ParquetFile(raw_path, pre_buffer=False).iter_batches(batch_rows):
            end = offset + batch.num_rows
            while (not len(pending) or pending[-1] < end) and drops is not None:
                try:
                    pending = np.concatenate([pending, _np(drops.read_next_batch().column(0)).astype(np.int64)])
                except StopIteration:
                    drops = None
            cut = np.searchsorted(pending, end)
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[pending[:cut] - offset] = False
            pending, offset = pending[cut:], end
            writer.write_table(pa.Table.from_batches([batch.filter(pa.array(keep))], schema=schemas.SEQUENCES))


def _find_duplicates(con: duckdb.DuckDBPyConnection, raw: str) -> tuple[int, int, int]:
    """Fill table ``dropped`` (row number, ``kept_id`` for a duplicate sequence / NULL for a duplicate id, and
    the row's narrow columns); returns (duplicate ids, duplicate sequences, their residues)."""
    # one scan for the ids and the sequences seen more than once (usually none); the rest looks at those only
    con.execute(f"""CREATE TEMP TABLE repeated AS SELECT id, seq_hash FROM (SELECT id, seq_hash FROM {raw})
        GROUP BY GROUPING SETS ((id), (seq_hash)) HAVING count(*) > 1""")
    if con.execute("SELECT count(*) FROM repeated").fetchall()[0][0] == 0:
        con.execute("CREATE TEMP TABLE dropped AS SELECT NULL::BIGINT AS ord, NULL::VARCHAR AS kept_id, NULL::VARCHAR "
                    "AS id, NULL::VARCHAR AS seq_hash, NULL::INTEGER AS length, NULL::VARCHAR AS source_file, "
                    "NULL::BIGINT AS source_record LIMIT 0")
        return 0, 0, 0
    # first occurrence of an id wins; later records with the same id are quarantined
    con.execute(f"""CREATE TEMP TABLE dup_id AS
        WITH r AS (SELECT file_row_number AS ord, id FROM {raw}
                   WHERE id IN (SELECT id FROM repeated WHERE id IS NOT NULL))
        SELECT r.ord FROM r JOIN (SELECT id, min(ord) AS first FROM r GROUP BY id) f USING (id)
        WHERE r.ord > f.first""")
    # among the rest, the first occurrence of a sequence is kept and the later ones map onto it
    con.execute(f"""CREATE TEMP TABLE dup_seq AS
        WITH r AS (SELECT file_row_number AS ord, id, seq_hash FROM {raw}
                   WHERE seq_hash IN (SELECT seq_hash FROM repeated WHERE seq_hash IS NOT NULL)
                     AND file_row_number NOT IN (SELECT ord FROM dup_id)),
          f AS (SELECT seq_hash, min(ord) AS first, arg_min(id, ord) AS kept_id FROM r GROUP BY seq_hash
                HAVING count(*) > 1)
        SELECT r.ord, f.kept_id FROM r JOIN f USING (seq_hash) WHERE r.ord > f.first""")
    con.execute(f"""CREATE TEMP TABLE dropped AS
        SELECT d.ord, d.kept_id, r.id, r.seq_hash, r.length, r.source_file, r.source_record
        FROM (SELECT ord, NULL::VARCHAR AS kept_id FROM dup_id UNION ALL SELECT ord, kept_id FROM dup_seq) d
        JOIN {raw} r ON r.file_row_number = d.ord""")
    return tuple(con.execute("""SELECT count(*) FILTER (WHERE kept_id IS NULL), count(*) FILTER (WHERE kept_id
        IS NOT NULL), coalesce(sum(length), 0) FROM dropped""").fetchall()[0])


def dedupe(raw_path: Path, q_path: Path, out_dir: Path, tmp_dir: Path, batch_rows: int,
           parquet_options: dict[str, Any]) -> Dedupe:
    """Write ``sequences`` / ``duplicates`` / ``quarantine.parquet`` to ``out_dir`` from phase 1's two files."""
    con = spilling_connection(tmp_dir)
    try:
        dup_ids, dups, residues = _find_duplicates(
            con, f"read_parquet({sql_path(raw_path)}, file_row_number=true)")  # file row number = input order
        if dup_ids:
            _write_query(con, """SELECT 'ingest' AS stage, source_file, source_record, id, 'duplicate_id' AS reason,
                id || ': id already used by an earlier record' AS detail, NULL::VARCHAR AS raw
                FROM dropped WHERE kept_id IS NULL ORDER BY ord""", out_dir / "quarantine.parquet",
                         schemas.QUARANTINE, prefix=q_path)
        else:
            os.replace(q_path, out_dir / "quarantine.parquet")
        _write_query(con, "SELECT id, kept_id, seq_hash, source_file, source_record FROM dropped "
                          "WHERE kept_id IS NOT NULL ORDER BY ord", out_dir / "duplicates.parquet", schemas.DUPLICATES)
        if dup_ids + dups:
            _drop_rows(con, raw_path, out_dir / "sequences.parquet", batch_rows, parquet_options)
        else:  # nothing dropped: phase 1's file is the result
            os.replace(raw_path, out_dir / "sequences.parquet")
    finally:
        con.close()
    kept = pq.ParquetFile(out_dir / "sequences.parquet").metadata.num_rows
    return Dedupe(kept, int(dup_ids), int(dups), int(residues))
