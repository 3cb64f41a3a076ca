"""One pyarrow schema per artifact kind: used by its writer, its readers and the tests.

Shard layout (``<shards>/manifest.json`` + ``<shards>/<split>/part-NNNNN.parquet``):
- sequence shards: ``id``, ``seq_hash``, one ``cluster_<level>`` column per cluster level,
  ``length`` (residues), ``tokens`` (ESM-2 ids *including* ``<cls>`` and ``<eos>``, one byte per token in a
  ``binary`` value: Parquet has no 8-bit integer, so a ``list<uint8>`` column is stored as 32-bit values plus
  list levels, which cost 3-4x more to write and 6x more to read; :func:`token_buffers` turns the column into
  offsets and ids, and ``list(row["tokens"])`` is the ids in plain Python).
- structure-aware shards (SaProt): the same plus ``aa_seq``, ``threedi_seq``, ``sa_tokens`` (int16),
  ``mean_plddt``, ``structure_source``, ``structure_version``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION",
    "SEQUENCES",
    "QUARANTINE",
    "DUPLICATES",
    "cluster_schema",
    "CLUSTER_SIZES",
    "SPLITS",
    "sequence_shard_schema",
    "structure_shard_schema",
    "token_buffers",
]

SCHEMA_VERSION = 2   # 2: ``tokens`` is binary (one byte per id); 1 had list<uint8>

# ingest: one row per kept (unique) sequence
SEQUENCES = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("accession", pa.string()),
    pa.field("description", pa.string()),
    pa.field("db", pa.string()),           # sp / tr (UniProtKB) or the UniRef level (UniRef50...)
    pa.field("n_members", pa.int32()),      # UniRef n=
    pa.field("tax", pa.string()),           # UniRef Tax= / UniProtKB OS=
    pa.field("taxid", pa.int64()),          # UniRef TaxID= / UniProtKB OX=
    pa.field("rep_id", pa.string()),        # UniRef RepID=
    pa.field("gene", pa.string()),          # GN=
    pa.field("pe", pa.int8()),              # PE=
    pa.field("sv", pa.int16()),             # SV=
    pa.field("sequence", pa.string(), nullable=False),
    pa.field("length", pa.int32(), nullable=False),
    pa.field("seq_hash", pa.string(), nullable=False),   # sha256 of the sequence, hex, first 32 chars
    pa.field("source_file", pa.string()),
    pa.field("source_record", pa.int64()),  # 0-based record index within its source file
])

# every record that could not be used, with the reason (input = kept + duplicates + quarantined)
QUARANTINE = pa.schema([
    pa.field("stage", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),
    pa.field("source_record", pa.int64()),
    pa.field("id", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("raw", pa.string()),           # the header (truncated) for inspection
])

# exact duplicate sequences collapsed onto the kept id
DUPLICATES = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("kept_id", pa.string(), nullable=False),
    pa.field("seq_hash", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),
    pa.field("source_record", pa.int64()),
])


def cluster_schema(levels: list[str]) -> pa.Schema:
    """``id`` -> representative id at each level (``cluster_<level>``)."""
    return pa.schema([pa.field("id", pa.string(), nullable=False)]
                     + [pa.field(f"cluster_{lv}", pa.string(), nullable=False) for lv in levels])


CLUSTER_SIZES = pa.schema([
    pa.field("level", pa.string(), nullable=False),
    pa.field("representative", pa.string(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),   # number of sequences (all levels below included)
])

SPLITS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # train / valid / test
])


def sequence_shard_schema(levels: list[str]) -> pa.Schema:
    return pa.schema(
        [pa.field("id", pa.string(), nullable=False), pa.field("seq_hash", pa.string(), nullable=False)]
        + [pa.field(f"cluster_{lv}", pa.string(), nullable=False) for lv in levels]
        + [pa.field("length", pa.int32(), nullable=False),
           pa.field("tokens", pa.binary(), nullable=False)]
    )


def token_buffers(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, ids) of a token column: row ``i`` is ``ids[offsets[i]:offsets[i + 1]]``, ids as int64.

    Reads the ``binary`` token columns of schema version 2 and the ``list<int>`` columns of version 1 and of
    ``sa_tokens`` (int16), without a copy per row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros(1, np.int64), np.empty(0, np.int64)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
        begin = column.offset
        offsets = np.frombuffer(column.buffers()[1], dtype=width)[begin: begin + len(column) + 1].astype(np.int64)
        data = column.buffers()[2]
        raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
        return offsets - offsets[0], raw[offsets[0]: offsets[-1]].astype(np.int64)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
        return offsets - offsets[0], values[offsets[0]: offsets[-1]]
    raise TypeError(f"not a token column: {column.type}")


def structure_shard_schema(levels: list[str]) -> pa.Schema:
    base = sequence_shard_schema(levels)
    return base.append(pa.field("aa_seq", pa.string(), nullable=False)) \
        .append(pa.field("threedi_seq", pa.string(), nullable=False)) \
        .append(pa.field("sa_tokens", pa.list_(pa.int16()), nullable=False)) \
        .append(pa.field("mean_plddt", pa.float32())) \
        .append(pa.field("structure_source", pa.string())) \
        .append(pa.field("structure_version", pa.string()))
