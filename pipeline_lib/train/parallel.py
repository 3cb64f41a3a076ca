"""Distributed setup and model wrapping, applied from outside the model (torchtitan order).

    dist_env = init_distributed()                       # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    model = parallelize(model, cfg, dist_env)           # activation checkpointing -> compile -> DDP | FSDP2

Activation checkpointing uses the composable ``checkpoint`` (parameter names are unchanged); compile is
``Module.compile()`` per transformer block (names unchanged too); DDP wraps the model
(``DistributedDataParallel``, gloo on CPU, NCCL on GPU); FSDP2 is ``fully_shard`` on every block and
then on the root (embedding, tied LM head and final norm are sharded with the root). Works for ESM-2 and
the MSA Transformer alike (both keep their blocks in ``model.layers``). ``meta_init`` models are
materialised here, after sharding.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from pipeline_lib.train.config import TrainConfig

__all__ = ["DistEnv", "init_distributed", "parallelize", "uses_bf16", "grad_sync", "all_reduce_sum",
           "close_distributed"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int = 1800) -> DistEnv:
    """Process group from torchrun's environment (a single process needs none)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, world, local, device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over ranks (float64, one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


def _layers(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks (every architecture here keeps them in ``layers``)."""
    return cast(nn.ModuleList, model.layers)


def _apply_ac(model: nn.Module) -> None:
    from torch.distributed._composable import checkpoint

    for block in _layers(model):
        checkpoint(block)


def _apply_compile(model: nn.Module) -> None:
    for block in _layers(model):
        block.compile(dynamic=None)


def _apply_fsdp(model: nn.Module, env: DistEnv, param_dtype: torch.dtype | None = None,
                dtype_reduce: torch.dtype = torch.float32) -> None:
    """``param_dtype`` bf16 (training in bf16 on GPU) all-gathers and computes in bf16 while the optimizer
    keeps fp32 shards, as torchtitan does; gradients are reduced in fp32 either way."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=dtype_reduce)
    layers = _layers(model)
    n = len(layers)
    for i, block in enumerate(layers):
        # the last block's parameters are needed again at once in backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < n - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def uses_bf16(cfg: TrainConfig, env: DistEnv) -> bool:
    """bf16 autocast: asked for, or ``auto`` on a GPU."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")


def parallelize(model: nn.Module, cfg: TrainConfig, env: DistEnv) -> nn.Module:
    """Return the module to call in training (DDP wrapper, or the model itself, sharded in place by FSDP2).

    A model on the meta device is materialised (``to_empty`` + init from ``cfg.seed``) after FSDP2 has
    sharded it, so each rank allocates only its shard; DDP needs the full weights, so it materialises first.
    """
    from pipeline_lib.train.model import is_meta, materialize

    meta = is_meta(model)
    sharded = cfg.strategy == "fsdp" and env.distributed
    if meta and not sharded:
        materialize(model, env.device, seed=cfg.seed)
    elif not meta:
        model.to(env.device)
    if cfg.activation_checkpointing:
        _apply_ac(model)
    if cfg.compile:
        _apply_compile(model)
    if cfg.strategy == "fsdp":
        if sharded:
            bf16_params = uses_bf16(cfg, env) and env.device.type == "cuda"
            _apply_fsdp(model, env, param_dtype=torch.bfloat16 if bf16_params else None)
            if meta:
                materialize(model, env.device, seed=cfg.seed, rank=env.rank)
        return model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.local_rank] if env.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    return model


@contextlib.contextmanager
def grad_sync(wrapped: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of a step (DDP no_sync / FSDP2 flag)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(wrapped, DDP) and not sync:
        with wrapped.no_sync():
            yield
    elif isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(sync)
        yield
    else:
        yield
