"""Tokenized, sharded Parquet datasets with a manifest.

    manifest = write_sequence_shards(sequences, clusters, splits, out_dir, levels=["c90", "c50"], cfg=ShardsConfig())
    # what the shards stage does instead, each partition a task of its own:
    parts = [(d / f"p{i}", write_shard_partition(sequences, clusters, splits, d / f"p{i}", levels=levels,
                                                cfg=cfg, rows=rows))
             for i, rows in enumerate(partition_ranges(num_rows, cfg.partition_rows))]
    manifest = assemble_shards(parts, out_dir, levels=levels)

Layout: ``<out>/<split>/part-00000.parquet`` (zstd, row groups of ``row_group_rows`` for streaming) and
``<out>/manifest.json`` with the schema version, the vocabulary, rows / tokens / sha256 per file. The
files read with plain pyarrow, DuckDB, polars and Hugging Face ``datasets``. Rows keep the order of
``sequences.parquet`` (ingest order), so the output is deterministic without sorting the wide rows.

Partitions (datatrove-style; each input row read once): the ingest rows split into fixed ranges of
``partition_rows`` (:func:`partition_ranges`, from the config only, so every task runner writes the same bytes).
:func:`write_shard_partition` writes one range's shards in one pass: DuckDB joins the narrow columns of the
range (row number, id -> clusters, split; memory-capped, spilling) and returns them in row order; the
sequences of the row groups overlapping the range stream beside them, are tokenized (``bytes.translate`` over
a whole batch) and routed to their split's current shard, each shard file encoded and hashed on its own thread
(:mod:`pipeline_lib.sequences.shard_writer`). :func:`assemble_shards` links the partitions' files into place, numbered
consecutively per split in partition order, and writes the manifest: with one partition the files are those
a single pass writes. On any error every thread is stopped and joined, and no partial file is left under a
final name. Tests: ``.venv/bin/pytest -q tests/test_shards.py``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import sha256_file, sql_path, sql_str, write_json_atomic
from pipeline_lib.sequences.config import ShardsConfig
from pipeline_lib.sequences.ingest_dedupe import spilling_connection
from pipeline_lib.sequences.shard_writer import Budget, SplitWriter
from pipeline_lib.tokenizer import ESM_ALPHABET, Alphabet

__all__ = ["tokenize_array", "tokenize_binary", "partition_ranges", "write_shard_partition", "assemble_shards",
           "write_sequence_shards", "read_manifest", "verify_manifest", "SPLITS"]

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


def partition_ranges(num_rows: int, partition_rows: int) -> list[tuple[int, int]]:
    """The ingest-row ranges ``[a, b)`` of the shard partitions: ``partition_rows`` each, the last shorter.

    They depend on the row count and the config only (never on the task runner), so every runner writes the
    same files; an empty input is one empty partition."""
    return [(a, min(a + partition_rows, num_rows)) for a in range(0, num_rows, partition_rows)] or [(0, 0)]


def _row_groups(reader: pq.ParquetFile, rows: tuple[int, int]) -> tuple[list[int], int]:
    """The row groups of ``reader`` that overlap ``rows`` and the file row number the first one starts at."""
    meta, groups, start, first = reader.metadata, [], 0, None
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if start < rows[1] and start + n > rows[0]:
            groups.append(g)
            first = start if first is None else first
        start += n
    return groups, first or 0


def _plan(sequences: Path, clusters: Path, splits: Path, levels: list[str], work: Path,
          rows: tuple[int, int]) -> Path:
    """Parquet file of (row number in ``sequences``, split, cluster columns) of every joined row in ``rows``,
    in row order.

    DuckDB (memory-capped, spilling to ``work``) reads the ids of ``rows`` only (it skips the row groups outside
    the ``file_row_number`` range), joins and sorts only these narrow columns, and is closed before the wide
    rows stream: its memory and the shard writers' are never needed at the same time."""
    cl = ", ".join(f"c.cluster_{lv}" for lv in levels)
    names = ", ".join(map(sql_str, SPLITS))
    path = work / "plan.parquet"
    con = spilling_connection(work)
    try:
        con.execute("SET preserve_insertion_order=true")  # the file keeps the ORDER BY
        con.execute(f"""COPY (
            SELECT s.ord, p.split, {cl}
            FROM (SELECT id, file_row_number AS ord FROM read_parquet({sql_path(sequences)}, file_row_number=true)
                  WHERE file_row_number >= {int(rows[0])} AND file_row_number < {int(rows[1])}) s
            JOIN read_parquet({sql_path(clusters)}) c USING (id)
            JOIN read_parquet({sql_path(splits)}) p USING (id)
            WHERE p.split IN ({names}) ORDER BY s.ord
            ) TO {sql_str(path)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 65536)""")
    finally:
        con.close()
    return path


def _joined(sequences: Path, plan: Iterator[pa.RecordBatch],
            rows: tuple[int, int]) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """Zip the sequences of ``rows`` (streamed in row order) with their plan rows: (sequence rows, plan rows)."""
    plan_rows: list[pa.RecordBatch] = []
    plan_ord = np.empty(0, dtype=np.int64)
    exhausted = False
    # pre_buffer=False: with it, the reader keeps every row group it has read until the end (memory grows)
    reader = pq.ParquetFile(sequences, pre_buffer=False)
    groups, offset = _row_groups(reader, rows)
    batches = reader.iter_batches(_BATCH_ROWS, row_groups=groups, columns=["id", "seq_hash", "length", "sequence"])
    for batch in batches:  # rows of the first and last group outside ``rows`` have no plan row: dropped
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
            idx = plan_ord[:cut] - offset
            same = cut == batch.num_rows and np.array_equal(idx, np.arange(cut))  # the usual case: every row
            yield (batch if same else batch.take(pa.array(idx))), here.slice(0, cut)
            rest = here.slice(cut)
            plan_rows, plan_ord = ([rest] if rest.num_rows else []), plan_ord[cut:]
        offset = end
        if offset >= rows[1]:
            break


