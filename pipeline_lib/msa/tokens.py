"""Tokenized MSA shards for MSA Transformer training, with a manifest.

    manifest = write_msa_shards({"train": train_msas, "valid": valid_msas}, "work/msa_shards",
                                subsample=SubsampleConfig())

Layout: ``<out>/<split>/part-NNNNN.parquet`` (zstd) and ``<out>/manifest.json`` (schema version,
vocabulary tokens, per file path / rows / tokens / bytes / sha256), mirroring the sequence shards.
One Parquet row per MSA: ``query_id``, ``depth``, ``neff``, ``length`` and ``msa_tokens``, a
list<list<uint8>> of depth rows x length ESM-2 ids. Row 0 is the query. There is **no** ``<cls>`` or
``<eos>``: the data loader adds them (the MSA Transformer prepends ``<cls>`` to every row). Gaps are
the ESM ``-`` token (id 30); insertions were removed when the A3M was parsed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.io import atomic_path, sha256_file, write_json_atomic
from pipeline_lib.msa.a3m import Msa
from pipeline_lib.msa.config import SubsampleConfig
from pipeline_lib.msa.subsample import subsample_msa
from pipeline_lib.tokenizer import ESM_ALPHABET

__all__ = ["MSA_SHARD_SCHEMA", "tokenize_msa", "msa_shard_table", "write_msa_shards", "read_msa_tokens",
           "msa_arrays"]

log = logging.getLogger(__name__)
MAX_GROUP_TOKENS = 1 << 28  # a row group's tokens stay far below the int32 offsets of list<list<uint8>>

MSA_SHARD_SCHEMA = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("depth", pa.int32(), nullable=False),
    pa.field("neff", pa.float32(), nullable=False),
    pa.field("length", pa.int32(), nullable=False),     # columns (query residues), no special tokens
    pa.field("msa_tokens", pa.list_(pa.list_(pa.uint8())), nullable=False),  # depth x length ESM ids
])


def tokenize_msa(msa: Msa) -> np.ndarray:
    """ESM-2 ids of the MSA, shape (depth, length), uint8, no special tokens."""
    ids = ESM_ALPHABET.encode_array("".join(msa.rows), add_special=False)
    return ids.reshape(msa.depth, msa.query_length)


def msa_shard_table(msas: list[Msa]) -> pa.Table:
    """Arrow table in :data:`MSA_SHARD_SCHEMA`; the nested lists are built from flat arrays (no Python loops
    over residues)."""
    arrays = [tokenize_msa(m) for m in msas]
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.uint8)
    row_lengths = np.concatenate([np.full(a.shape[0], a.shape[1], np.int32) for a in arrays]) \
        if arrays else np.zeros(0, np.int32)
    row_offsets = np.concatenate(([0], np.cumsum(row_lengths, dtype=np.int64))).astype(np.int32)
    msa_offsets = np.concatenate(([0], np.cumsum([a.shape[0] for a in arrays], dtype=np.int64))).astype(np.int32)
    rows = pa.ListArray.from_arrays(pa.array(row_offsets), pa.array(flat, type=pa.uint8()))
    tokens = pa.ListArray.from_arrays(pa.array(msa_offsets), rows)
    return pa.Table.from_arrays([
        pa.array([m.query_id for m in msas], pa.string()),
        pa.array([m.depth for m in msas], pa.int32()),
        pa.array([m.neff for m in msas], pa.float32()),
        pa.array([m.query_length for m in msas], pa.int32()),
        tokens.cast(MSA_SHARD_SCHEMA.field("msa_tokens").type),
    ], schema=MSA_SHARD_SCHEMA)


class _SplitWriter:
    """Rolls ``part-NNNNN.parquet`` files in one split directory, each written atomically."""

    def __init__(self, split_dir: Path, rows_per_shard: int, row_group_rows: int, level: int) -> None:
        self.dir, self.rows_per_shard, self.row_group_rows = split_dir, rows_per_shard, row_group_rows
        self.level = level
        self.files: list[dict[str, Any]] = []
        self._pending: list[Msa] = []
        self._pending_tokens = 0
        self._writer: pq.ParquetWriter | None = None
        self._ctx: Any = None
        self._rows = self._tokens = 0

    def add(self, msa: Msa) -> None:
        self._pending.append(msa)
        self._pending_tokens += msa.depth * msa.query_length
        if (len(self._pending) >= self.row_group_rows or self._pending_tokens >= MAX_GROUP_TOKENS
                or self._rows + len(self._pending) >= self.rows_per_shard):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._final = self.dir / f"part-{len(self.files):05d}.parquet"
            self._ctx = atomic_path(self._final)
            self._writer = pq.ParquetWriter(self._ctx.__enter__(), MSA_SHARD_SCHEMA, compression="zstd",
                                            compression_level=self.level)
        self._writer.write_table(msa_shard_table(self._pending))
        self._rows += len(self._pending)
        self._tokens += sum(m.depth * m.query_length for m in self._pending)
        self._pending, self._pending_tokens = [], 0
        if self._rows >= self.rows_per_shard:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._ctx.__exit__(None, None, None)
        self.files.append({"path": f"{self.dir.name}/{self._final.name}", "rows": self._rows,
                           "tokens": self._tokens, "bytes": self._final.stat().st_size,
                           "sha256": sha256_file(self._final)})
        self._writer, self._rows, self._tokens = None, 0, 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        self._close_file()
        return self.files


def write_msa_shards(msas_by_split: Mapping[str, Iterable[Msa]], out_dir: str | os.PathLike[str], *,
                     subsample: SubsampleConfig | None = None, rows_per_shard: int = 10000,
                     row_group_rows: int = 256, compression_level: int = 3,
                     provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the shards of every split (each MSA subsampled with ``subsample`` when given) and
    ``manifest.json``; returns the manifest. A split with no MSAs gets no files."""
    out = Path(out_dir)
    manifest: dict[str, Any] = {
        "schema_version": schemas.SCHEMA_VERSION, "kind": "msa",
        "vocabulary": {"name": ESM_ALPHABET.name, "tokens": list(ESM_ALPHABET.tokens)},
        "tokens_include_special": False, "gap_token": "-", "query_row": 0,
        "columns": MSA_SHARD_SCHEMA.names,
        "subsample": subsample.model_dump(mode="json") if subsample else None,
        "splits": {}, "provenance": provenance or {},
    }
    for split, msas in msas_by_split.items():
        writer = _SplitWriter(out / split, rows_per_shard, row_group_rows, compression_level)
        for msa in msas:
            writer.add(subsample_msa(msa, subsample) if subsample else msa)
        files = writer.close()
        manifest["splits"][split] = {"files": files, "rows": sum(f["rows"] for f in files),
                                     "tokens": sum(f["tokens"] for f in files)}
    write_json_atomic(out / "manifest.json", manifest)
    log.info("msa shards: %s", {s: v["rows"] for s, v in manifest["splits"].items()})
    return manifest


