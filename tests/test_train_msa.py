"""MSA Transformer training from MSA shards: crop / depth budget, masking statistics, padding, loader
resume, a tiny model learning a repeated batch, and a resumed run equal to an uninterrupted one.

The MSA shards are written by the msa stage's writer from the real A3M fixtures (ESM examples, HH-suite),
each alignment split into several MSAs (query + a block of its other rows).

    .venv/bin/python -m pytest -q tests/test_train_msa.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.a3m import Msa, read_a3m
from pipeline_lib.msa.tokens import MSA_SHARD_SCHEMA, read_msa_tokens, tokenize_msa, write_msa_shards
from pipeline_lib.tokenizer import ESM_ALPHABET
from pipeline_lib.train.batching import IGNORE
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.loader import StepLoader
from pipeline_lib.train.loop import Trainer
from pipeline_lib.train.msa_data import MsaBatch, MsaBatcher, MsaMasker, MsaShardIndex
from pipeline_lib.train.parallel import DistEnv
from pipeline_lib.train.synthetic import write_synthetic_shards
from tests.conftest import fixture_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GAP, CLS, PAD, MASK = (ESM_ALPHABET.index["-"], ESM_ALPHABET.cls_idx, ESM_ALPHABET.pad_idx, ESM_ALPHABET.mask_idx)


def _fixture_msas() -> list[Msa]:
    """The three fixture alignments cut into MSAs of the query plus 8-row blocks (distinct query ids)."""
    out = []
    for name in ("1a3a_1_A.a3m", "hhsuite_query.a3m", "UniRef50_E9K9Y4.a3m"):
        msa = read_a3m(fixture_path("msa", name))
        for i, start in enumerate(range(1, min(msa.depth, 1 + 8 * 12), 8)):
            part = msa.take([0, *range(start, min(start + 8, msa.depth))])
            out.append(Msa(f"{msa.query_id}_{i}", part.rows, part.headers, part.source))
    return out


@pytest.fixture(scope="module")
def msa_shards(tmp_path_factory) -> Path:
    msas = _fixture_msas()
    out = tmp_path_factory.mktemp("msa") / "shards"
    write_msa_shards({"train": msas[:-4], "valid": msas[-4:]}, out, row_group_rows=2, rows_per_shard=8)
    return out


def _cfg(**kw) -> TrainConfig:
    base = dict(architecture="msa_transformer", model="tiny", max_len=48, msa_max_tokens=480, batch_tokens=960,
                num_workers=0, grad_accum=1, warmup_steps=1, total_steps=4, lr=3e-3, checkpoint_every=100,
                shuffle_window=2)
    return TrainConfig(**{**base, **kw})


def _records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_crop_keeps_query_and_whole_rows_within_the_budgets():
    msa = read_a3m(fixture_path("msa", "1a3a_1_A.a3m"))   # 1024 rows x 145 columns
    ids = tokenize_msa(msa)
    masker = MsaMasker(max_len=64, max_rows=40, max_tokens=1024, seed=1)
    for row in range(5):
        s = masker(ids, row=row, epoch=0)
        original = np.where(s.labels != IGNORE, s.labels, s.tokens)  # undo the masking
        r, c = original.shape
        assert c == 64 and r == 1024 // 64 and r * c <= 1024   # token budget binds before max_rows
        assert (original[:, 0] == CLS).all() and (s.labels[:, 0] == IGNORE).all()
        body = original[:, 1:]
        start = next(i for i in range(ids.shape[1] - 62) if np.array_equal(ids[0, i:i + 63], body[0]))
        window = ids[:, start:start + 63]
        assert np.array_equal(body[0], window[0])               # the query stays row 0
        picked = [next(j for j in range(ids.shape[0]) if np.array_equal(window[j], b)) for b in body]
        assert picked == sorted(picked) and len(set(picked)) == r  # distinct rows, alignment order
    few = masker(ids[:5, :20], row=0, epoch=0)
    assert few.tokens.shape == (5, 21)                          # small MSAs are kept whole
    a, b = masker(ids, row=3, epoch=1), masker(ids, row=3, epoch=1)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, masker(ids, row=3, epoch=2).labels)


@pytest.mark.parametrize("mask_gaps", [True, False])
def test_masking_statistics_and_gap_rule(mask_gaps: bool):
    msas = [tokenize_msa(m) for m in _fixture_msas()]
    masker = MsaMasker(max_len=1024, max_rows=1024, max_tokens=1 << 14, mask_gaps=mask_gaps, seed=0)
    maskable = selected = masked = kept = gaps_selected = 0
    for epoch in range(3):
        for row, ids in enumerate(msas):
            s = masker(ids, row=row, epoch=epoch)
            sel = s.labels != IGNORE
            original = np.where(sel, s.labels, s.tokens)
            assert not sel[:, 0].any() and np.array_equal(s.tokens[~sel], original[~sel])
            ok = original != CLS if mask_gaps else (original != CLS) & (original != GAP)
            assert not (sel & ~ok).any()
            maskable += ok.sum()
            selected += sel.sum()
            masked += (s.tokens[sel] == MASK).sum()
            kept += (s.tokens[sel] == original[sel]).sum()
            gaps_selected += (sel & (original == GAP)).sum()
    assert selected / maskable == pytest.approx(0.15, abs=0.005)
    assert masked / selected == pytest.approx(0.80, abs=0.01)
    assert kept / selected == pytest.approx(0.10 + 0.10 / 20, abs=0.01)  # a random residue may equal the original
    assert (gaps_selected > 100) if mask_gaps else gaps_selected == 0


def test_batches_pad_msas_and_never_predict_padding():
    msas = [tokenize_msa(m) for m in _fixture_msas()[:6]]
    masker = MsaMasker(max_len=40, max_tokens=400, seed=0)
    samples = [({"epoch": 0, "window": 0, "offset": i}, masker(m, row=i, epoch=0)) for i, m in enumerate(msas)]
    out = list(MsaBatcher(batch_tokens=1200).batches(samples))
    assert sum(len(b.ids) for b, _ in out) == 6 and out[-1][1] is None
    for b, _ in out:
        assert isinstance(b, MsaBatch) and b.tokens.numel() <= 1200 and b.model_inputs() == {}
        pad = b.tokens == PAD
        assert (b.labels[pad] == IGNORE).all() and b.n_tokens == int((~pad).sum())
        assert b.n_targets == int((b.labels != IGNORE).sum())
    with pytest.raises(DataValidationError, match="exceeds batch_tokens"):
        list(MsaBatcher(batch_tokens=100).batches(samples[:1]))


def test_index_reads_the_msa_shards_and_rejects_sequence_shards(msa_shards: Path, tmp_path: Path):
    index = MsaShardIndex(msa_shards, split="train")
    first = json.loads((msa_shards / "manifest.json").read_text())["splits"]["train"]["files"][0]["path"]
    (qid, ids), = read_msa_tokens(msa_shards / first)[:1]
    (row,) = index.read_rows(0, np.array([0]), {})
    assert row.id == qid and np.array_equal(row.tokens, ids) and row.tokens.ndim == 2
    seq = write_synthetic_shards(tmp_path / "seq", rows=16, row_group_rows=8)
    with pytest.raises(DataValidationError):
        MsaShardIndex(seq, split="train")
    # a corrupt shard (rows of one MSA differ in length) is named with its file
    bad = tmp_path / "bad"
    (bad / "train").mkdir(parents=True)
    table = pa.table({"query_id": ["q"], "depth": pa.array([2], pa.int32()), "neff": pa.array([1.0], pa.float32()),
                      "length": pa.array([3], pa.int32()),
                      "msa_tokens": pa.array([[[5, 6, 7], [5, 6]]], MSA_SHARD_SCHEMA.field("msa_tokens").type)},
                     schema=MSA_SHARD_SCHEMA)
    pq.write_table(table, bad / "train" / "part-00000.parquet")
    (bad / "manifest.json").write_text(json.dumps({"kind": "msa", "splits": {"train": {
        "files": [{"path": "train/part-00000.parquet"}]}}}))
    with pytest.raises(DataValidationError, match="rows of different lengths") as err:
        MsaShardIndex(bad).read_rows(0, np.array([0]), {})
    assert "part-00000.parquet" in str(err.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_resumes_exactly(msa_shards: Path, workers: int):
    cfg = _cfg(grad_accum=2, num_workers=workers)
    loader = StepLoader(cfg, msa_shards)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    expected = [[b.ids for b in next(it)] for _ in range(4)]
    resumed = iter(StepLoader(cfg, msa_shards, state=state))
    assert [[b.ids for b in next(resumed)] for _ in range(4)] == expected


def test_tiny_msa_transformer_learns_a_repeated_batch(msa_shards: Path, tmp_path: Path):
    trainer = Trainer(_cfg(lr=3e-3, warmup_steps=1, total_steps=100, clip_grad_norm=None), shards_dir=msa_shards,
                      output_dir=tmp_path, env=DistEnv())
    micro = next(iter(trainer.loader))
    assert micro[0].tokens.ndim == 3
    losses = [trainer.train_step(micro)["loss"] for _ in range(15)]
    assert losses[-1] < 0.6 * losses[0], losses


def test_resume_matches_uninterrupted_run_with_validation(msa_shards: Path, tmp_path: Path):
    """Losses, lr and the validation values at steps 2 and 4 of a run stopped after step 2 and resumed
    equal an uninterrupted run's (dropout RNG, data position and optimizer restored)."""
    cfg = _cfg(eval_every=2, eval_batches=2, eval_split="valid", export_hf=True)
    full = Trainer(cfg, shards_dir=msa_shards, output_dir=tmp_path / "full", env=DistEnv()).train()
    Trainer(cfg.model_copy(update={"max_steps": 2}), shards_dir=msa_shards, output_dir=tmp_path / "split",
            env=DistEnv()).train()
    second = Trainer(cfg, shards_dir=msa_shards, output_dir=tmp_path / "split", env=DistEnv())
    assert second.step == 2
    second.train()
    a, b = _records(tmp_path / "full"), _records(tmp_path / "split")
    assert list(a) == [1, 2, 3, 4] and a == {s: {**b[s], "tokens_per_s": a[s]["tokens_per_s"],
                                                 "step_time_s": a[s]["step_time_s"]} for s in b}
    assert [s for s in a if "valid/loss" in a[s]] == [2, 4]
    assert full.hf_dir is None and json.loads((full.checkpoint / "meta.json").read_text())["architecture"] \
        == "msa_transformer"


def test_end_to_end_refuses_to_evaluate_an_msa_transformer_before_any_work(prefect_harness, capsys, tmp_path):
    from flows.cli import main as plm
    from tests.conftest import ROOT

    argv = ["run", str(ROOT / "configs" / "demo.yaml"), "--set", f"workdir={tmp_path / 'work'}",
            "--set", "train.architecture=msa_transformer", "--set", "train.msa_max_tokens=4096",
            "--set", "evaluate.enabled=true"]
    assert plm(argv) == 2
    assert "evaluate.enabled" in capsys.readouterr().err
    assert not list((tmp_path / "work").glob("stages/*"))  # no stage ran
