"""Tokenized, sharded Parquet datasets with a manifest.

    manifest = write_sequence_shards(sequences, clusters, splits, out_dir, levels=["c90", "c50"], cfg=ShardsConfig())

Layout: ``<out>/<split>/part-00000.parquet`` (zstd, row groups of ``row_group_rows`` for streaming) and
``<out>/manifest.json`` with the schema version, the vocabulary, rows / tokens / sha256 per file. The
files read with plain pyarrow, DuckDB, polars and Hugging Face ``datasets``. Rows keep the order of
``sequences.parquet`` (ingest order), so the output is deterministic without sorting the wide rows.

One pass: DuckDB joins the narrow columns (row number, id -> clusters, split; memory-capped, spilling) and
returns them in row order; the sequences stream beside them, are tokenized (``bytes.translate`` over a whole
batch) and routed to their split's current shard. Each shard file is encoded and hashed on its own thread, so
the Parquet encoding of consecutive shards (the dominant cost) runs on both cores; a byte budget bounds what
waits in memory. Tokens are one byte each in a ``binary`` column (see :mod:`pipeline_lib.schemas`), not
dictionary-encoded: every row is distinct, so a dictionary is built only to be thrown away. On any error every
thread is stopped and joined, and no partial file is left under a final name.
"""
from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import ShardsConfig
from pipeline_lib.errors import DataValidationError
from pipeline_lib.ingest_dedupe import DUCKDB_MEMORY_LIMIT
from pipeline_lib.io import atomic_path, sha256_file, write_json_atomic
from pipeline_lib.tokenizer import ESM_ALPHABET, Alphabet

__all__ = ["tokenize_array", "tokenize_binary", "write_sequence_shards", "read_manifest", "verify_manifest", "SPLITS"]

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
_BATCH_ROWS = 8192            # sequences tokenized at a time
_QUEUED_BYTES = 128 << 20     # Arrow data handed to shard threads but not yet encoded, at most


def tokenize_binary(seqs: pa.Array | pa.ChunkedArray, alphabet: Alphabet = ESM_ALPHABET) -> pa.BinaryArray:
    """Encode a string array as ``<cls> residues <eos>``, one byte per token id (the shards' ``tokens``)."""
    if alphabet.dtype != np.uint8:
        raise ValueError(f"{alphabet.name} has {len(alphabet)} tokens: more than one byte each (use tokenize_array)")
    raw, offsets = _string_buffers(seqs)
    n = len(offsets) - 1
    # bytes.translate maps residues to ids (never <cls>/<eos>: those are not single letters); a join adds them
    ids = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                 pa.py_buffer(raw.translate(_lookup_bytes(alphabet)))])
    cls, eos = pa.scalar(bytes([alphabet.cls_idx])), pa.scalar(bytes([alphabet.eos_idx]))
    return pc.binary_join_element_wise(cls, ids, eos, pa.scalar(b""))


def tokenize_array(seqs: pa.Array | pa.ChunkedArray, alphabet: Alphabet = ESM_ALPHABET) -> pa.ListArray:
    """Encode a string array as ``<cls> residues <eos>`` token lists in one vectorized pass."""
    if alphabet.dtype != np.uint8:
        raw, offsets = _string_buffers(seqs)
        return _tokenize_numpy(np.frombuffer(raw, dtype=np.uint8), offsets, alphabet)
    framed = tokenize_binary(seqs, alphabet)
    if not len(framed):
        return pa.array([], pa.list_(pa.uint8()))
    offsets = np.frombuffer(framed.buffers()[1], dtype=np.int32)[framed.offset: framed.offset + len(framed) + 1]
    values = pa.Array.from_buffers(pa.uint8(), int(offsets[-1]), [None, framed.buffers()[2]])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _string_buffers(seqs: pa.Array | pa.ChunkedArray) -> tuple[bytes, np.ndarray]:
    """The UTF-8 bytes of a string array and its row offsets (from 0)."""
    if isinstance(seqs, pa.ChunkedArray):
        seqs = seqs.combine_chunks()
    if seqs.null_count:
        raise DataValidationError("null sequence in tokenizer input")
    if pa.types.is_large_string(seqs.type) or pa.types.is_large_binary(seqs.type):
        seqs = seqs.cast(pa.string())
    n = len(seqs)
    offsets = np.frombuffer(seqs.buffers()[1], dtype=np.int32)[seqs.offset: seqs.offset + n + 1]
    data = seqs.buffers()[2]
    raw = data.to_pybytes()[offsets[0]: offsets[-1]] if n and data is not None else b""
    return raw, offsets - offsets[0]


