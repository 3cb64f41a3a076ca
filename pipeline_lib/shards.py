"""Tokenized, sharded Parquet datasets with a manifest.

    manifest = write_sequence_shards(sequences, clusters, splits, out_dir, levels=["c90", "c50"], cfg=ShardsConfig())

Layout: ``<out>/<split>/part-00000.parquet`` (zstd, row groups of ``row_group_rows`` for streaming) and
``<out>/manifest.json`` with the schema version, the vocabulary, rows / tokens / sha256 per file. The
files read with plain pyarrow, DuckDB, polars and Hugging Face ``datasets``. Tokenizing is vectorized:
one NumPy lookup over a whole Arrow batch of sequences.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import ShardsConfig
from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_path, sha256_file, write_json_atomic
from pipeline_lib.tokenizer import ESM_ALPHABET, Alphabet

__all__ = ["tokenize_array", "write_sequence_shards", "read_manifest", "verify_manifest", "SPLITS"]

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def tokenize_array(seqs: pa.Array, alphabet: Alphabet = ESM_ALPHABET) -> pa.ListArray:
    """Encode a string array as ``<cls> residues <eos>`` token lists in one vectorized pass."""
    seqs = seqs.cast(pa.large_string()) if pa.types.is_string(seqs.type) else seqs
    n = len(seqs)
    if seqs.null_count:
        raise DataValidationError("null sequence in tokenizer input")
    offsets = np.frombuffer(seqs.buffers()[1], dtype=np.int64)[seqs.offset: seqs.offset + n + 1]
    data = np.frombuffer(seqs.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
    rel = offsets - offsets[0]
    lengths = np.diff(rel)
    out = np.empty(len(data) + 2 * n, dtype=alphabet.dtype)
    shift = 2 * np.arange(n, dtype=np.int64)
    body_pos = np.arange(len(data), dtype=np.int64) + np.repeat(shift, lengths) + 1
    out[body_pos] = alphabet._lut[data]
    out[rel[:-1] + shift] = alphabet.cls_idx
    out[rel[1:] + shift + 1] = alphabet.eos_idx
    new_offsets = (rel + np.concatenate(([0], shift + 2))).astype(np.int32)
    values = pa.array(out, type=pa.from_numpy_dtype(alphabet.dtype))
    return pa.ListArray.from_arrays(pa.array(new_offsets, type=pa.int32()), values)


class _ShardWriter:
    """Rolls ``part-NNNNN.parquet`` files in one split directory; each written atomically."""

    def __init__(self, split_dir: Path, schema: pa.Schema, cfg: ShardsConfig) -> None:
        self.dir, self.schema, self.cfg = split_dir, schema, cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._ctx = None
        self._rows = self._tokens = 0

    def _open(self) -> None:
        final = self.dir / f"part-{len(self.files):05d}.parquet"
        self._ctx = atomic_path(final)
        tmp = self._ctx.__enter__()
        self._final = final
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd",
                                        compression_level=self.cfg.compression_level)

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._open()
            take = min(table.num_rows, self.cfg.rows_per_shard - self._rows)
            part = table.slice(0, take)
            self._writer.write_table(part, row_group_size=self.cfg.row_group_rows)
            self._rows += take
            self._tokens += int(pa.compute.sum(pa.compute.list_value_length(part.column("tokens"))).as_py() or 0)
            table = table.slice(take)
            if self._rows >= self.cfg.rows_per_shard:
                self._close()

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._ctx.__exit__(None, None, None)
        self.files.append({"path": f"{self.dir.name}/{self._final.name}", "rows": self._rows,
                           "tokens": self._tokens, "bytes": self._final.stat().st_size,
                           "sha256": sha256_file(self._final)})
        self._writer, self._rows, self._tokens = None, 0, 0

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.files


def _batches(sequences: Path, clusters: Path, splits: Path, split: str, levels: list[str]) -> Iterator[pa.RecordBatch]:
    cl = ", ".join(f"c.cluster_{lv}" for lv in levels)
    con = duckdb.connect()
    try:
        con.execute("SET threads=2; SET preserve_insertion_order=true")
        reader = con.sql(f"""
            SELECT s.id, s.seq_hash, {cl}, s.length, s.sequence
            FROM read_parquet('{sequences}') s
            JOIN read_parquet('{clusters}') c USING (id)
            JOIN read_parquet('{splits}') p USING (id)
            WHERE p.split = '{split}' ORDER BY s.seq_hash""").to_arrow_reader(65536)
        yield from reader
    finally:
        con.close()


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
    for split in SPLITS:
        writer = _ShardWriter(out_dir / split, schema, cfg)
        for batch in _batches(sequences, clusters, splits, split, levels):
            tokens = tokenize_array(batch.column("sequence"))
            cols = [batch.column(name).cast(schema.field(name).type) for name in schema.names[:-1]]
            writer.write(pa.Table.from_arrays([*cols, tokens], schema=schema))
        files = writer.close()
        manifest["splits"][split] = {"files": files, "rows": sum(f["rows"] for f in files),
                                     "tokens": sum(f["tokens"] for f in files)}
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("shards: %s", {s: (v["rows"], len(v["files"])) for s, v in manifest["splits"].items()})
    return manifest


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    import json

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
