"""How well a clustering recovers known families: pair counting (pairwise precision / recall) and the adjusted
Rand index, for benchmarks on :mod:`pipeline_lib.sequences.families`.

    q = partition_agreement(cluster_labels, family_labels)   # any hashable labels, one per sequence
    q.precision   # of the pairs put in one cluster, the share that are one family
    q.recall      # of the pairs of one family, the share put in one cluster
    q.ari         # adjusted Rand index (Hubert & Arabie 1985): 1 = same partition, ~0 = chance

A clustering at 90 % identity should have precision near 1 and low recall (a family spans many 90 % clusters);
a 30 % clustering should bring recall up without losing precision. Counts are exact integers (pairs of up to
hundreds of millions of sequences fit in int64 / Python ints).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_lib.io import duckdb_connect, sql_path

__all__ = ["Agreement", "partition_agreement", "clusters_against_truth"]


@dataclass(frozen=True)
class Agreement:
    sequences: int
    clusters: int
    families: int
    precision: float
    recall: float
    ari: float


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def _codes(labels: Sequence[object] | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)


def partition_agreement(clusters: Sequence[object] | np.ndarray, families: Sequence[object] | np.ndarray) -> Agreement:
    """Pairwise precision / recall and ARI of two labelings of the same sequences (same order)."""
    if len(clusters) != len(families):
        raise ValueError(f"{len(clusters)} cluster labels but {len(families)} family labels")
    n = len(clusters)
    c, f = _codes(clusters), _codes(families)
    n_c, n_f = (int(c.max()) + 1 if n else 0), (int(f.max()) + 1 if n else 0)
    same_cluster = _pairs(np.bincount(c)) if n else 0
    same_family = _pairs(np.bincount(f)) if n else 0
    both = _pairs(np.unique(c * max(n_f, 1) + f, return_counts=True)[1]) if n else 0
    total = n * (n - 1) // 2
    expected = same_cluster * same_family / total if total else 0.0
    top = (same_cluster + same_family) / 2 - expected
    ari = (both - expected) / top if top else 1.0
    return Agreement(n, n_c, n_f, both / same_cluster if same_cluster else 1.0,
                     both / same_family if same_family else 1.0, float(ari))


def clusters_against_truth(clusters: Path, truth: Path, column: str) -> Agreement:
    """A pipeline ``clusters.parquet`` (``id``, ``column``) against a families truth table (``id``, ``family``);
    ids missing from either side are an error (the clustering must cover the generated set)."""
    con = duckdb_connect()
    try:
        cols = con.execute(f"""SELECT c.{column} AS cluster, t.family, (c.id IS NULL) OR (t.id IS NULL) AS missing
            FROM read_parquet({sql_path(clusters)}) c FULL JOIN read_parquet({sql_path(truth)}) t USING (id)
            """).fetchnumpy()
    finally:
        con.close()
    if np.asarray(cols["missing"]).any():
        raise ValueError(f"{clusters} and {truth} do not hold the same ids")
    return partition_agreement(np.asarray(cols["cluster"]), np.asarray(cols["family"]))