def msa_arrays(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """The ``msa_tokens`` values of a column as (depth, length) uint8 arrays (views of one flat buffer).

    Raises ValueError when the rows of an MSA differ in length (a corrupt shard)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    msa_off = col.offsets.to_numpy()            # MSA i -> its rows msa_off[i]:msa_off[i + 1]
    rows = col.values
    row_off = rows.offsets.to_numpy()           # row j -> values row_off[j]:row_off[j + 1]
    values = rows.values.to_numpy(zero_copy_only=False)
    out = []
    for i in range(len(col)):
        r0, r1 = int(msa_off[i]), int(msa_off[i + 1])
        lengths = np.diff(row_off[r0:r1 + 1])
        if len(lengths) and (lengths != lengths[0]).any():
            raise ValueError(f"MSA {i}: rows of different lengths {sorted(set(lengths.tolist()))}")
        width = int(lengths[0]) if len(lengths) else 0
        out.append(values[row_off[r0]:row_off[r1]].reshape(r1 - r0, width))
    return out


def read_msa_tokens(path: str | os.PathLike[str]) -> list[tuple[str, np.ndarray]]:
    """(query_id, (depth, length) uint8 array) for every MSA of one shard file (for tests and loaders)."""
    table = pq.read_table(path, columns=["query_id", "msa_tokens"])
    return list(zip(table.column("query_id").to_pylist(), msa_arrays(table.column("msa_tokens")), strict=False))
