"""train stage: ESM-2 / SaProt pretraining on token shards and MSA Transformer pretraining on MSA shards,
single process or torchrun (DDP / FSDP2).

    python -m pipeline_lib.train.run --config cfg.yaml --shards work/shards --out work/train
    argv = build_torchrun_argv(cfg, config_path=..., shards_dir=..., output_dir=...)   # for subprocess
    Trainer(cfg, shards_dir=..., output_dir=..., on_metrics=callback).train()

Modules: ``config`` (TrainConfig), ``data`` (shard index, sampling, streaming), ``batching`` (masking,
packing), ``msa_data`` (MSA shards: crop, depth budget, masking, padded batches), ``loader`` (per-rank
step loader with exact resume), ``model`` (build, meta-device init), ``parallel`` (DDP / FSDP2 / compile /
activation checkpointing), ``optim`` (AdamW + ESM-2 schedule), ``checkpoint``, ``metrics``,
``validation`` (valid/loss), ``loop``, ``run`` (CLI and torchrun argv). Importing this package is cheap; names below
load on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "Trainer", "TrainResult", "NonFiniteLossError", "build_torchrun_argv",
           "load_train_config", "export_checkpoint_hf"]

_WHERE = {"TrainConfig": "config", "Trainer": "loop", "TrainResult": "loop", "NonFiniteLossError": "loop",
          "build_torchrun_argv": "run", "load_train_config": "run", "export_checkpoint_hf": "checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"pipeline_lib.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pipeline_lib.train' has no attribute {name!r}")
