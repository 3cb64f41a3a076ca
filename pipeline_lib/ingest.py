"""Ingest: FASTA files -> ``sequences.parquet`` + ``duplicates.parquet`` + ``quarantine.parquet``.

    stats = ingest_fasta([Path("uniref50.fasta.gz")], out_dir, IngestConfig())

Phase 1 streams records through validation into Parquet row groups (memory flat in input size).
Phase 2 lets DuckDB (out-of-core, memory-capped) find duplicate ids (quarantined) and exact duplicate
sequences (collapsed onto the first occurrence, mapping kept). Counts always reconcile:
``records_in == kept + duplicates + quarantined``.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import IngestConfig
from pipeline_lib.fasta import parse_header, read_fasta
from pipeline_lib.progress import Progress

__all__ = ["IngestStats", "ingest_fasta", "validate_record", "DUCKDB_MEMORY_LIMIT"]

log = logging.getLogger(__name__)

DUCKDB_MEMORY_LIMIT = os.environ.get("PLM_DUCKDB_MEMORY", "512MB")


@dataclass
class IngestStats:
    records_in: int = 0
    kept: int = 0
    duplicates: int = 0
    quarantined: int = 0
    residues_kept: int = 0
    bytes_in: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        if self.records_in != self.kept + self.duplicates + self.quarantined:
            raise AssertionError(f"ingest counts do not reconcile: {asdict(self)}")


def seq_hash(sequence: str) -> str:
    return hashlib.sha256(sequence.encode("ascii")).hexdigest()[:32]


def validate_record(header: str | None, sequence: str, cfg: IngestConfig, allowed: frozenset[str] | re.Pattern[str]):
    """Return ``(row_fields, None)`` for a usable record or ``(None, (reason, detail))``."""
    if header is None:
        return None, ("missing_header", "sequence lines before the first '>' header")
    try:
        h = parse_header(header)
    except ValueError as exc:
        return None, ("malformed_header", str(exc))
    seq = sequence.upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return None, ("empty_sequence", f"{h.id}: no residues")
    invalid = _invalid_pattern(allowed) if not isinstance(allowed, re.Pattern) else allowed
    if invalid.search(seq):
        bad = set(invalid.findall(seq))
        shown = "".join(sorted(repr(c)[1:-1] for c in bad))[:40]
        return None, ("invalid_characters", f"{h.id}: characters not in the alphabet: {shown}")
    if len(seq) < cfg.min_length:
        return None, ("too_short", f"{h.id}: length {len(seq)} < min_length {cfg.min_length}")
    if cfg.max_length is not None and len(seq) > cfg.max_length:
        return None, ("too_long", f"{h.id}: length {len(seq)} > max_length {cfg.max_length}")
    return (h, seq), None


@functools.lru_cache(maxsize=16)
def _invalid_pattern(allowed: frozenset[str]) -> re.Pattern[str]:
    """A regex matching any character outside ``allowed`` (one C-speed scan per sequence)."""
    return re.compile("[^" + "".join(re.escape(c) for c in sorted(allowed)) + "]")


class _Writer:
    """Buffers rows column-wise and writes a row group when ``batch_rows`` is reached."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int) -> None:
        self.schema, self.batch_rows = schema, batch_rows
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.cols: dict[str, list] = {f.name: [] for f in schema}
        self.pending = 0

    def add(self, **row) -> None:
        for name, col in self.cols.items():
            col.append(row.get(name))
        self.pending += 1
        if self.pending >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.table(self.cols, schema=self.schema))
            self.cols = {k: [] for k in self.cols}
            self.pending = 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _parse_files(files: Iterable[Path], raw_path: Path, q_path: Path, cfg: IngestConfig, stats: IngestStats) -> None:
    allowed = _invalid_pattern(frozenset(cfg.alphabet.upper()))
    reasons: Counter[str] = Counter()
    raw = _Writer(raw_path, schemas.SEQUENCES, cfg.batch_rows)
    quarantine = _Writer(q_path, schemas.QUARANTINE, cfg.batch_rows)
    try:
        for path in files:
            size = path.stat().st_size
            stats.bytes_in += size
            with Progress(f"ingest {path.name}", unit="records") as prog:
                for rec in read_fasta(path):
                    stats.records_in += 1
                    prog.update()
                    ok, bad = validate_record(rec.header, rec.sequence, cfg, allowed)
                    if bad is not None:
                        reason, detail = bad
                        reasons[reason] += 1
                        ident = rec.header.split(" ", 1)[0] if rec.header else None
                        quarantine.add(stage="ingest", source_file=str(path), source_record=rec.index, id=ident,
                                       reason=reason, detail=detail, raw=(rec.header or "")[:200])
                        continue
                    h, seq = ok
                    raw.add(id=h.id, accession=h.accession, description=h.description, db=h.db,
                            n_members=h.n_members, tax=h.tax, taxid=h.taxid, rep_id=h.rep_id, gene=h.gene,
                            pe=h.pe, sv=h.sv, sequence=seq, length=len(seq), seq_hash=seq_hash(seq),
                            source_file=str(path), source_record=rec.index)
    finally:
        raw.close()
        quarantine.close()
    stats.quarantine_reasons = dict(reasons)


