"""The MSA stage around the batch builder: choosing queries, and turning finished batches into the
MSA table and MSA token shards (split like the queries' clusters).

    queries = select_queries(sequences, clusters, splits, level="c50", splits_wanted=["train"], limit=1000)
    manifest, n = write_msa_outputs(batches, splits, out_dir, cfg)
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline_lib.io import duckdb_connect, sql_path, sql_str
from pipeline_lib.msa.a3m import Msa
from pipeline_lib.msa.build import BatchResult, Query
from pipeline_lib.msa.config import MsaConfig
from pipeline_lib.msa.store import write_msa_parquet
from pipeline_lib.msa.tokens import write_msa_shards

__all__ = ["select_queries", "write_msa_outputs"]


def select_queries(sequences: Path, clusters: Path, splits: Path, *, level: str, splits_wanted: list[str],
                   limit: int | None) -> list[Query]:
    """Cluster representatives at ``level`` whose split is wanted, in a stable pseudo-random order."""
    wanted = ", ".join(map(sql_str, splits_wanted))
    con = duckdb_connect()
    try:
        rows = con.execute(f"""SELECT s.id, s.sequence FROM read_parquet({sql_path(sequences)}) s
            JOIN read_parquet({sql_path(clusters)}) c USING (id) JOIN read_parquet({sql_path(splits)}) p USING (id)
            WHERE c.cluster_{level} = s.id AND p.split IN ({wanted}) ORDER BY s.seq_hash
            {f'LIMIT {int(limit)}' if limit else ''}""").fetchall()
    finally:
        con.close()
    return [(i, s) for i, s in rows]


def write_msa_outputs(batches: Iterable[BatchResult], splits: Path, out_dir: Path, cfg: MsaConfig,
                      provenance: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``msas.parquet`` (every MSA, full depth) and ``shards/`` (subsampled, tokenized, by split)."""
    table = pq.read_table(splits, columns=["id", "split"])
    split_of = dict(zip(table.column("id").to_pylist(), table.column("split").to_pylist(), strict=True))
    msas: list[Msa] = [m for b in batches for m in b.read_msas()]
    write_msa_parquet(msas, out_dir / "msas.parquet", row_group_rows=cfg.row_group_rows)
    by_split: dict[str, list[Msa]] = {}
    for m in msas:
        by_split.setdefault(split_of[m.query_id], []).append(m)
    manifest = write_msa_shards(by_split, out_dir / "shards", subsample=cfg.subsample,
                                rows_per_shard=cfg.rows_per_shard, row_group_rows=cfg.row_group_rows,
                                provenance=provenance)
    depths = [m.depth for m in msas]
    stats = {"msas": len(msas), "by_split": {k: len(v) for k, v in by_split.items()},
             "depth_mean": sum(depths) / len(depths) if depths else 0, "depth_max": max(depths, default=0),
             "neff_mean": sum(m.neff for m in msas) / len(msas) if msas else 0}
    return manifest, stats
