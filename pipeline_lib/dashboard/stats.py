"""Dataset statistics over the Parquet and A3M artifacts that lineage names, computed where the data is.

    arts = data.run_artifacts(db, run_id)
    stats.length_histogram(arts).counts          # sequence lengths of the run's ingest output

DuckDB aggregates each column (a GROUP BY over the files), so a 70M-row UniRef50 column never reaches
Python; results are cached by artifact content hash, since artifacts never change under a hash. Kinds
that a run does not have (no structures, no MSAs yet) give empty results rather than errors.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_lib.io import duckdb_connect, sql_paths

__all__ = ["Histogram", "length_histogram", "cluster_size_distribution", "plddt_histogram", "msa_depth_histogram",
           "MSA_DEPTH_COLUMNS"]

MSA_DEPTH_COLUMNS = ("depth", "msa_depth", "n_seqs", "num_seqs", "n_sequences")
MAX_A3M_FILES = 5000   # beyond this, an MSA artifact's depth histogram uses a sample of its files


@dataclass
class Histogram:
    """Counts per bin: bin ``i`` covers ``[lefts[i], lefts[i] + width)``."""

    label: str
    lefts: list[float]
    counts: list[int]
    width: float
    total: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.total == 0


def _parquet_files(paths: list[str]) -> list[str]:
    """Existing Parquet files among ``paths`` (a directory stands for the Parquet files below it)."""
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*.parquet"))
        elif p.is_file() and p.suffix == ".parquet":
            files.append(str(p))
    return files


def _nice_width(span: float, bins: int) -> float:
    raw = max(span / bins, 1e-9)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


@functools.lru_cache(maxsize=64)
def _column_histogram(files: tuple[str, ...], hashes: tuple[str, ...], column: str, bins: int,
                      lo: float | None, hi: float | None) -> tuple[list[float], list[int], float, int]:
    """Histogram of a numeric Parquet column; ``hashes`` only key the cache (artifacts never change)."""
    con = duckdb_connect()
    try:
        src = f"(SELECT CAST({column} AS DOUBLE) AS v FROM read_parquet({sql_paths(files)}) WHERE {column} IS NOT NULL)"
        n, vmin, vmax = con.execute(f"SELECT count(*), min(v), max(v) FROM {src}").fetchone()
        if not n:
            return [], [], 1.0, 0
        lo = vmin if lo is None else lo
        hi = vmax if hi is None else hi
        width = _nice_width(hi - lo, bins) if hi > lo else 1.0
        start = math.floor(lo / width) * width
        got = con.execute(f"SELECT floor((v - ?) / ?) AS b, count(*) FROM {src} GROUP BY b ORDER BY b",
                          [start, width]).fetchall()
    finally:
        con.close()
    return [start + int(b) * width for b, _ in got], [int(c) for _, c in got], width, int(n)


def _histogram(label: str, arts: list[dict[str, Any]], column: str, bins: int = 60,
               lo: float | None = None, hi: float | None = None) -> Histogram:
    files = _parquet_files([a["path"] for a in arts])
    if not files:
        return Histogram(label, [], [], 1.0)
    hashes = tuple(a["content_hash"] for a in arts)
    lefts, counts, width, n = _column_histogram(tuple(files), hashes, column, bins, lo, hi)
    return Histogram(label, lefts, counts, width, n, sources=[a["path"] for a in arts])


def _of_kind(artifacts: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in artifacts if a["kind"] == kind]


def length_histogram(artifacts: list[dict[str, Any]], bins: int = 60) -> Histogram:
    """Sequence lengths (residues) from a run's ingest output (artifacts of kind ``sequences``)."""
    return _histogram("sequence length (residues)", _of_kind(artifacts, "sequences")[:1], "length", bins)


def cluster_size_distribution(artifacts: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Per cluster level: ``{"size": [...], "clusters": [...]}``, how many clusters have each size."""
    arts = _of_kind(artifacts, "cluster_sizes")
    files = _parquet_files([a["path"] for a in arts[:1]])
    if not files:
        return {}
    return _cluster_sizes(tuple(files), arts[0]["content_hash"])


@functools.lru_cache(maxsize=16)
def _cluster_sizes(files: tuple[str, ...], content_hash: str) -> dict[str, dict[str, list[int]]]:
    con = duckdb_connect()
    try:
        got = con.execute(f"SELECT level, size, count(*) FROM read_parquet({sql_paths(files)}) GROUP BY ALL "
                          "ORDER BY level, size").fetchall()
    finally:
        con.close()
    out: dict[str, dict[str, list[int]]] = {}
    for level, size, n in got:
        d = out.setdefault(level, {"size": [], "clusters": []})
        d["size"].append(int(size))
        d["clusters"].append(int(n))
    return out


def plddt_histogram(artifacts: list[dict[str, Any]]) -> Histogram:
    """Mean pLDDT per structure from ``structure_shard`` artifacts (empty when there are none)."""
    return _histogram("mean pLDDT", _of_kind(artifacts, "structure_shard"), "mean_plddt", bins=50, lo=0.0, hi=100.0)


def msa_depth_histogram(artifacts: list[dict[str, Any]]) -> Histogram:
    """Sequences per MSA from ``msa`` artifacts: a depth column of a Parquet table, ``depth`` / ``depths``
    in the artifact's meta, or the records of A3M files (empty when there are none)."""
    depths: list[int] = []
    arts = _of_kind(artifacts, "msa")
    for a in arts:
        depths += _msa_depths(a["path"], a["content_hash"], json.dumps(a["meta"], sort_keys=True))
    if not depths:
        return Histogram("MSA depth (sequences)", [], [], 1.0)
    lo, hi = min(depths), max(depths)
    width = max(1.0, _nice_width(hi - lo, 50)) if hi > lo else 1.0
    start = math.floor(lo / width) * width
    counts: dict[int, int] = {}
    for d in depths:
        b = int((d - start) // width)
        counts[b] = counts.get(b, 0) + 1
    keys = sorted(counts)
    return Histogram("MSA depth (sequences)", [start + k * width for k in keys], [counts[k] for k in keys],
                     width, len(depths), sources=[a["path"] for a in arts])


@functools.lru_cache(maxsize=256)
def _msa_depths(path: str, content_hash: str, meta_json: str) -> list[int]:
    meta = json.loads(meta_json)
    if isinstance(meta.get("depths"), list):
        return [int(d) for d in meta["depths"]]
    if "depth" in meta:
        return [int(meta["depth"])]
    p = Path(path)
    parquet = _parquet_files([path])
    if parquet:
        con = duckdb_connect()
        try:
            cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_paths(parquet)})").fetchall()}
            col = next((c for c in MSA_DEPTH_COLUMNS if c in cols), None)
            if col is None:
                return []
            return [int(r[0]) for r in con.execute(
                f"SELECT {col} FROM read_parquet({sql_paths(parquet)}) WHERE {col} IS NOT NULL").fetchall()]
        finally:
            con.close()
    files = sorted(p.rglob("*.a3m"))[:MAX_A3M_FILES] if p.is_dir() else ([p] if p.is_file() else [])
    return [_a3m_depth(f) for f in files]


def _a3m_depth(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.startswith(b">"))
