"""AdamW and the ESM-2 learning-rate schedule.

    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)       # LambdaLR; call sched.step() after each opt.step()

Schedule: linear warmup from lr/warmup to lr over ``warmup_steps``, then linear decay to
``final_lr_ratio`` x lr at ``decay_fraction`` x ``total_steps``, constant afterwards (ESM-2: 2,000
warmup steps, 0.1x over 90% of 500K). Weight decay applies to matrices only (not to biases, LayerNorm
parameters or the embedding, which is also the tied output projection).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from pipeline_lib.train.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def lr_factor(step: int, *, warmup: int, total: int, decay_fraction: float = 0.9, final_ratio: float = 0.1) -> float:
    """Multiplier of the peak LR used by optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    end = max(int(decay_fraction * total), warmup + 1)
    if step >= end:
        return final_ratio
    return 1.0 - (1.0 - final_ratio) * (step - warmup) / (end - warmup)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in decay + no_decay) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    fn = functools.partial(lr_factor, warmup=cfg.warmup_steps, total=cfg.total_steps,
                           decay_fraction=cfg.decay_fraction, final_ratio=cfg.final_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)
