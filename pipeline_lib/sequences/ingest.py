"""Ingest: FASTA files -> ``sequences.parquet`` + ``duplicates.parquet`` + ``quarantine.parquet``.

    stats = ingest_fasta([Path("uniref50.fasta.gz")], out_dir, IngestConfig())

Phase 1 (parse) takes the decompressed text a chunk of whole records at a time (~4 MiB) and judges all the
records of a chunk together: one ``bytes.translate`` pass checks the residues of the chunk, RE2 and Arrow
string kernels check and split the headers (:func:`~pipeline_lib.sequences.fasta_headers.parse_headers`); only the
sha256 is per record. A record the fast checks do not pass (bad letters, stray whitespace, odd headers, too
short...) goes through :func:`validate_record`, the definition, so kept rows and quarantine reasons are
exactly its. Chunk k + 1 is checked on a thread while chunk k's rows are made; rows go out as Arrow tables,
a Parquet row group per ``batch_rows`` on a writer thread: memory stays flat in input size.
Phase 2 (:mod:`pipeline_lib.sequences.ingest_dedupe`) finds duplicate ids (quarantined: the first occurrence wins) and
exact duplicate sequences (collapsed onto the first occurrence, mapping kept) with DuckDB on the narrow
columns. Counts always reconcile: ``records_in == kept + duplicates + quarantined``.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.progress import Progress
from pipeline_lib.sequences.config import IngestConfig
from pipeline_lib.sequences.fasta import (
    WHITESPACE,
    RecordLayout,
    decode_header,
    named_record,
    read_chunks,
    record_layout,
)
from pipeline_lib.sequences.fasta_headers import parse_header, parse_headers
from pipeline_lib.sequences.ingest_dedupe import (  # (the cap is re-exported: cluster uses it)
    DUCKDB_MEMORY_LIMIT,
    dedupe,
)
from pipeline_lib.sequences.nucleotide import NUCLEOTIDES, nucleotide_residues

__all__ = ["IngestStats", "ingest_fasta", "source_names", "validate_record", "seq_hash", "DUCKDB_MEMORY_LIMIT"]

log = logging.getLogger(__name__)

_FLUSH_BYTES = 64 << 20  # a row group is written at batch_rows rows or this many bytes, whichever comes first
# Parquet options for the row files: dictionaries only where values repeat, min/max only on short columns
PARQUET_OPTIONS = dict(compression="zstd",
                       use_dictionary=["db", "tax", "n_members", "taxid", "pe", "sv", "source_file"],
                       write_statistics=["id", "n_members", "taxid", "pe", "sv", "length", "source_record"])


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


_NUCLEOTIDE_BYTES = np.zeros(256, dtype=bool)
_NUCLEOTIDE_BYTES[list(NUCLEOTIDES.encode())] = True


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
    if not sequence.isascii():  # str.upper() would fold them into letters: 'ß' -> 'SS', 'ﬀ' -> 'FF'
        return None, ("invalid_characters", f"{h.id}: non-ASCII characters in the sequence: "
                      f"{_non_ascii(sequence)}")
    seq = sequence.upper()  # ASCII only from here: a-z -> A-Z and nothing else
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return None, ("empty_sequence", f"{h.id}: no residues")
    invalid = _invalid_pattern(allowed) if not isinstance(allowed, re.Pattern) else allowed
    if invalid.search(seq):
        bad = set(invalid.findall(seq))
        shown = "".join(sorted(repr(c)[1:-1] for c in bad))[:40]
        return None, ("invalid_characters", f"{h.id}: characters not in the alphabet: {shown}")
    nt = None if cfg.allow_nucleotide else nucleotide_residues(seq, fraction=cfg.nucleotide_fraction,
                                                                 min_length=cfg.nucleotide_min_length)
    if nt is not None:
        return None, ("nucleotide", f"{h.id}: {nt} of {len(seq)} residues are {NUCLEOTIDES}: a DNA/RNA "
                                    "sequence (ingest.allow_nucleotide keeps it)")
    if len(seq) < cfg.min_length:
        return None, ("too_short", f"{h.id}: length {len(seq)} < min_length {cfg.min_length}")
    if cfg.max_length is not None and len(seq) > cfg.max_length:
        return None, ("too_long", f"{h.id}: length {len(seq)} > max_length {cfg.max_length}")
    return (h, seq), None


def _non_ascii(sequence: str) -> str:
    """The non-ASCII characters of a sequence line as the file has them: ``sequence`` holds its bytes one per
    character (latin-1), shown as UTF-8 text when they are valid UTF-8, with their bytes escaped."""
    raw = sequence.encode("latin-1")
    bad = bytes(b for b in raw if b > 127)
    try:
        text = "".join(dict.fromkeys(c for c in raw.decode("utf-8") if not c.isascii()))
    except UnicodeDecodeError:
        text = ""
    escaped = "".join(f"\\x{b:02x}" for b in dict.fromkeys(bad))
    return (f"{text!r} ({escaped})" if text else escaped)[:80]


@functools.lru_cache(maxsize=16)
def _invalid_pattern(allowed: frozenset[str]) -> re.Pattern[str]:
    """A regex matching any character outside ``allowed`` (one C-speed scan per sequence)."""
    return re.compile("[^" + "".join(re.escape(c) for c in sorted(allowed)) + "]")


def _np(a: pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


@dataclass
class _Checked:
    """One chunk after the whole-chunk checks: ``fast`` flags the records that passed them (their header
    ``fields``, upper-cased ``bodies`` and ``length`` are kept, in order); the others need the reference path."""
    layout: RecordLayout
    fast: np.ndarray
    fields: pa.Table
    bodies: pa.Array
    length: np.ndarray


class _Judge:
    """Validates the records of one chunk together; the uncommon ones go through :func:`validate_record`."""

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        allowed = frozenset(cfg.alphabet.upper())
        self.invalid = _invalid_pattern(allowed)
        # letters the fast check accepts: printable ASCII, never whitespace (validate_record would drop it)
        upper = sorted(c for c in allowed if " " < c <= "~")
        lower = sorted(c for c in map(chr, range(ord("a"), ord("z") + 1)) if c.upper() in allowed)
        self.upper_bytes, self.lower_bytes = "".join(upper).encode(), "".join(lower).encode()
        self.seq_any = "^[" + "".join(f"\\x{{{ord(c):02x}}}" for c in upper + lower) + "]*$"

    def check(self, chunk: bytes, first: bool) -> _Checked:
        """The whole-chunk work (Arrow and NumPy kernels, mostly outside the GIL): find and check the records."""
        lay = record_layout(chunk, first=first)
        n, cfg = len(lay), self.cfg
        he, be = lay.head_end, lay.body_end
        text = np.frombuffer(lay.text, dtype=np.uint8)
        star = np.zeros(n, dtype=bool)  # one trailing '*' is dropped, as validate_record does
        nonempty = be > he
        star[nonempty] = text[be[nonempty] - 1] == ord("*")
        length = be - star - he
        fast, bodies = self._letters(lay.slices(he, be - star))
        fast &= length >= cfg.min_length  # >= 1: no empty sequence passes
        if not cfg.allow_nucleotide:  # DNA/RNA-looking records: validate_record quarantines them
            fast &= ~self._nucleotide(bodies, length)
        if cfg.max_length is not None:
            fast &= length <= cfg.max_length
        hidx, fields = parse_headers(lay.slices(lay.head_start, he))
        parsed = np.zeros(n, dtype=bool)
        parsed[hidx] = True
        fast &= parsed
        if not fast.all():
            fields, bodies = fields.filter(pa.array(fast[hidx])), bodies.filter(pa.array(fast))
        return _Checked(lay, fast, fields, bodies, length[fast])

    def rows(self, c: _Checked, source: str, index0: int) -> tuple[pa.Table | None, list[dict[str, Any]]]:
        """Kept rows (:data:`schemas.SEQUENCES`, record order) and quarantine rows of the records of a checked
        chunk, numbered from ``index0``: the fast rows get their hashes, the others go through
        :func:`validate_record`."""
        lay, tables = c.layout, []
        if len(c.bodies):
            tables.append(self._fast_rows(c.fields, c.bodies, c.length, source, index0 + np.flatnonzero(c.fast)))
        slow_rows: list[dict[str, Any]] = []
        quarantine: list[dict[str, Any]] = []
        for i in np.flatnonzero(~c.fast).tolist():
            header = decode_header(lay.text[lay.head_start[i]: lay.head_end[i]])
            sequence = lay.text[lay.head_end[i]: lay.body_end[i]].translate(None, WHITESPACE).decode("latin-1")
            self.judge_one(header, sequence, source, index0 + i, slow_rows, quarantine)
        if slow_rows:
            tables.append(pa.Table.from_pylist(slow_rows, schema=schemas.SEQUENCES))
        if not tables:
            return None, quarantine
        if len(tables) == 1:
            return tables[0], quarantine
        table = pa.concat_tables(tables)  # put the slow path's rows back in record order
        return table.take(pc.sort_indices(table.column("source_record"))), quarantine

    def judge_one(self, header: str | None, sequence: str, source: str, index: int,
                  kept: list[dict[str, Any]], quarantine: list[dict[str, Any]]) -> None:
        """The reference path: :func:`validate_record` on one record; its row goes to ``kept`` or ``quarantine``."""
        ok, bad = validate_record(header, sequence, self.cfg, self.invalid)
        if bad is not None:
            reason, detail = bad
            quarantine.append({"stage": "ingest", "source_file": source, "source_record": index,
                               "id": header.split(" ", 1)[0] if header else None, "reason": reason, "detail": detail,
                               "raw": (header or "")[:200]})
            return
        h, seq = ok
        kept.append({"id": h.id, "accession": h.accession, "description": h.description, "db": h.db,
                     "n_members": h.n_members, "tax": h.tax, "taxid": h.taxid, "rep_id": h.rep_id, "gene": h.gene,
                     "pe": h.pe, "sv": h.sv, "sequence": seq, "length": len(seq), "seq_hash": seq_hash(seq),
                     "source_file": source, "source_record": index})

    def _letters(self, bodies: pa.Array) -> tuple[np.ndarray, pa.Array]:
        """Which bodies are only alphabet letters (either case), and the bodies upper-cased."""
        n = len(bodies)
        offsets = np.frombuffer(bodies.buffers()[1], dtype=np.int32)[bodies.offset: bodies.offset + n + 1]
        data = bodies.buffers()[2]
        raw = data.to_pybytes()[offsets[0]: offsets[-1]] if n and data is not None else b""
        rest = raw.translate(None, self.upper_bytes)  # one C pass over the chunk: usually nothing is left
        if not rest:
            return np.ones(n, dtype=bool), bodies
        if rest.translate(None, self.lower_bytes):  # some other byte: find the rows, one regex per row
            ok = _np(pc.match_substring_regex(bodies, self.seq_any))
        else:
            ok = np.ones(n, dtype=bool)
        # bytes.upper() is ASCII upper-casing: what str.upper() does to the rows that pass
        return ok, pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets - offsets[0]),
                                                          pa.py_buffer(raw.upper())])

    def _nucleotide(self, bodies: pa.Array, length: np.ndarray) -> np.ndarray:
        """Which (upper-cased) bodies may be DNA/RNA by their share of A/C/G/T/U/N (one NumPy pass over the chunk's
        bytes): those go to validate_record, which also asks for three different bases."""
        n = len(bodies)
        offsets = np.frombuffer(bodies.buffers()[1], dtype=np.int32)[bodies.offset: bodies.offset + n + 1]
        data = bodies.buffers()[2]
        if not n or data is None:
            return np.zeros(n, dtype=bool)
        raw = np.frombuffer(data, dtype=np.uint8)
        counts = np.concatenate([[0], np.cumsum(_NUCLEOTIDE_BYTES[raw], dtype=np.int64)])
        nt = counts[offsets[1:]] - counts[offsets[:-1]]
        width = offsets[1:] - offsets[:-1]  # the body, including a '*' that length leaves out
        return (length >= self.cfg.nucleotide_min_length) & (nt >= self.cfg.nucleotide_fraction * width)

    @staticmethod
    def _fast_rows(fields: pa.Table, seqs: pa.Array, length: np.ndarray, source: str, records: np.ndarray) -> pa.Table:
        data = seqs.buffers()[2]
        offsets = np.frombuffer(seqs.buffers()[1], dtype=np.int32)[seqs.offset: seqs.offset + len(seqs) + 1]
        mv, sha, bounds = memoryview(data), hashlib.sha256, offsets.tolist()
        # the one per-row loop
        digests = b"".join([sha(mv[a:b]).digest() for a, b in zip(bounds, bounds[1:], strict=False)])
        hexes = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)[:, :16].tobytes().hex().encode()
        steps = np.arange(0, 32 * len(seqs) + 1, 32, dtype=np.int32)  # seq_hash: first 32 hex digits
        hashes = pa.Array.from_buffers(pa.string(), len(seqs), [None, pa.py_buffer(steps), pa.py_buffer(hexes)])
        cols = [*fields.columns, seqs.view(pa.string()), pa.array(length, pa.int32()), hashes,
                pa.repeat(pa.scalar(source, pa.string()), len(seqs)), pa.array(records, pa.int64())]
        return pa.Table.from_arrays(cols, schema=schemas.SEQUENCES)


class _ParquetSink:
    """Collects Arrow tables; writes a row group per ``batch_rows`` rows (or 64 MiB) on a writer thread."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int, **options: Any) -> None:
        self.schema, self.batch_rows = schema, batch_rows
        self.writer = pq.ParquetWriter(path, schema, **options)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
        self.pending: list[pa.Table] = []
        self.rows = self.bytes = 0
        self.inflight: Future | None = None

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            take = min(table.num_rows, self.batch_rows - self.rows)
            self.pending.append(table.slice(0, take))
            self.rows += take
            self.bytes += table.slice(0, take).nbytes if take < table.num_rows else table.nbytes
            table = table.slice(take)
            if self.rows >= self.batch_rows or self.bytes >= _FLUSH_BYTES:
                self.flush()

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.add(pa.Table.from_pylist(rows, schema=self.schema))

    def flush(self) -> None:
        if self.inflight is not None:
            self.inflight.result()  # at most one row group being written while the next one fills
            self.inflight = None
        if self.rows:
            table = pa.concat_tables(self.pending)
            self.inflight = self.pool.submit(self.writer.write_table, table, row_group_size=table.num_rows)
            self.pending, self.rows, self.bytes = [], 0, 0

    def close(self) -> None:
        try:
            self.flush()
            self.flush()
        finally:
            self.pool.shutdown()
            self.writer.close()


