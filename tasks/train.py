"""Prefect task of the train stage: launches torchrun, streams metrics (train and ``valid/*``) into lineage,
records the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline_lib.config import Config
from pipeline_lib.lineage import ArtifactRecord, LineageStore
from pipeline_lib.train.run import launch_torchrun
from tasks.artifacts import ProgressArtifact
from tasks.common import Produced, RunContext, StageOutput, lineage_task, logger, run_stage

__all__ = ["train", "MetricsSink"]

METRIC_FLUSH_EVERY = 20  # lineage writes cost ~0.1 s each: batch them
_MANIFESTS = ("manifest", "structure_manifest", "msa_manifest")
_SHARDS = ("shard", "structure_shard", "msa_shard")


class MetricsSink:
    """Buffers per-step training metrics and writes them to lineage in batches."""

    def __init__(self, store: LineageStore, run_id: str, step_id: str | None = None) -> None:
        self.store, self.run_id, self.step_id = store, run_id, step_id
        self.rows: list[tuple[str, int, float]] = []
        self.last: dict[str, Any] = {}
        self.progress: ProgressArtifact | None = None  # training steps as a progress bar in the Prefect UI

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        self.rows += [(k, step, float(v)) for k, v in record.items()
                      if k != "step" and isinstance(v, (int, float)) and v == v]
        self.last = record
        if self.progress is not None:
            self.progress.set(step)
        if step % METRIC_FLUSH_EVERY == 0:
            shown = {k: round(v, 4) if isinstance(v, float) else v
                     for k, v in record.items() if k in ("loss", "lr", "tokens_per_s")}
            logger().info("train step %d: %s", step, shown)
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.record_metrics(self.run_id, self.step_id, self.rows)
            self.rows = []


@lineage_task(name="train")
def train(ctx: RunContext, cfg: Config, shards: StageOutput) -> StageOutput:
    """Stage: pretrain on the shards (ESM-2 token shards, the SaProt shards of the structures stage, or the
    MSA shards of the msa stage for the MSA Transformer)."""
    tcfg = cfg.train
    manifest = next(a for a in shards.outputs.values() if a.kind in _MANIFESTS)
    shards_dir = Path(manifest.path).parent
    inputs: list[ArtifactRecord] = [a for a in shards.outputs.values() if a.kind in _MANIFESTS + _SHARDS]
    params = tcfg.model_dump(mode="json", exclude={"shards_dir", "output_dir", "enabled"})
    # derived in the config module, whose code keys nothing (pipeline_lib/stage_code.py): its value must
    params["column"] = tcfg.column
    sink = MetricsSink(ctx.store, ctx.run_id)
    sink.progress = ProgressArtifact("train-steps", total=tcfg.max_steps or tcfg.total_steps, unit="steps")

    if tcfg.column == "sa_tokens":  # SaProt: refuse shards without a single structure in the training split
        from pipeline_lib.structures.stage import check_saprot_coverage

        check_saprot_coverage(json.loads(Path(manifest.path).read_text()), tcfg.split)

    def compute(out: Path):
        run_cfg = tcfg.model_copy(update={"shards_dir": str(shards_dir), "output_dir": str(out)})
        result = launch_torchrun(run_cfg, config_path=out / "train_config.json", shards_dir=shards_dir,
                                 output_dir=out, on_metrics=sink)
        sink.flush()
        sink.progress.set(result.step or 0, force=True)  # the last update may have been throttled
        if result.checkpoint is None:
            raise RuntimeError(f"training wrote no checkpoint; see {result.log}")
        produced = [Produced(str(result.checkpoint.relative_to(out)), "checkpoint", meta={"step": result.step}),
                    Produced("metrics.jsonl", "train_metrics")]
        if result.hf_dir is not None:
            produced.append(Produced("hf", "hf_model", meta={"step": result.step, "format": "EsmForMaskedLM"}))
        final = {k: v for k, v in sink.last.items() if isinstance(v, (int, float))}
        return produced, {"final_step": result.step, "final": final, "argv": result.argv}, _versions()

    return run_stage(ctx, "train", params, inputs, compute, resumable=True)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
