"""The end-to-end flow: data refresh, then (when enabled in the config) the later stages.

    plm run configs/demo.yaml
"""
from __future__ import annotations

from prefect import flow

from flows.data_refresh import DataRefreshResult, run_data_stages
from flows.runs import pipeline_run
from pipeline_lib.config import load_config


@flow(name="end_to_end", log_prints=True)
def end_to_end(config_path: str | None = None, overrides: list[str] | None = None) -> DataRefreshResult:
    cfg = load_config(config_path, overrides)
    with pipeline_run(cfg, "end_to_end") as ctx:
        stages = run_data_stages(ctx, cfg)
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path)
