"""End-to-end and per-stage flows: data refresh -> structures -> train -> evaluate -> report, each stage cached.

    plm run configs/demo.yaml                 # everything the config enables, retention, the HTML report
    plm structures configs/demo.yaml          # data stages + structures
    plm msa configs/demo.yaml                 # data stages + MSAs
    plm train configs/demo.yaml               # data stages (+ structures for SaProt) + train
    plm evaluate configs/demo.yaml --checkpoint DIR [DIR ...]    # evaluate given checkpoints / HF dirs

The data stages, structure batches and MSA batches run on the configured task runner (``runner:``,
flows/runner.py); training and evaluation run in the flow process, which they parallelize themselves (torchrun).
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.data_refresh import DataRefreshResult, run_data_stages
from flows.runner import on_configured_runner, with_runner
from flows.runs import load_run_config, pipeline_run
from pipeline_lib.config import Config
from pipeline_lib.lineage import artifact_for
from tasks import data
from tasks.artifacts import run_summary
from tasks.common import resolve, resolve_all
from tasks.evaluate import evaluate
from tasks.msa import msa, msa_batch, msa_queries, msa_target
from tasks.report import report
from tasks.retention import retention
from tasks.structures import structure_batches, structures, structures_batch
from tasks.train import train


def _with(overrides: list[str] | None, *extra: str) -> list[str]:
    return [*(overrides or []), *extra]


def _training_shards(cfg: Config, stages: dict) -> object:
    if cfg.train.architecture == "msa_transformer":
        return stages["msa"]
    return stages["structures"] if cfg.train.vocab == "saprot" else stages["shards"]


def _stages(ctx, cfg: Config, *, train_stage: bool, evaluate_stage: bool) -> dict:
    stages = run_data_stages(ctx, cfg, data.check_release(ctx, cfg))
    if cfg.structures.enabled or (train_stage and cfg.train.vocab == "saprot"):
        stages["structures"] = run_structures_stage(ctx, cfg, stages)
    if cfg.msa.enabled or (train_stage and cfg.train.architecture == "msa_transformer"):
        stages["msa"] = run_msa_stage(ctx, cfg, stages)
    if train_stage:
        stages["train"] = train(ctx, cfg, _training_shards(cfg, stages))
        if evaluate_stage:
            trained = stages["train"].outputs
            ckpt = trained.get("hf") or next(a for a in trained.values() if a.kind == "checkpoint")
            stages["evaluate"] = evaluate(ctx, cfg, ckpt, _training_shards(cfg, stages))
    return stages


def run_structures_stage(ctx, cfg: Config, stages: dict):
    """Structure batches side by side on the task runner, then the stage that merges them into SaProt shards."""
    batches = structure_batches(cfg, stages["ingest"])
    # a process of the threads runner may start encoding processes; processes / Dask / Ray parallelize batches
    workers = cfg.structures.workers if cfg.runner.kind == "threads" else 1
    futures = [structures_batch.submit(ctx, cfg, batch, workers) for batch in batches]
    results = resolve_all(ctx, futures, "structures-batches", "batches")  # batches done, in the Prefect UI
    return resolve(ctx, structures.submit(ctx, cfg, stages["ingest"], stages["cluster"], stages["split"], results))


def run_msa_stage(ctx, cfg: Config, stages: dict):
    """Target DB once, then the query batches side by side on the task runner, then the MSA shards."""
    target = resolve(ctx, msa_target.submit(ctx, cfg, stages["ingest"]))
    batches = msa_queries(cfg, stages["ingest"], stages["cluster"], stages["split"])
    futures = [msa_batch.submit(ctx, cfg, batch, target, i) for i, batch in enumerate(batches)]
    results = resolve_all(ctx, futures, "msa-batches", "batches")  # batches done, in the Prefect UI
    return resolve(ctx, msa.submit(ctx, cfg, results, stages["split"]))


@flow(name="end_to_end", log_prints=True)
def end_to_end(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    cfg = load_run_config(config_path, overrides, "end_to_end")
    if not on_configured_runner(cfg):  # started by a deployment on the default runner: move to the configured one
        return with_runner(end_to_end, cfg)(config_path, overrides)
    with pipeline_run(cfg, "end_to_end") as ctx:
        stages = _stages(ctx, cfg, train_stage=cfg.train.enabled, evaluate_stage=cfg.evaluate.enabled)
        retention(ctx, cfg)  # keep the newest retention.keep_releases releases' stage outputs
        run_summary(ctx, cfg, stages)  # markdown artifact: stages, counts, evaluation tables
    html = report(ctx)  # after the run is closed: the report shows its final status
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path, report=html)


def _up_to(config_path: str | None, overrides: list[str] | None, stage: str) -> DataRefreshResult:
    """The data stages (cached when unchanged) and ``stage``, enabled whatever the config says."""
    cfg = load_run_config(config_path, _with(overrides, f"{stage}.enabled=true"), stage)
    with pipeline_run(cfg, stage) as ctx:
        stages = _stages(ctx, cfg, train_stage=stage == "train", evaluate_stage=False)
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path)


@flow(name="structures", log_prints=True)
def structures_flow(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    """``plm structures CONFIG``: the data stages and the structures stage."""
    return _up_to(config_path, overrides, "structures")


@flow(name="msa", log_prints=True)
def msa_flow(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    """``plm msa CONFIG``: the data stages and the MSA stage."""
    return _up_to(config_path, overrides, "msa")


@flow(name="train", log_prints=True)
def train_flow(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    """``plm train CONFIG``: the data stages (and structures for SaProt) and training."""
    return _up_to(config_path, overrides, "train")


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config_path: str | None = None, overrides: list[str] | None = None,
                  checkpoints: list[str] | None = None) -> DataRefreshResult:
    """Evaluate the given checkpoints (ours or Hugging Face ESM-2 directories) on this config's data."""
    cfg = load_run_config(config_path, _with(overrides, "evaluate.enabled=true"), "evaluate",
                          checkpoints=checkpoints or [])
    with pipeline_run(cfg, "evaluate") as ctx:
        if cfg.evaluate.perplexity.enabled:  # the only evaluation that reads this config's data
            stages = _stages(ctx, cfg, train_stage=False, evaluate_stage=False)
            shards = stages.get("structures") if cfg.train.vocab == "saprot" else stages["shards"]
        else:
            stages, shards = {}, None
        for i, path in enumerate(checkpoints or []):
            art = artifact_for(path, "hf_model" if (Path(path) / "config.json").is_file() else "checkpoint")
            stages[f"evaluate_{i}"] = evaluate(ctx, cfg, art, shards, label=Path(path).name)
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path)
