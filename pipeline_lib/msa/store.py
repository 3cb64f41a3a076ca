"""Store parsed MSAs in Parquet (one row per MSA) and read them back.

    n = write_msa_parquet((read_a3m(p) for p in paths), "msas.parquet")
    for msa in read_msa_parquet("msas.parquet"): ...

Schema :data:`MSA_SCHEMA`: ``query_id``, ``depth``, ``neff`` (80% identity), ``query_length``,
``rows`` (aligned, insertions removed, query first, each ``query_length`` long), ``headers``, ``source``.
Written with zstd to a temporary name and renamed, so a reader never sees a partial file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_path
from pipeline_lib.msa.a3m import Msa

__all__ = ["MSA_SCHEMA", "write_msa_parquet", "read_msa_parquet", "msas_to_table"]

MSA_SCHEMA = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("depth", pa.int32(), nullable=False),          # rows, query included
    pa.field("neff", pa.float32(), nullable=False),         # effective sequences at 80% identity
    pa.field("query_length", pa.int32(), nullable=False),   # match columns (= every row's length)
    pa.field("rows", pa.list_(pa.string()), nullable=False),
    pa.field("headers", pa.list_(pa.string()), nullable=False),
    pa.field("source", pa.string()),                        # file or batch the MSA came from
])


def msas_to_table(msas: Iterable[Msa]) -> pa.Table:
    """Arrow table in :data:`MSA_SCHEMA` (computes Neff of each MSA)."""
    cols: dict[str, list] = {name: [] for name in MSA_SCHEMA.names}
    for m in msas:
        cols["query_id"].append(m.query_id)
        cols["depth"].append(m.depth)
        cols["neff"].append(m.neff)
        cols["query_length"].append(m.query_length)
        cols["rows"].append(list(m.rows))
        cols["headers"].append(list(m.headers))
        cols["source"].append(m.source)
    return pa.Table.from_pydict(cols, schema=MSA_SCHEMA)


def write_msa_parquet(msas: Iterable[Msa], path: str | os.PathLike[str], *, row_group_rows: int = 256,
                      compression_level: int = 3) -> int:
    """Write MSAs to ``path`` (zstd, atomically), ``row_group_rows`` MSAs per row group; returns the count."""
    n = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, MSA_SCHEMA, compression="zstd",
                                                    compression_level=compression_level) as writer:
        batch: list[Msa] = []
        for m in msas:
            batch.append(m)
            if len(batch) >= row_group_rows:
                writer.write_table(msas_to_table(batch))
                n, batch = n + len(batch), []
        if batch or n == 0:
            writer.write_table(msas_to_table(batch))
            n += len(batch)
    return n


def read_msa_parquet(path: str | os.PathLike[str]) -> Iterator[Msa]:
    """Stream the MSAs of a file written by :func:`write_msa_parquet` (checks the schema)."""
    pf = pq.ParquetFile(path)
    missing = set(MSA_SCHEMA.names) - set(pf.schema_arrow.names)
    if missing:
        raise DataValidationError(f"not an MSA table: missing columns {sorted(missing)}", path=str(path))
    for batch in pf.iter_batches(batch_size=64, columns=MSA_SCHEMA.names):
        for rec in batch.to_pylist():
            m = Msa(rec["query_id"], tuple(rec["rows"]), tuple(rec["headers"]), rec["source"] or "")
            vars(m)["neff"] = float(rec["neff"])   # the stored value fills the cached property: no recompute
            yield m
