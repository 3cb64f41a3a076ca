"""Atomic training checkpoints: full model weights, optimizer, scheduler, every rank's data and RNG state.

    ckpt = Checkpointer(out_dir / "checkpoints", env, keep=3)
    ckpt.save(step, model, opt, sched, data_state, meta)      # collective: every rank calls it
    step = ckpt.load_latest(model, opt, sched)                 # -> (step, this rank's data state) or None
    export_checkpoint_hf(out_dir / "checkpoints" / "step_00001000", out_dir / "hf")

Layout of ``step_NNNNNNNN/`` (written under a temporary name, renamed when complete):
``model.safetensors`` (fp32, our parameter names), ``train_state.pt`` (optimizer and scheduler state,
per-rank data-loader positions and RNG states; plain tensors and containers, loaded with
``weights_only=True``) and ``meta.json`` (step, model config, vocabulary, train config). Model and
optimizer states are gathered to full (unsharded) tensors on rank 0 through
``torch.distributed.checkpoint.state_dict``, so DDP, FSDP2 and single-process runs share one format.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from pipeline_lib.errors import ConfigError
from pipeline_lib.io import atomic_dir
from pipeline_lib.models.esm2 import ESM2Config
from pipeline_lib.models.hf import export_hf
from pipeline_lib.stage_cache import remove_temporaries_in
from pipeline_lib.train.parallel import DistEnv

__all__ = ["Checkpointer", "export_checkpoint_hf", "rng_state", "set_rng_state"]

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, root: str | Path, env: DistEnv, *, keep: int = 3) -> None:
        self.root, self.env, self.keep = Path(root), env, keep
        if env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_temporaries_in(self.root)

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)))

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def save(self, step: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
             data_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Collective: gathers the full states and each rank's (data, RNG) state; rank 0 writes."""
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(model, options=opts)
        optim_sd = get_optimizer_state_dict(model, opt, options=opts)
        mine = {"data": data_state, "rng": rng_state()}
        ranks: list[Any] = [None] * self.env.world_size
        if self.env.distributed:
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        final = self.path(step)
        if self.env.is_main:
            with atomic_dir(final) as tmp:
                tensors = {k: cast(torch.Tensor, v).detach().to("cpu", torch.float32).contiguous()
                           for k, v in model_sd.items()}
                save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
                torch.save({"step": step, "optimizer": optim_sd, "scheduler": sched.state_dict(), "ranks": ranks,
                            "world_size": self.env.world_size}, tmp / "train_state.pt")
                (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2, default=str) + "\n")
            for old in self.steps()[:-self.keep]:
                shutil.rmtree(self.path(old), ignore_errors=True)
        if self.env.distributed:
            dist.barrier()
        return final

    def load(self, step: int, model: nn.Module, opt: torch.optim.Optimizer | None, sched: Any) -> dict[str, Any]:
        """Restore model / optimizer / scheduler / RNG from ``step``; returns this rank's data-loader state."""
        d = self.path(step)
        state = torch.load(d / "train_state.pt", map_location="cpu", weights_only=True)
        if state["world_size"] != self.env.world_size:
            raise ValueError(f"checkpoint {d} was written by {state['world_size']} ranks; this run has "
                             f"{self.env.world_size} (exact resume needs the same layout)")
        opts = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(model, cast(dict[str, Any], load_file(str(d / "model.safetensors"))), options=opts)
        if opt is not None:
            set_optimizer_state_dict(model, opt, state["optimizer"], options=opts)
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        mine = state["ranks"][self.env.rank]
        set_rng_state(mine["rng"])
        return mine["data"]

    def load_latest(self, model: nn.Module, opt: torch.optim.Optimizer | None,
                    sched: Any) -> tuple[int, dict[str, Any]] | None:
        steps = self.steps()
        if not steps:
            return None
        return steps[-1], self.load(steps[-1], model, opt, sched)


def export_checkpoint_hf(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the Hugging Face ``EsmForMaskedLM`` directory of a checkpoint (no distributed setup needed)."""
    d = Path(ckpt_dir)
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("architecture", "esm2") not in ("esm2", "esm1b"):
        raise ConfigError(f"{d}: a {meta['architecture']} checkpoint has no Hugging Face EsmForMaskedLM form")
    cfg = ESM2Config.from_dict(meta["model"])
    return export_hf(load_file(str(d / "model.safetensors")), out_dir, vocab=meta["vocab"], cfg=cfg)