def _dedupe(raw_path: Path, q_path: Path, files: list[Path], out_dir: Path, tmp_dir: Path,
            stats: IngestStats) -> None:
    """Duplicate ids -> quarantine; duplicate sequences -> duplicates map; the rest -> sequences."""
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'")
        con.execute(f"SET temp_directory='{tmp_dir}'")
        con.execute("SET threads=2")
        # order = position of the file in the input list, then record number: independent of install paths
        con.execute("CREATE TEMP TABLE files (source_file VARCHAR, file_ord INTEGER)")
        con.executemany("INSERT INTO files VALUES (?, ?)", [(str(f), i) for i, f in enumerate(files)])
        con.execute(f"""CREATE TEMP VIEW raw AS SELECT r.*, row_number() OVER (ORDER BY f.file_ord, r.source_record)
            AS ord FROM read_parquet('{raw_path}') r JOIN files f USING (source_file)""")
        # first occurrence of an id wins; later records with the same id are quarantined
        con.execute("""CREATE TEMP TABLE ranked AS SELECT *,
            row_number() OVER (PARTITION BY id ORDER BY ord) AS id_rank FROM raw""")
        con.execute("""CREATE TEMP TABLE uniq_id AS SELECT * EXCLUDE (id_rank),
            first_value(id) OVER (PARTITION BY seq_hash ORDER BY ord) AS kept_id FROM ranked WHERE id_rank = 1""")
        q_cols = ", ".join(f.name for f in schemas.QUARANTINE)
        seq_cols = ", ".join(f.name for f in schemas.SEQUENCES)
        dup_cols = ", ".join(f.name for f in schemas.DUPLICATES)
        con.execute(f"""COPY (
              SELECT {q_cols} FROM read_parquet('{q_path}')
              UNION ALL
              SELECT 'ingest' AS stage, source_file, source_record, id, 'duplicate_id' AS reason,
                     id || ': id already used by an earlier record' AS detail, NULL AS raw
              FROM ranked WHERE id_rank > 1
            ) TO '{out_dir / 'quarantine.parquet'}' (FORMAT parquet, COMPRESSION zstd)""")
        con.execute(f"""COPY (SELECT {seq_cols} FROM uniq_id WHERE id = kept_id ORDER BY ord)
            TO '{out_dir / 'sequences.parquet'}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 65536)""")
        con.execute(f"""COPY (SELECT {dup_cols} FROM uniq_id WHERE id <> kept_id ORDER BY ord)
            TO '{out_dir / 'duplicates.parquet'}' (FORMAT parquet, COMPRESSION zstd)""")
        dup_ids = con.execute("SELECT count(*) FROM ranked WHERE id_rank > 1").fetchone()[0]
        stats.kept, stats.residues_kept = con.execute(
            "SELECT count(*), coalesce(sum(length), 0) FROM uniq_id WHERE id = kept_id").fetchone()
        stats.duplicates = con.execute("SELECT count(*) FROM uniq_id WHERE id <> kept_id").fetchone()[0]
    finally:
        con.close()
    if dup_ids:
        stats.quarantine_reasons["duplicate_id"] = dup_ids
    stats.quarantined = sum(stats.quarantine_reasons.values())


def ingest_fasta(files: list[Path], out_dir: Path, cfg: IngestConfig) -> IngestStats:
    """Ingest ``files`` into ``out_dir`` (sequences / duplicates / quarantine Parquet files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "_work"
    work.mkdir(exist_ok=True)
    stats = IngestStats()
    raw_path, q_path = work / "raw.parquet", work / "quarantine_parse.parquet"
    _parse_files(files, raw_path, q_path, cfg, stats)
    _dedupe(raw_path, q_path, files, out_dir, work, stats)
    for p in work.iterdir():
        p.unlink() if p.is_file() else None
    work.rmdir() if not any(work.iterdir()) else None
    stats.check()
    log.info("ingest: %d records in, %d kept, %d duplicate sequences collapsed, %d quarantined %s",
             stats.records_in, stats.kept, stats.duplicates, stats.quarantined, stats.quarantine_reasons)
    return stats