class _Phase1:
    """Parse: every record to ``raw_path`` (usable, :data:`schemas.SEQUENCES`) or ``q_path`` (with its reason)."""

    def __init__(self, raw_path: Path, q_path: Path, cfg: IngestConfig) -> None:
        self.judge = _Judge(cfg)
        self.reasons: Counter[str] = Counter()
        self.raw = _ParquetSink(raw_path, schemas.SEQUENCES, cfg.batch_rows, **PARQUET_OPTIONS)
        self.quarantine = _ParquetSink(q_path, schemas.QUARANTINE, cfg.batch_rows, compression="zstd")
        self.residues = 0

    def file(self, path: Path, source: str) -> int:
        """Ingest one file, recorded as ``source``; returns its number of records."""
        index = 0
        with Progress(f"ingest {path.name}", unit="records") as prog, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-check") as pool:
            checking: deque[Future[_Checked]] = deque()
            chunks = named_record(read_chunks(path), lambda: index)  # a corrupt stream names the record
            for k, chunk in enumerate(chunks):  # chunk k + 1 is checked while chunk k's rows are made
                checking.append(pool.submit(self.judge.check, chunk, k == 0))
                del chunk
                if len(checking) > 1:
                    index = self._emit(checking.popleft().result(), source, index, prog)
            while checking:
                index = self._emit(checking.popleft().result(), source, index, prog)
        return index

    def _emit(self, checked: _Checked, source: str, index: int, prog: Progress) -> int:
        q_rows: list[dict[str, Any]] = []
        preamble = checked.layout.preamble.translate(None, WHITESPACE)
        if preamble:  # text before the first header: a record without a header
            self.judge.judge_one(None, preamble.decode("latin-1"), source, index, [], q_rows)
            index += 1
        kept, more = self.judge.rows(checked, source, index)
        if kept is not None:
            self.raw.add(kept)
            self.residues += int(pc.sum(kept.column("length")).as_py() or 0)
        q_rows += more
        self.reasons.update(r["reason"] for r in q_rows)
        self.quarantine.add_rows(q_rows)
        prog.update(len(checked.layout))
        return index + len(checked.layout)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            self.quarantine.close()


