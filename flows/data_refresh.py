"""The ``data_refresh`` flow: source -> ingest -> cluster -> split -> shards, with lineage.

    plm data configs/demo.yaml                    # or: python -m flows.data_refresh configs/demo.yaml
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from flows.runs import pipeline_run
from pipeline_lib.config import Config, load_config
from tasks import data
from tasks.common import StageOutput


@dataclass
class DataRefreshResult:
    run_id: str
    stages: dict[str, StageOutput]
    lineage: str
    release: data.ReleaseCheck | None = None
    status: str = "completed"

    @property
    def shards_dir(self) -> Path:
        return Path(self.stages["shards"].directory)


def run_data_stages(ctx, cfg: Config, release: data.ReleaseCheck | None = None) -> dict[str, StageOutput]:
    """The data path as a sequence of tasks (also used by the end-to-end flow)."""
    source = data.fetch(ctx, cfg, release)
    ingested = data.ingest(ctx, cfg, source)
    clustered = data.cluster(ctx, cfg, ingested)
    splitted = data.split(ctx, cfg, ingested, clustered)
    sharded = data.shards(ctx, cfg, ingested, clustered, splitted)
    return {"fetch": source, "ingest": ingested, "cluster": clustered, "split": splitted, "shards": sharded}


@flow(name="data_refresh", log_prints=True)
def data_refresh(config_path: str | None = None, overrides: list[str] | None = None,
                 if_changed: bool = False) -> DataRefreshResult:
    """Refresh the data. With ``if_changed`` (scheduled refreshes), stop early as ``no_new_release``
    when the upstream source is the same as in the last completed run."""
    cfg = load_config(config_path, overrides)
    with pipeline_run(cfg, "data_refresh") as ctx:
        release = data.check_release(ctx, cfg)
        if if_changed and not release.changed:
            ctx.final_status = "no_new_release"
            print(f"no new release: upstream unchanged since run {release.previous_run}")
            return DataRefreshResult(ctx.run_id, {}, ctx.lineage_path, release, "no_new_release")
        stages = run_data_stages(ctx, cfg, release)
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path, release)


if __name__ == "__main__":
    data_refresh(sys.argv[1] if len(sys.argv) > 1 else None)
