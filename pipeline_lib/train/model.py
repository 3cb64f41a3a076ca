"""The network a run trains, its initialisation (on CPU or the meta device) and its masked-LM forward.

    model, vocab = build_model(cfg)                    # fp32 on CPU, initialised from cfg.seed
    model, vocab = build_model(cfg, device="meta")     # shapes only, no storage
    materialize(model, torch.device("cpu"), seed=cfg.seed)   # to_empty + reset_parameters

Initialisation is always ``torch.manual_seed(seed); model.reset_parameters()`` after construction, so a
model built on the meta device and materialised later (after FSDP2 has sharded it, so that no rank ever
holds the full weights of a 3B / 15B model) gets the same values as one built directly, on one process.
Sharded, each rank seeds ``seed + rank``: where DTensor has no RNG tracker (CPU / gloo) every rank draws
its own shard from its own stream, so shards differ (one seed would repeat the same rows in every shard,
symmetric units that never separate); on CUDA DTensor's tracker, synchronised from rank 0, draws the
values of one full tensor. Either way they are not bitwise those of the unsharded init.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_lib.errors import ConfigError
from pipeline_lib.models.esm2 import ESM2, flops_per_token
from pipeline_lib.models.flavors import model_config
from pipeline_lib.models.hf import import_hf
from pipeline_lib.models.msa import MSATransformer, msa_config, msa_flops_per_token
from pipeline_lib.train.batching import Batch
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.msa_data import MsaBatch

__all__ = ["build_model", "init_weights", "materialize", "is_meta", "model_flops_per_token", "masked_logits"]


def build_model(cfg: TrainConfig, *, device: str | torch.device | None = None) -> tuple[nn.Module, str]:
    """The model in fp32: from ``init_from`` (HF directory, always on CPU) or a flavor / explicit shape."""
    model: nn.Module
    if cfg.init_from:
        model, vocab = import_hf(cfg.init_from)
        if vocab is not None and vocab != cfg.vocab:
            raise ConfigError(f"train.init_from {cfg.init_from} has the {vocab} vocabulary, train.vocab is {cfg.vocab}")
        return model, cfg.vocab
    shape = (cfg.shape.num_layers, cfg.shape.hidden_size, cfg.shape.num_heads) if cfg.shape else None
    ffn = cfg.shape.intermediate_size if cfg.shape else None
    with torch.device(device or "cpu"):
        if cfg.architecture == "msa_transformer":
            model = MSATransformer(msa_config(cfg.model, shape=shape, ffn_size=ffn,
                                                         max_positions=max(1024, cfg.max_len),
                                                         max_rows=max(1024, cfg.msa_max_rows)))
        else:
            model = ESM2(model_config(cfg.model, vocab=cfg.vocab, shape=shape, intermediate_size=ffn,
                                      architecture=cfg.architecture, max_len=max(1024, cfg.max_len)))
    if not is_meta(model):
        init_weights(model, cfg.seed)
    return model, cfg.vocab


def is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    model.reset_parameters()  # type: ignore[operator]


def materialize(model: nn.Module, device: torch.device, *, seed: int, rank: int = 0) -> None:
    """Allocate a meta-device (possibly FSDP2-sharded) model on ``device`` and initialise it from ``seed``
    (``rank``: this rank's offset for a sharded model, see the module docstring)."""
    model.to_empty(device=device)
    init_weights(model, seed + rank)


def model_flops_per_token(model: nn.Module) -> float:
    """6 N training FLOPs per token (the MFU convention)."""
    if isinstance(model, MSATransformer):
        return msa_flops_per_token(model.cfg)
    return flops_per_token(model.cfg)  # type: ignore[arg-type]


def masked_logits(model: nn.Module, b: Batch, targets: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Logits (N, vocab) at the N predicted positions of a sequence or MSA batch (``model`` may be wrapped)."""
    if isinstance(b, MsaBatch):
        return model(b.tokens, output_mask=targets)
    return model(b.tokens, output_mask=targets, backend=backend, **b.model_inputs())