def source_names(files: list[Path]) -> list[str]:
    """What ``source_file`` records: each file's name, or, when two names are the same, its path relative to
    the files' common directory. Not the absolute path: the same input under another workdir or on another
    machine must give the same bytes, hence the same cache keys (lineage keeps the inputs' full paths)."""
    names = [Path(f).name for f in files]
    if len(set(names)) == len(names):
        return names
    absolute = [os.path.abspath(f) for f in files]
    root = os.path.commonpath(absolute)
    return [os.path.relpath(f, root) for f in absolute]


def _parse_files(files: list[Path], raw_path: Path, q_path: Path, cfg: IngestConfig, stats: IngestStats) -> int:
    """Phase 1 over all files; returns the residues kept."""
    phase = _Phase1(raw_path, q_path, cfg)
    try:
        for path, name in zip(files, source_names(files), strict=False):
            stats.bytes_in += path.stat().st_size
            stats.records_in += phase.file(path, name)
    finally:
        phase.close()
    stats.quarantine_reasons = dict(phase.reasons)
    return phase.residues


def ingest_fasta(files: list[Path], out_dir: Path, cfg: IngestConfig) -> IngestStats:
    """Ingest ``files`` into ``out_dir`` (sequences / duplicates / quarantine Parquet files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "_work"
    work.mkdir(exist_ok=True)
    stats = IngestStats()
    raw_path, q_path = work / "raw.parquet", work / "quarantine_parse.parquet"
    residues = _parse_files(files, raw_path, q_path, cfg, stats)
    pa.default_memory_pool().release_unused()  # phase 1's buffers go back to the OS before DuckDB takes its share
    found = dedupe(raw_path, q_path, out_dir, work, cfg.batch_rows, PARQUET_OPTIONS)
    stats.kept, stats.duplicates, stats.residues_kept = found.kept, found.duplicates, residues - found.residues_dropped
    if found.duplicate_ids:
        stats.quarantine_reasons["duplicate_id"] = found.duplicate_ids
    stats.quarantined = sum(stats.quarantine_reasons.values())
    for p in work.iterdir():
        p.unlink() if p.is_file() else None
    work.rmdir() if not any(work.iterdir()) else None
    stats.check()
    log.info("ingest: %d records in, %d kept, %d duplicate sequences collapsed, %d quarantined %s",
             stats.records_in, stats.kept, stats.duplicates, stats.quarantined, stats.quarantine_reasons)
    return stats
