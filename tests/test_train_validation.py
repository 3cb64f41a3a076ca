"""Validation during training: valid/loss and valid/perplexity at the right steps, deterministic (a function
of the weights: same value for the same weights, also after a resume), equal to a direct computation on
the same masked batches, and written to JSONL, TensorBoard and lineage.

    .venv/bin/python -m pytest -q tests/test_train_validation.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline_lib.lineage import LineageStore
from pipeline_lib.train.batching import IGNORE
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.loop import Trainer
from pipeline_lib.train.model import masked_logits
from pipeline_lib.train.parallel import DistEnv
from pipeline_lib.train.synthetic import write_synthetic_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Synthetic train and valid splits in one shard directory (two writes, manifests merged)."""
    root = tmp_path_factory.mktemp("val")
    out = write_synthetic_shards(root / "s", rows=128, row_group_rows=8, seed=3, split="train")
    train_man = json.loads((out / "manifest.json").read_text())
    write_synthetic_shards(out, rows=48, row_group_rows=8, seed=4, split="valid")
    man = json.loads((out / "manifest.json").read_text())
    man["splits"]["train"] = train_man["splits"]["train"]
    (out / "manifest.json").write_text(json.dumps(man))
    return out


def _cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", max_len=96, batch_tokens=384, num_workers=0, warmup_steps=1, total_steps=5, lr=2e-3,
                checkpoint_every=100, export_hf=False, shuffle_window=2, eval_every=2, eval_batches=3)
    return TrainConfig(**{**base, **kw})


def _direct_loss(model: torch.nn.Module, batches) -> float:
    """Mean cross-entropy over every predicted position of ``batches``, computed here from the logits."""
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in batches:
            targets = b.labels != IGNORE
            logits = masked_logits(model, b, targets)
            total += F.cross_entropy(logits, b.labels[targets], reduction="sum").item()
            n += int(targets.sum())
    model.train()
    return total / n


def test_logged_at_eval_steps_and_the_last_one(shards: Path, tmp_path: Path):
    seen: list[dict] = []
    Trainer(_cfg(), shards_dir=shards, output_dir=tmp_path, env=DistEnv(), on_metrics=seen.append).train()
    with_valid = {r["step"]: r for r in seen if "valid/loss" in r}
    assert list(with_valid) == [2, 4, 5]   # every eval_every steps, and the last step
    for r in with_valid.values():
        assert math.isfinite(r["valid/loss"]) and r["valid/perplexity"] == pytest.approx(math.exp(r["valid/loss"]))
        assert r["valid/targets"] > 0
    jsonl = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["valid/loss"] for r in jsonl if "valid/loss" in r} == \
        {s: r["valid/loss"] for s, r in with_valid.items()}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"valid/loss", "valid/perplexity", "train/loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("valid/loss")] == [2, 4, 5]


def test_deterministic_and_equal_to_a_direct_computation(shards: Path, tmp_path: Path):
    trainer = Trainer(_cfg(total_steps=3), shards_dir=shards, output_dir=tmp_path, env=DistEnv())
    first, again = trainer.validate(), trainer.validate()
    assert first == again
    assert first["valid/loss"] == pytest.approx(_direct_loss(trainer.model, trainer.validator.batches), abs=1e-6)
    assert first["valid/targets"] == sum(int((b.labels != IGNORE).sum()) for b in trainer.validator.batches)
    # a second validator (new process, resumed run) masks the same batches
    other = Trainer(_cfg(total_steps=3, seed=7), shards_dir=shards, output_dir=tmp_path / "o", env=DistEnv())
    assert [b.ids for b in other.validator.batches] == [b.ids for b in trainer.validator.batches]
    pairs = zip(other.validator.batches, trainer.validator.batches, strict=False)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in pairs)
    result = trainer.train()
    after = result.metrics[-1]
    assert after["valid/loss"] != first["valid/loss"]          # the weights changed
    resumed = Trainer(_cfg(total_steps=3), shards_dir=shards, output_dir=tmp_path, env=DistEnv())
    assert resumed.step == 3 and resumed.validate()["valid/loss"] == after["valid/loss"]


def test_valid_metrics_reach_lineage(tmp_path: Path):
    from tasks.train import MetricsSink

    store = LineageStore(tmp_path / "lineage.duckdb")
    sink = MetricsSink(store, "run-1")
    sink({"step": 1, "loss": 3.0})
    sink({"step": 2, "loss": 2.5, "valid/loss": 2.75, "valid/perplexity": math.exp(2.75)})
    sink.flush()
    rows = store.query("SELECT name, step, value FROM metrics WHERE name LIKE 'valid/%' ORDER BY name")
    assert rows == [{"name": "valid/loss", "step": 2, "value": 2.75},
                    {"name": "valid/perplexity", "step": 2, "value": pytest.approx(math.exp(2.75))}]


def test_missing_split_fails_at_start(shards: Path, tmp_path: Path):
    from pipeline_lib.errors import DataValidationError

    with pytest.raises(DataValidationError, match="split 'test' not in manifest"):
        Trainer(_cfg(eval_split="test"), shards_dir=shards, output_dir=tmp_path, env=DistEnv())