def _lookup_bytes(alphabet: Alphabet) -> bytes:
    return bytes(alphabet._lut.astype(np.uint8))


def _tokenize_numpy(data: np.ndarray, rel: np.ndarray, alphabet: Alphabet) -> pa.ListArray:
    """Vocabularies of more than 256 tokens: NumPy lookup, then ``<cls>``/``<eos>`` around each row."""
    n = len(rel) - 1
    new_offsets = rel.astype(np.int64) + 2 * np.arange(n + 1, dtype=np.int64)
    out = np.empty(len(data) + 2 * n, dtype=alphabet.dtype)
    special = np.zeros(len(out), dtype=bool)
    special[new_offsets[:-1]] = True
    special[new_offsets[1:] - 1] = True
    out[~special] = alphabet._lut.astype(alphabet.dtype)[data]
    out[new_offsets[:-1]] = alphabet.cls_idx
    out[new_offsets[1:] - 1] = alphabet.eos_idx
    values = pa.array(out, type=pa.from_numpy_dtype(alphabet.dtype))
    return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32), type=pa.int32()), values)


def _np(a: pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _sql_str(value: object) -> str:
    """A path as a DuckDB string literal (quotes doubled: ``o'brien`` is a valid directory name)."""
    return "'" + str(value).replace("'", "''") + "'"


class _Budget:
    """Bytes queued for the shard threads; ``take`` waits while over the limit (memory stays bounded)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.cond = limit, 0, threading.Condition()

    def take(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    def give(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


class _Abort(Exception):
    """Sent to a shard thread when the run failed: its temporary file is removed, never renamed."""


class _ShardFile(threading.Thread):
    """Writes one ``part-NNNNN.parquet`` (atomically) from a queue of tables, then hashes it."""

    def __init__(self, final: Path, schema: pa.Schema, cfg: ShardsConfig, budget: _Budget) -> None:
        super().__init__(name=f"shard {final.parent.name}/{final.name}", daemon=True)
        self.final, self.schema, self.cfg, self.budget = final, schema, cfg, budget
        self.queue: queue.Queue[pa.Table | _Abort | None] = queue.Queue()
        self.rows = self.tokens = 0
        self.error: BaseException | None = None
        self.info: dict[str, Any] = {}
        self.start()

    def put(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self.rows += table.num_rows
        self.tokens += int(pc.sum(table.column("length")).as_py() or 0) + 2 * table.num_rows
        self.budget.take(table.nbytes)
        self.queue.put(table)

    def end(self) -> None:
        """No more rows: the thread closes the file (and renames it) once the queue is written."""
        self.queue.put(None)

    def abort(self) -> None:
        """Stop without a result: the temporary file is deleted. Returns once the thread is gone."""
        self.queue.put(_Abort())
        self.join()

    def finish(self) -> dict[str, Any]:
        """Wait for the file (after :meth:`end`); returns its manifest entry."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.info

    def run(self) -> None:
        try:
            with atomic_path(self.final) as tmp:
                dictionary = [f.name for f in self.schema if f.name != "tokens"]
                with pq.ParquetWriter(tmp, self.schema, compression="zstd", use_dictionary=dictionary,
                                      compression_level=self.cfg.compression_level) as writer:
                    while (table := self.queue.get()) is not None:
                        if isinstance(table, _Abort):
                            raise table
                        writer.write_table(table, row_group_size=self.cfg.row_group_rows)
                        self.budget.give(table.nbytes)
            self.info = {"path": f"{self.final.parent.name}/{self.final.name}", "rows": self.rows,
                         "tokens": self.tokens, "bytes": self.final.stat().st_size, "sha256": sha256_file(self.final)}
        except BaseException as exc:  # reported to the producer by put() / finish()
            self.error = exc
            while not isinstance(exc, _Abort) and (table := self.queue.get()) is not None:
                if isinstance(table, _Abort):
                    break
                self.budget.give(table.nbytes)  # the producer may still be putting: never leave it blocked


class _SplitWriter:
    """Rolls the shard files of one split: ``rows_per_shard`` rows each, whole row groups of ``row_group_rows``."""

    def __init__(self, split_dir: Path, schema: pa.Schema, cfg: ShardsConfig, budget: _Budget) -> None:
        self.dir, self.schema, self.cfg, self.budget = split_dir, schema, cfg, budget
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: list[_ShardFile] = []
        self.current: _ShardFile | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        """Hand whole row groups (all that is left when ``final``) to the current shard's thread."""
        cfg = self.cfg
        while self.pending_rows and (final or self.pending_rows >= cfg.row_group_rows):
            if self.current is None:
                if len(self.done) >= 2:
                    self.done[-2].join()  # two files of a split encode at once (2 cores), not more
                name = self.dir / f"part-{len(self.done):05d}.parquet"
                self.current = _ShardFile(name, self.schema, cfg, self.budget)
            room = cfg.rows_per_shard - self.current.rows
            whole_groups = self.pending_rows // cfg.row_group_rows * cfg.row_group_rows
            take = min(room, self.pending_rows if final else whole_groups)
            table = pa.concat_tables(self.pending)
            self.current.put(table.slice(0, take))
            rest = table.slice(take)
            self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
            if self.current.rows >= cfg.rows_per_shard:
                self.current.end()
                self.done.append(self.current)
                self.current = None

    def abort(self) -> None:
        """After a failure: stop every thread of this split (the file being written is not kept)."""
        if self.current is not None:
            self.current.abort()
            self.current = None
        for f in self.done:
            f.join()

    def close(self) -> list[dict[str, Any]]:
        self._drain(final=True)
        if self.current is not None:
            self.current.end()
            self.done.append(self.current)
            self.current = None
        return [f.finish() for f in self.done]


def _plan(sequences: Path, clusters: Path, splits: Path, levels: list[str], work: Path) -> Path:
    """Parquet file of (row number in ``sequences``, split, cluster columns) of every joined row, in row order.

    DuckDB (memory-capped, spilling to ``work``) joins and sorts only these narrow columns, and is closed
    before the wide rows stream: its memory and the shard writers' are never needed at the same time."""
    cl = ", ".join(f"c.cluster_{lv}" for lv in levels)
    names = ", ".join(f"'{s}'" for s in SPLITS)
    path = work / "plan.parquet"
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'; SET threads=2; SET temp_directory={_sql_str(work)}")
        con.execute("SET preserve_insertion_order=true")  # the file keeps the ORDER BY
        con.execute(f"""COPY (
            SELECT s.ord, p.split, {cl}
            FROM (SELECT id, file_row_number AS ord FROM read_parquet({_sql_str(sequences)}, file_row_number=true)) s
            JOIN read_parquet({_sql_str(clusters)}) c USING (id)
            JOIN read_parquet({_sql_str(splits)}) p USING (id)
            WHERE p.split IN ({names}) ORDER BY s.ord
            ) TO {_sql_str(path)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 65536)""")
    finally:
        con.close()
    return path


def _joined(sequences: Path, plan: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """Zip the sequences (streamed in row order) with their plan rows: (sequence rows, plan rows), row for row."""
    plan_rows: list[pa.RecordBatch] = []
    plan_ord = np.empty(0, dtype=np.int64)
    exhausted = False
    offset = 0
    # pre_buffer=False: with it, the reader keeps every row group it has read until the end (memory grows)
    reader = pq.ParquetFile(sequences, pre_buffer=False)
    for batch in reader.iter_batches(_BATCH_ROWS, columns=["id", "seq_hash", "length", "sequence"]):
        end = offset + batch.num_rows
        while not exhausted and (not len(plan_ord) or plan_ord[-1] < end):
            nxt = next(plan, None)
            if nxt is None:
                exhausted = True
            else:
                ords = nxt.column(0).to_numpy().astype(np.int64)
                if np.any(np.diff(ords) < 0) or (len(plan_ord) and len(ords) and ords[0] < plan_ord[-1]):
                    raise RuntimeError("shard plan is not in row order")  # never expected: the merge needs it
                plan_rows.append(nxt)
                plan_ord = np.concatenate([plan_ord, ords])
        cut = int(np.searchsorted(plan_ord, end))
        if cut:
            here = plan_rows[0] if len(plan_rows) == 1 else \
                pa.Table.from_batches(plan_rows).combine_chunks().to_batches()[0]
            rows = plan_ord[:cut] - offset
            same = cut == batch.num_rows and np.array_equal(rows, np.arange(cut))  # the usual case: every row
            yield (batch if same else batch.take(pa.array(rows))), here.slice(0, cut)
            rest = here.slice(cut)
            plan_rows, plan_ord = ([rest] if rest.num_rows else []), plan_ord[cut:]
        offset = end


def write_sequence_shards(sequences: Path, clusters: Path, splits: Path, out_dir: Path, *, levels: list[str],
                          cfg: ShardsConfig, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the shards of every split and ``manifest.json``; returns the manifest."""
    schema = schemas.sequence_shard_schema(levels)
    manifest: dict[str, Any] = {
        "schema_version": schemas.SCHEMA_VERSION, "kind": "sequence",
        "vocabulary": {"name": ESM_ALPHABET.name, "tokens": list(ESM_ALPHABET.tokens)},
        "tokens_include_special": True, "cluster_levels": levels, "columns": schema.names,
        "splits": {}, "provenance": provenance or {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = _Budget(_QUEUED_BYTES)
    writers = {split: _SplitWriter(out_dir / split, schema, cfg, budget) for split in SPLITS}
    work = tempfile.TemporaryDirectory(prefix=".plan.tmp-", dir=out_dir)  # (".tmp-": clean_temporaries)
    try:
        plan = pq.ParquetFile(_plan(sequences, clusters, splits, levels, Path(work.name)), pre_buffer=False)
        for seqs, rows in _joined(sequences, plan.iter_batches(65536)):
            tokens = tokenize_binary(seqs.column("sequence"))
            cols = [seqs.column("id"), seqs.column("seq_hash"), *rows.columns[2:], seqs.column("length"), tokens]
            table = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, schema)], schema=schema)
            split = rows.column(1)
            for name, writer in writers.items():
                mask = _np(pc.equal(split, name))
                if mask.all():
                    writer.write(table)
                elif mask.any():
                    writer.write(table.filter(pa.array(mask)))
        for split, writer in writers.items():
            files = writer.close()
            manifest["splits"][split] = {"files": files, "rows": sum(f["rows"] for f in files),
                                         "tokens": sum(f["tokens"] for f in files)}
    except BaseException:
        for writer in writers.values():  # no thread left behind, no partial file under a final name
            writer.abort()
        raise
    finally:
        work.cleanup()
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("shards: %s", {s: (v["rows"], len(v["files"])) for s, v in manifest["splits"].items()})
    return manifest


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    path = Path(shards_dir) / "manifest.json"
    if not path.is_file():
        raise DataValidationError("no manifest.json in shard directory", path=str(shards_dir))
    return json.loads(path.read_text())


def verify_manifest(shards_dir: Path) -> list[str]:
    """Check every file's sha256 and row count against the manifest; returns the problems found."""
    manifest = read_manifest(shards_dir)
    problems = []
    for split, info in manifest["splits"].items():
        for f in info["files"]:
            p = Path(shards_dir) / f["path"]
            if not p.is_file():
                problems.append(f"{f['path']}: missing")
            elif sha256_file(p) != f["sha256"]:
                problems.append(f"{f['path']}: sha256 mismatch")
            elif pq.ParquetFile(p).metadata.num_rows != f["rows"]:
                problems.append(f"{f['path']}: row count differs from manifest")
    return problems
