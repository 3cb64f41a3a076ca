"""The end-to-end flow: data refresh, then each later stage that the config enables.

    plm run configs/demo.yaml
"""
from __future__ import annotations

from prefect import flow

from flows.data_refresh import DataRefreshResult, run_data_stages
from flows.runs import pipeline_run
from pipeline_lib.config import load_config
from tasks import data
from tasks.structures import structures


@flow(name="end_to_end", log_prints=True)
def end_to_end(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    cfg = load_config(config_path, overrides)
    with pipeline_run(cfg, "end_to_end") as ctx:
        release = data.check_release(ctx, cfg)
        stages = run_data_stages(ctx, cfg, release)
        if cfg.structures.enabled:
            stages["structures"] = structures(ctx, cfg, stages["ingest"], stages["cluster"], stages["split"])
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path, release)


@flow(name="structures", log_prints=True)
def structures_flow(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    """``plm structures CONFIG``: the data stages (cached when unchanged) and the structures stage."""
    cfg = load_config(config_path, overrides + ["structures.enabled=true"] if overrides else ["structures.enabled=true"])
    with pipeline_run(cfg, "structures") as ctx:
        stages = run_data_stages(ctx, cfg, data.check_release(ctx, cfg))
        stages["structures"] = structures(ctx, cfg, stages["ingest"], stages["cluster"], stages["split"])
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path)
