"""Filter and subsample MSA rows for MSA Transformer training: row and token budgets, coverage and
identity filters, greedy maximum-Hamming-distance or seeded random selection. The query stays row 0.

    small = subsample_msa(msa, SubsampleConfig(max_rows=128, token_budget=2**14))

Greedy selection is the ESM examples' ``greedy_select`` (facebookresearch/esm, MSA Transformer paper):
start from the query, repeatedly add the row with the largest *average* Hamming distance to the rows
already chosen, then return the chosen rows in their original order. It is computed incrementally
(one distance row per step), so k selections cost O(k * depth * L).
"""
from __future__ import annotations

import zlib

import numpy as np

from pipeline_lib.msa.a3m import Msa
from pipeline_lib.msa.config import SubsampleConfig

__all__ = ["rows_allowed", "query_identity_coverage", "filter_rows", "greedy_select", "random_select",
           "subsample_msa"]

_GAP = ord("-")


def rows_allowed(query_length: int, cfg: SubsampleConfig) -> int:
    """Rows that fit both budgets: min(max_rows, token_budget // L), at least 1 (the query alone).

    A query longer than the token budget keeps only itself (that single row then exceeds the budget;
    cropping columns is the data loader's job).
    """
    return max(1, min(cfg.max_rows, cfg.token_budget // max(1, query_length)))


def query_identity_coverage(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: identity to the query over the row's aligned residues, and the fraction of query residues
    the row covers (non-gap). ``codes``: (depth, L) uint8 ASCII; returns two float arrays of shape (depth,)."""
    query_res = codes[0] != _GAP
    aligned = (codes != _GAP) & query_res[None, :]
    n_aligned = aligned.sum(axis=1)
    same = ((codes == codes[0][None, :]) & aligned).sum(axis=1)
    identity = same / np.maximum(n_aligned, 1)
    coverage = n_aligned / max(1, int(query_res.sum()))
    return identity, coverage


def filter_rows(codes: np.ndarray, *, min_coverage: float = 0.0, max_identity: float = 1.0) -> np.ndarray:
    """Indices of the query (always) and the rows with coverage >= min_coverage and identity <= max_identity."""
    identity, coverage = query_identity_coverage(codes)
    ok = (coverage >= min_coverage) & (identity <= max_identity + 1e-9)
    ok[0] = True
    return np.flatnonzero(ok)


def greedy_select(codes: np.ndarray, num_rows: int) -> np.ndarray:
    """ESM greedy maximum average Hamming distance selection; sorted indices, 0 (the query) first."""
    n = codes.shape[0]
    if n <= num_rows:
        return np.arange(n)
    chosen = np.zeros(n, dtype=bool)
    chosen[0] = True
    total = np.zeros(n, dtype=np.int64)  # sum of Hamming distances to the chosen rows (argmax of the mean)
    last = 0
    for _ in range(num_rows - 1):
        total += (codes != codes[last][None, :]).sum(axis=1)
        score = np.where(chosen, -1, total)
        last = int(np.argmax(score))  # first maximum on ties, as in the ESM example
        chosen[last] = True
    return np.flatnonzero(chosen)


def random_select(n: int, num_rows: int, rng: np.random.Generator) -> np.ndarray:
    """The query plus ``num_rows - 1`` distinct other rows drawn by ``rng``; sorted indices."""
    if n <= num_rows:
        return np.arange(n)
    others = rng.choice(np.arange(1, n), size=num_rows - 1, replace=False)
    return np.concatenate(([0], np.sort(others)))


def _rng(cfg: SubsampleConfig, query_id: str) -> np.random.Generator:
    # the seed is mixed with the query id so every MSA gets its own, reproducible draw
    return np.random.default_rng([cfg.seed, zlib.crc32(query_id.encode())])


def subsample_msa(msa: Msa, cfg: SubsampleConfig) -> Msa:
    """Apply the coverage / identity filters, then select rows within both budgets (query first)."""
    codes = msa.array()
    keep = filter_rows(codes, min_coverage=cfg.min_coverage, max_identity=cfg.max_identity)
    limit = rows_allowed(msa.query_length, cfg)
    if len(keep) > limit:
        if cfg.selection == "greedy":
            picked = greedy_select(codes[keep], limit)
        else:
            picked = random_select(len(keep), limit, _rng(cfg, msa.query_id))
        keep = keep[picked]
    if len(keep) == msa.depth:
        return msa
    return msa.take(keep)
