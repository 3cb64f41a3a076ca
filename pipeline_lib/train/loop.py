"""The training loop: one process of a torchrun job (or a plain single process).

    result = Trainer(cfg, shards_dir="work/shards", output_dir="work/train", on_metrics=print).train()

Each step takes ``grad_accum`` micro-batches per rank. The loss is the mean over every predicted position
of the global batch: each micro-batch's summed cross-entropy is divided by the all-reduced count of
targets (times world size, undoing DDP/FSDP gradient averaging), so any split of the same global batch
over ranks and micro-batches gives the same gradients. A non-finite loss or gradient norm raises
:class:`NonFiniteLossError` (with the step and the sample ids) before the optimizer touches the weights.
Checkpoints every ``checkpoint_every`` steps and at the end; a restarted run resumes from the newest one
with the same model, optimizer, schedule, data position and RNG, so its losses equal an uninterrupted
run's. Metrics per step: loss, perplexity, lr, grad norm, tokens/s (non-padding), MFU, GPU memory; every
``eval_every`` steps and at the last also ``valid/loss`` and ``valid/perplexity`` (:mod:`.validation`).
The same loop trains ESM-2 / SaProt on sequence shards and the MSA Transformer on MSA shards.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline_lib.errors import PipelineError
from pipeline_lib.stage_cache import remove_temporaries_in
from pipeline_lib.train.batching import IGNORE, Batch
from pipeline_lib.train.checkpoint import Checkpointer, export_checkpoint_hf
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.loader import StepLoader
from pipeline_lib.train.metrics import MetricsSink, device_peak_tflops
from pipeline_lib.train.model import build_model, masked_logits, model_flops_per_token
from pipeline_lib.train.optim import build_optimizer, build_scheduler
from pipeline_lib.train.parallel import DistEnv, all_reduce_sum, grad_sync, init_distributed, parallelize, uses_bf16
from pipeline_lib.train.validation import Validator

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "build_model"]  # build_model: from .model


class NonFiniteLossError(PipelineError):
    """Loss or gradient norm is NaN/inf; names the step and the samples of this rank's batch."""

    def __init__(self, what: str, step: int, value: float, ids: list[str], rows: list[int]) -> None:
        self.step, self.value, self.ids, self.rows = step, value, ids, rows
        shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} samples)" if len(ids) > 20 else "")
        super().__init__(f"non-finite {what} ({value}) at step {step}; this rank's batch: {shown}; rows {rows[:20]}")


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    hf_dir: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: TrainConfig, *, shards_dir: str | Path, output_dir: str | Path,
                 env: DistEnv | None = None, on_metrics: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg, self.out = cfg, Path(output_dir)
        self.env = env or init_distributed()
        torch.manual_seed(cfg.seed)  # identical initial weights (and dropout streams) on every rank
        self.model, self.vocab = build_model(cfg, device="meta" if cfg.meta_init else None)
        self.wrapped = parallelize(self.model, cfg, self.env)  # materialises a meta model after sharding
        self.opt = build_optimizer(self.model, cfg)
        self.sched = build_scheduler(self.opt, cfg)
        self.ckpt = Checkpointer(self.out / "checkpoints", self.env, keep=cfg.keep_checkpoints)
        if self.env.is_main:  # what a killed run left half-written here (an ``hf.tmp-*`` export)
            remove_temporaries_in(self.out)
        self.step, data_state = 0, None
        if cfg.resume and (found := self.ckpt.load_latest(self.model, self.opt, self.sched)):
            self.step, data_state = found
        self.loader = StepLoader(cfg, shards_dir, rank=self.env.rank, world_size=self.env.world_size,
                                 state=data_state, pin_memory=self.env.device.type == "cuda",
                                 cache_dir=self.out / "index_cache")
        self.sink = MetricsSink(self.out, enabled=self.env.is_main, on_metrics=on_metrics)
        self.amp_dtype = torch.bfloat16 if uses_bf16(cfg, self.env) else None
        self.flops_per_token = model_flops_per_token(self.model)  # 6 N, as the MFU convention
        self.peak = device_peak_tflops(self.env.device, cfg.peak_tflops)
        self.validator = Validator(cfg, shards_dir, self.env) if cfg.eval_every else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _micro_step(self, b: Batch, scale: float, sync: bool) -> torch.Tensor:
        b = b.to(self.env.device, non_blocking=True)
        targets = b.labels != IGNORE
        with grad_sync(self.wrapped, sync):
            with self._autocast():
                logits = masked_logits(self.wrapped, b, targets, self.cfg.attn_backend)
            loss = F.cross_entropy(logits.float(), b.labels[targets], reduction="sum")
            (loss * scale).backward()
        return loss.detach()

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: DTensor norm
            norm = norm.full_tensor()
        if self.cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.clip_grad_norm, norm, foreach=True)
        return float(norm)

    def train_step(self, micro: list[Batch]) -> dict[str, Any]:
        """One optimizer step over this rank's micro-batches (advances ``self.step``); returns its metrics."""
        env, t0 = self.env, time.perf_counter()
        local = [sum(b.n_targets for b in micro), sum(b.n_tokens for b in micro), sum(b.tokens.numel() for b in micro)]
        n_targets, n_tokens, slots = all_reduce_sum(local, env)
        scale = env.world_size / max(n_targets, 1.0)
        loss_sum = torch.zeros((), device=env.device, dtype=torch.float32)
        for i, b in enumerate(micro):
            loss_sum += self._micro_step(b, scale, sync=i == len(micro) - 1)
        if env.distributed:
            dist.all_reduce(loss_sum)
        loss = loss_sum.item() / max(n_targets, 1.0)
        step = self.step + 1
        ids, rows = [i for b in micro for i in b.ids], [r for b in micro for r in b.rows]
        if not math.isfinite(loss):
            raise NonFiniteLossError("loss", step, loss, ids, rows)
        norm = self._clip()
        if not math.isfinite(norm):
            raise NonFiniteLossError("gradient norm", step, norm, ids, rows)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step = step
        dt = time.perf_counter() - t0
        tps = n_tokens / dt
        rec: dict[str, Any] = {"step": step, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),  # dashboard names
                               "lr": lr, "grad_norm": norm, "tokens": int(n_tokens), "targets": int(n_targets),
                               "padding_frac": 1.0 - n_tokens / max(slots, 1.0), "step_time_s": dt,
                               "tokens_per_s": tps,
                               "mfu": (self.flops_per_token * tps / (self.peak * 1e12 * env.world_size))
                               if self.peak else None}
        if env.device.type == "cuda":
            rec["mem_gb"] = torch.cuda.max_memory_allocated(env.device) / 2**30
            torch.cuda.reset_peak_memory_stats(env.device)
        return rec

    def validate(self) -> dict[str, Any]:
        """Masked-LM loss / perplexity of the current weights on the fixed validation batches (collective)."""
        if self.validator is None:
            raise PipelineError("validation is off (train.eval_every is not set)")
        return self.validator.run(self.model, autocast=self._autocast)

    def _meta(self) -> dict[str, Any]:
        model_cfg = cast(Any, self.model).cfg.to_dict()  # every architecture here keeps its shape in .cfg
        return {"architecture": self.cfg.architecture, "model": model_cfg, "vocab": self.vocab,
                "torch": torch.__version__, "train_config": self.cfg.model_dump(mode="json"),
                "world_size": self.env.world_size}

    def save(self) -> Path:
        return self.ckpt.save(self.step, self.model, self.opt, self.sched, self.loader.state_dict(), self._meta())

    def train(self) -> TrainResult:
        """Run until ``max_steps`` (default ``total_steps``); checkpoint, export, return the metrics."""
        last = self.cfg.max_steps or self.cfg.total_steps
        records: list[dict[str, Any]] = []
        saved: Path | None = self.ckpt.path(self.step) if self.step else None
        try:
            steps = iter(self.loader)
            while self.step < last:
                rec = self.train_step(next(steps))
                evaluate = self.validator is not None and (self.step % (self.cfg.eval_every or 1) == 0
                                                           or self.step == last)
                if evaluate:
                    rec.update(self.validate())
                records.append(rec)
                if self.step % self.cfg.log_every == 0 or self.step == last or evaluate:
                    self.sink.write(rec)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == last:
                    saved = self.save()
            hf_dir = None
            esm = self.cfg.architecture in ("esm2", "esm1b")  # the MSA Transformer has no HF counterpart
            if self.cfg.export_hf and esm and saved is not None and self.env.is_main:
                hf_dir = export_checkpoint_hf(saved, self.out / "hf")
            return TrainResult(self.step, saved, hf_dir, records)
        finally:
            self.sink.close()
