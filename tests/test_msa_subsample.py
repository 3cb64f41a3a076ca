"""Row filters and subsampling: budgets, query first, determinism, agreement with the ESM greedy selection."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline_lib.msa.a3m import Msa, read_a3m
from pipeline_lib.msa.config import SubsampleConfig
from pipeline_lib.msa.subsample import (
    filter_rows,
    greedy_select,
    query_identity_coverage,
    random_select,
    rows_allowed,
    subsample_msa,
)

MSA_DIR = Path(__file__).parents[1].parent / "shared" / "fixtures" / "msa"


def _random_msa(depth: int, length: int, seed: int = 0) -> Msa:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY-", np.uint8)
    query = rng.choice(letters[:-1], size=length)
    codes = np.repeat(query[None, :], depth, axis=0)
    flips = rng.random(codes.shape) < rng.random((depth, 1))
    codes[flips] = rng.choice(letters, size=int(flips.sum()))
    codes[0] = query
    rows = tuple(r.tobytes().decode() for r in codes)
    return Msa("q", rows, tuple(f"r{i}" for i in range(depth)), "test")


def _esm_greedy(codes: np.ndarray, num_seqs: int) -> list[int]:
    """The ESM example's greedy_select (mean Hamming distance, np.delete bookkeeping), for comparison."""
    n = len(codes)
    if n <= num_seqs:
        return list(range(n))
    indices, all_idx = [0], np.arange(n)
    dists = np.zeros((0, n))
    for _ in range(num_seqs - 1):
        dists = np.concatenate([dists, (codes[indices[-1]][None, :] != codes).mean(axis=1)[None, :]])
        shifted = np.delete(dists, indices, axis=1).mean(0)
        indices.append(int(np.delete(all_idx, indices)[int(np.argmax(shifted))]))
    return sorted(indices)


@pytest.mark.parametrize("selection", ["greedy", "random"])
@pytest.mark.parametrize("depth, length, max_rows, budget", [(300, 50, 1024, 2 ** 14), (300, 100, 64, 2 ** 14),
                                                             (50, 600, 1024, 2 ** 14), (10, 20000, 1024, 2 ** 14)])
def test_budgets_respected_and_query_first(selection, depth, length, max_rows, budget):
    msa = _random_msa(depth, length)
    cfg = SubsampleConfig(max_rows=max_rows, token_budget=budget, selection=selection)
    out = subsample_msa(msa, cfg)
    assert out.rows[0] == msa.rows[0] and out.headers[0] == "r0"
    assert out.depth == min(depth, rows_allowed(length, cfg))
    assert out.depth <= max_rows and (out.depth * length <= budget or out.depth == 1)
    kept = [int(h[1:]) for h in out.headers]
    assert kept == sorted(kept) and len(set(kept)) == len(kept)   # original order, no duplicates


def test_max_rows_capped_at_1024():
    with pytest.raises(ValidationError):
        SubsampleConfig(max_rows=1025)


def test_deterministic_for_a_seed_and_seed_matters():
    msa = _random_msa(500, 40, seed=1)
    cfg = SubsampleConfig(max_rows=50, selection="random", seed=7)
    a, b = subsample_msa(msa, cfg), subsample_msa(msa, cfg)
    assert a.headers == b.headers
    assert subsample_msa(msa, cfg.model_copy(update={"seed": 8})).headers != a.headers
    g = SubsampleConfig(max_rows=50)
    assert subsample_msa(msa, g).headers == subsample_msa(msa, g).headers


def test_greedy_matches_the_esm_example():
    codes = _random_msa(120, 30, seed=3).array()
    for k in (1, 2, 10, 60, 200):
        assert greedy_select(codes, k).tolist() == _esm_greedy(codes, k)


@pytest.mark.skipif(not MSA_DIR.is_dir(), reason=f"shared fixtures not available: {MSA_DIR}")
def test_greedy_on_the_esm_example_msa():
    msa = read_a3m(MSA_DIR / "1a3a_1_A.a3m")
    assert greedy_select(msa.array(), 128).tolist() == _esm_greedy(msa.array(), 128)
    out = subsample_msa(msa, SubsampleConfig(max_rows=128))
    assert out.depth == 112 and out.rows[0] == msa.rows[0]   # 2**14 // 145 = 112 rows


def test_coverage_and_identity_filters():
    rows = ("MKVLAA", "MKVLAA", "MK----", "MRVLGA", "------")
    msa = Msa("q", rows, tuple(f"r{i}" for i in range(5)))
    identity, coverage = query_identity_coverage(msa.array())
    assert identity.tolist() == pytest.approx([1, 1, 1, 4 / 6, 0])
    assert coverage.tolist() == pytest.approx([1, 1, 2 / 6, 1, 0])
    assert filter_rows(msa.array(), min_coverage=0.5).tolist() == [0, 1, 3]
    assert filter_rows(msa.array(), max_identity=0.9).tolist() == [0, 3, 4]
    out = subsample_msa(msa, SubsampleConfig(min_coverage=0.5, max_identity=0.9))
    assert out.headers == ("r0", "r3")


def test_random_select_draws_distinct_rows():
    rng = np.random.default_rng(0)
    idx = random_select(100, 10, rng)
    assert idx[0] == 0 and len(set(idx.tolist())) == 10 and idx.tolist() == sorted(idx.tolist())
    assert random_select(5, 10, rng).tolist() == [0, 1, 2, 3, 4]
