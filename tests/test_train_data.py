"""Training data: masking statistics, cropping, cluster sampling, rank sharding, batching and exact resume.

    .venv/bin/python -m pytest -q tests/test_train_data.py
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET
from pipeline_lib.train.batching import IGNORE, Batcher, Masker
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.data import SampleStream, ShardIndex
from pipeline_lib.train.loader import StepLoader
from pipeline_lib.train.synthetic import write_synthetic_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards") / "s", rows=384, row_group_rows=16,
                                  rows_per_file=128, seed=1)


def _protein(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array(ESM_ALPHABET.encode("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n))), dtype=np.int64)


def test_masking_statistics_80_10_10():
    rng = np.random.default_rng(0)
    masker = Masker(ESM_ALPHABET, max_len=1024, seed=0)
    residues = selected = masked = changed = kept = 0
    for row in range(400):
        toks = _protein(rng, int(rng.integers(50, 400)))
        s = masker(toks, row=row, epoch=0)
        sel = s.labels != IGNORE
        assert not sel[0] and not sel[-1]                       # never <cls> / <eos>
        assert np.array_equal(s.labels[sel], toks[sel])
        residues += len(toks) - 2
        selected += sel.sum()
        masked += (s.tokens[sel] == ESM_ALPHABET.mask_idx).sum()
        changed += ((s.tokens[sel] != ESM_ALPHABET.mask_idx) & (s.tokens[sel] != toks[sel])).sum()
        kept += (s.tokens[sel] == toks[sel]).sum()
        assert np.array_equal(s.tokens[~sel], toks[~sel])
    assert selected / residues == pytest.approx(0.15, abs=0.005)
    assert masked / selected == pytest.approx(0.80, abs=0.02)
    assert changed / selected == pytest.approx(0.10 * 19 / 20, abs=0.015)  # a random residue may equal the original
    assert kept / selected == pytest.approx(0.10 + 0.10 / 20, abs=0.015)


def test_masking_is_a_function_of_seed_epoch_row():
    toks = _protein(np.random.default_rng(1), 300)
    m = Masker(ESM_ALPHABET, seed=3)
    a, b = m(toks, row=7, epoch=2), m(toks, row=7, epoch=2)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, m(toks, row=7, epoch=3).labels)


def test_crop_is_a_contiguous_window_with_specials():
    toks = _protein(np.random.default_rng(2), 3000)
    s = Masker(ESM_ALPHABET, max_len=1024, mask_prob=0.01, seed=0)(toks, row=0, epoch=0)
    assert len(s.tokens) == 1024 and s.tokens[0] == 0 and s.tokens[-1] == 2
    orig = np.where(s.labels != IGNORE, s.labels, s.tokens)[1:-1]
    body = toks[1:-1]
    starts = [i for i in range(len(body) - 1021) if np.array_equal(body[i:i + 1022], orig)]
    assert len(starts) == 1


def test_saprot_masking_keeps_the_3di_letter():
    ab = SAPROT_ALPHABET
    rng = np.random.default_rng(3)
    aa, di = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 500)), "".join(rng.choice(list("pynwrqhgdl"), 500))
    toks = np.array(ab.encode_pairs(aa, di), dtype=np.int64)
    s = Masker(ab, seed=0)(toks, row=0, epoch=0)
    sel = np.flatnonzero(s.labels != IGNORE)
    assert len(sel) == pytest.approx(75, abs=2)
    new = [ab.tokens[i] for i in s.tokens[sel]]
    old = [ab.tokens[i] for i in toks[sel]]
    assert all(n[1] == o[1] for n, o in zip(new, old, strict=False))            # 3Di letter kept
    assert sum(n[0] == "#" for n in new) / len(sel) == pytest.approx(0.8, abs=0.1)
    s2 = Masker(ab, seed=0, saprot_mask="mask_token")(toks, row=0, epoch=0)
    assert (s2.tokens == ab.mask_idx).sum() > 0.6 * len(sel)


def test_one_member_per_cluster_each_epoch(shards: Path):
    index = ShardIndex(shards, column="tokens", cluster_level="c50")
    assert index.num_clusters == 96 and index.num_units == 24
    picks = []
    for epoch in range(60):
        rows = index.select(epoch, seed=0)
        assert len(rows) == 96 and len(set(rows // 4)) == 96     # synthetic c50 clusters are rows // 4
        picks.append(rows)
    counts = np.bincount(np.concatenate(picks) % 4, minlength=4) / (60 * 96)
    assert np.allclose(counts, 0.25, atol=0.03)                   # members drawn uniformly
    assert len(ShardIndex(shards, column="tokens").select(0, 0)) == 384
    assert ShardIndex(shards, column="tokens", cluster_level="auto").cluster_level == "c50"   # the coarsest


def test_cluster_index_is_cached_and_invalidated_by_the_manifest(tmp_path: Path, monkeypatch):
    """The second build reads no cluster column; changing a file hash in the manifest rebuilds it."""
    import json

    import pyarrow.parquet as pq

    from pipeline_lib.train import data

    d = write_synthetic_shards(tmp_path / "s", rows=64, row_group_rows=8, seed=5)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    cache = tmp_path / "cache"
    reads: list[list[str]] = []
    real = pq.read_table
    monkeypatch.setattr(data.pq, "read_table", lambda *a, **kw: reads.append(kw.get("columns")) or real(*a, **kw))
    first = ShardIndex(d, cluster_level="c50", cache_dir=cache)
    assert reads == [["cluster_c50"]] and first.cluster_cache_path("cluster_c50", cache).is_file()
    second = ShardIndex(d, cluster_level="c50", cache_dir=cache)
    assert reads == [["cluster_c50"]]                                  # served from the cache
    assert np.array_equal(second.cluster_rows, first.cluster_rows)
    assert np.array_equal(second.cluster_offsets, first.cluster_offsets)
    assert np.array_equal(second.select(3, seed=1), first.select(3, seed=1))
    ShardIndex(d, cluster_level="c90", cache_dir=cache)
    assert reads[-1] == ["cluster_c90"]                                # another level, another entry
    ShardIndex(d, cluster_level="c50")
    assert len(reads) == 3                                             # no cache_dir: no cache
    man = json.loads((d / "manifest.json").read_text())
    man["splits"]["train"]["files"][0]["sha256"] = "0" * 64           # the shards were rewritten
    (d / "manifest.json").write_text(json.dumps(man))
    third = ShardIndex(d, cluster_level="c50", cache_dir=cache)
    assert len(reads) == 4 and reads[-1] == ["cluster_c50"]
    path = third.cluster_cache_path("cluster_c50", cache)
    assert path != first.cluster_cache_path("cluster_c50", cache)
    path.write_bytes(b"damaged")                                       # a damaged cache is rebuilt
    ShardIndex(d, cluster_level="c50", cache_dir=cache)
    assert len(reads) == 5 and not list(cache.glob("*.tmp-*"))
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before   # the shard directory is untouched


def test_streams_shard_an_epoch_disjointly_and_deterministically(shards: Path):
    index = ShardIndex(shards, column="tokens", cluster_level="c50")
    seen = []
    for shard in range(3):
        stream = SampleStream(index, shard=shard, num_shards=3, seed=0, window=2)
        rows = [r.row for pos, r in itertools.takewhile(lambda x: x[0]["epoch"] == 0, stream)]
        again = [r.row for pos, r in itertools.islice(SampleStream(index, shard=shard, num_shards=3, seed=0, window=2),
                                                      len(rows))]
        assert rows == again
        seen.append(set(rows))
    assert sum(len(s) for s in seen) == 96 and set.union(*seen) == set(index.select(0, 0).tolist())
    # resuming at a position gives the same continuation
    stream = SampleStream(index, shard=1, num_shards=3, seed=0, window=2)
    items = list(itertools.islice(stream, 50))
    resumed = SampleStream(index, shard=1, num_shards=3, seed=0, window=2, state=items[20][0])
    assert [r.row for _, r in itertools.islice(resumed, 30)] == [r.row for _, r in items[20:]]


def test_packed_and_padded_batches_respect_the_budget(shards: Path):
    index = ShardIndex(shards, column="tokens")
    masker = Masker(ESM_ALPHABET, max_len=128, seed=0)
    stream = SampleStream(index, shard=0, num_shards=1, seed=0)
    samples = [(pos, masker(r.tokens, row=r.row, epoch=0, id=r.id)) for pos, r in itertools.islice(stream, 80)]
    packed = list(Batcher(max_len=128, batch_tokens=512, packing=True, pad_id=1).batches(samples))
    for b, _ in packed:
        assert b.tokens.shape == (4, 128)
        assert int((b.doc_ids >= 0).sum()) == b.n_tokens == int((b.tokens != 1).sum())
        assert int(b.cu_seqlens[-1]) == b.tokens.numel() and b.max_seqlen <= 128
        seg = torch.diff(b.cu_seqlens.long())
        flat_doc = b.doc_ids.flatten()
        starts = b.cu_seqlens[:-1].long()
        # one doc per segment
        assert all(len(set(flat_doc[s:s + n].tolist())) == 1 for s, n in zip(starts, seg, strict=False))
        assert torch.equal(b.position_ids[b.doc_ids >= 0].min(), torch.tensor(0))
    padded = list(Batcher(max_len=128, batch_tokens=512, packing=False, pad_id=1).batches(samples))
    for b, _ in padded:
        assert b.tokens.numel() <= 512 and b.tokens.shape[1] % 8 == 0 and b.doc_ids is None
    n_packed = sum(len(b.ids) for b, _ in packed)
    assert [i for b, _ in packed for i in b.ids] == [s.id for _, s in samples[:n_packed]]  # stream order kept


def test_world_times_accum_fixes_the_global_batch(shards: Path):
    """2 ranks x 1 micro-batch read exactly what 1 rank x 2 micro-batches reads."""
    base = dict(max_len=128, batch_tokens=512, num_workers=0, cluster_level="c50", shuffle_window=2)
    one = iter(StepLoader(TrainConfig(grad_accum=2, **base), shards))
    two = [iter(StepLoader(TrainConfig(grad_accum=1, **base), shards, rank=r, world_size=2)) for r in range(2)]
    for _ in range(4):
        a = next(one)
        b = [next(it)[0] for it in two]
        assert [x.ids for x in a] == [x.ids for x in b]
        assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_resumes_exactly(shards: Path, workers: int):
    cfg = TrainConfig(max_len=128, batch_tokens=512, num_workers=workers, grad_accum=2, shuffle_window=2)
    loader = StepLoader(cfg, shards)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(4)]
    it2 = iter(StepLoader(cfg, shards, state=state))
    got = [next(it2) for _ in range(4)]
    for s1, s2 in zip(expected, got, strict=False):
        for a, b in zip(s1, s2, strict=False):
            assert a.ids == b.ids and torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="same ranks"):
        StepLoader(cfg.model_copy(update={"grad_accum": 1}), shards, state=state)