def write_shard_partition(sequences: Path, clusters: Path, splits: Path, out_dir: Path, *, levels: list[str],
                          cfg: ShardsConfig, rows: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """Write the shards of the ingest rows ``[a, b)``: ``<out>/<split>/part-NNNNN.parquet`` numbered from 0 in
    each split. Returns ``{split: {"files": [{"path", "rows", "tokens", "bytes", "sha256"}], "rows", "tokens"}}``.
    """
    schema = schemas.sequence_shard_schema(levels)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(_QUEUED_BYTES)
    writers = {split: SplitWriter(out_dir / split, schema, cfg, budget) for split in SPLITS}
    work = tempfile.TemporaryDirectory(prefix=".plan.tmp-", dir=out_dir)  # (".tmp-": stage_cache removes it)
    result: dict[str, dict[str, Any]] = {}
    try:
        plan = pq.ParquetFile(_plan(sequences, clusters, splits, levels, Path(work.name), rows), pre_buffer=False)
        for seqs, planned in _joined(sequences, plan.iter_batches(65536), rows):
            tokens = tokenize_binary(seqs.column("sequence"))
            cols = [seqs.column("id"), seqs.column("seq_hash"), *planned.columns[2:], seqs.column("length"), tokens]
            table = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, schema, strict=False)], schema=schema)
            split = planned.column(1)
            for name, writer in writers.items():
                mask = _np(pc.equal(split, name))
                if mask.all():
                    writer.write(table)
                elif mask.any():
                    writer.write(table.filter(pa.array(mask)))
        for split, writer in writers.items():
            files = writer.close()
            result[split] = {"files": files, "rows": sum(f["rows"] for f in files),
                             "tokens": sum(f["tokens"] for f in files)}
    except BaseException:
        for writer in writers.values():  # no thread left behind, no partial file under a final name
            writer.abort()
        raise
    finally:
        work.cleanup()
    return result


def _place(src: Path, dst: Path, move: bool) -> None:
    """``src`` under the name ``dst``: renamed (``move``), else hard-linked, or copied where links fail."""
    if move:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, dst)


def assemble_shards(partitions: list[tuple[Path, dict[str, dict[str, Any]]]], out_dir: Path, *,
                    levels: list[str], provenance: dict[str, Any] | None = None, move: bool = False) -> dict[str, Any]:
    """Put the partitions' files (``(partition dir, what write_shard_partition returned)``, in partition order)
    under ``out_dir`` numbered consecutively per split, and write ``manifest.json``; returns the manifest."""
    manifest: dict[str, Any] = {
        "schema_version": schemas.SCHEMA_VERSION, "kind": "sequence",
        "vocabulary": {"name": ESM_ALPHABET.name, "tokens": list(ESM_ALPHABET.tokens)},
        "tokens_include_special": True, "cluster_levels": levels,
        "columns": schemas.sequence_shard_schema(levels).names, "splits": {}, "provenance": provenance or {},
    }
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        files: list[dict[str, Any]] = []
        for part_dir, written in partitions:
            for f in written[split]["files"]:
                name = f"{split}/part-{len(files):05d}.parquet"
                _place(Path(part_dir) / f["path"], out_dir / name, move)
                files.append({**f, "path": name})
        manifest["splits"][split] = {"files": files, "rows": sum(f["rows"] for f in files),
                                     "tokens": sum(f["tokens"] for f in files)}
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("shards: %s", {s: (v["rows"], len(v["files"])) for s, v in manifest["splits"].items()})
    return manifest


def write_sequence_shards(sequences: Path, clusters: Path, splits: Path, out_dir: Path, *, levels: list[str],
                          cfg: ShardsConfig, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every partition in turn in this process, then the manifest (the stage task runs the partitions as tasks
    of their own instead); returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ranges = partition_ranges(pq.ParquetFile(sequences).metadata.num_rows, cfg.partition_rows)
    with tempfile.TemporaryDirectory(prefix=".partitions.tmp-", dir=out_dir) as work:
        written = []
        for i, rows in enumerate(ranges):
            part = Path(work) / f"partition-{i:05d}"
            written.append((part, write_shard_partition(sequences, clusters, splits, part, levels=levels, cfg=cfg,
                                                        rows=rows)))
        return assemble_shards(written, out_dir, levels=levels, provenance=provenance, move=True)


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    path = Path(shards_dir) / "manifest.json"
    if not path.is_file():
        raise DataValidationError("no manifest.json in shard directory", path=str(shards_dir))
    return json.loads(path.read_text())


def verify_manifest(shards_dir: Path) -> list[str]:
    """Check every file's sha256 and row count against the manifest; returns the problems found."""
    manifest = read_manifest(shards_dir)
    problems = []
    for info in manifest["splits"].values():
        for f in info["files"]:
            p = Path(shards_dir) / f["path"]
            if not p.is_file():
                problems.append(f"{f['path']}: missing")
            elif sha256_file(p) != f["sha256"]:
                problems.append(f"{f['path']}: sha256 mismatch")
            elif pq.ParquetFile(p).metadata.num_rows != f["rows"]:
                problems.append(f"{f['path']}: row count differs from manifest")
    return problems
