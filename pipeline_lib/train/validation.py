"""Masked-LM validation during training: loss and perplexity on a fixed set of masked batches.

    validator = Validator(cfg, shards_dir, env)     # reads and masks its batches once, at start-up
    validator.run(model, autocast=ctx_factory)      # -> {"valid/loss": 2.1, "valid/perplexity": 8.2, ...}

Each rank takes data shard ``rank`` of ``world_size`` of ``cfg.eval_split`` (every row, no cluster
sampling), masked with a constant seed (:data:`EVAL_SEED`, not the training seed), and keeps the first
``eval_batches`` batches. The batches are therefore the same at every evaluation, after a resume and
across runs with different training seeds, so the values are comparable and a function of the weights
alone. The loss is the mean cross-entropy over every predicted position of all ranks (sums all-reduced);
the model runs in eval mode (no dropout) and without gradients.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib.train.batching import IGNORE, Batch
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.loader import build_index, micro_batches
from pipeline_lib.train.model import masked_logits
from pipeline_lib.train.parallel import DistEnv, all_reduce_sum

__all__ = ["Validator", "EVAL_SEED"]

EVAL_SEED = 0x5EED  # fixed: the validation masks do not change with train.seed


class Validator:
    def __init__(self, cfg: TrainConfig, shards_dir: str | Path, env: DistEnv) -> None:
        self.cfg, self.env = cfg, env
        every_row = cfg.model_copy(update={"cluster_level": None})
        index = build_index(every_row, shards_dir, split=cfg.eval_split)
        stream = micro_batches(index, every_row, shard=env.rank, num_shards=env.world_size, seed=EVAL_SEED)
        self.batches: list[Batch] = [b for b, _ in itertools.islice(stream, cfg.eval_batches)]

    @torch.no_grad()
    def run(self, model: nn.Module, *,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, Any]:
        """Evaluate ``model`` (the unwrapped module; an FSDP2 model is the sharded module itself)."""
        was_training = model.training
        model.eval()
        loss_sum, n_targets = 0.0, 0.0
        try:
            for b in self.batches:
                b = b.to(self.env.device)
                targets = b.labels != IGNORE
                with autocast():
                    logits = masked_logits(model, b, targets, self.cfg.attn_backend)
                loss_sum += float(F.cross_entropy(logits.float(), b.labels[targets], reduction="sum"))
                n_targets += int(targets.sum())
        finally:
            model.train(was_training)
        loss_sum, n_targets = all_reduce_sum([loss_sum, n_targets], self.env)
        loss = loss_sum / max(n_targets, 1.0)
        return {"valid/loss": loss, "valid/perplexity": math.exp(min(loss, 50.0)), "valid/targets": int(n_targets)}
