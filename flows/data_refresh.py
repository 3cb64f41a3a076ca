"""The ``data_refresh`` flow: source -> ingest -> cluster -> split -> shards, with lineage.

    plm data configs/demo.yaml                    # or: python -m flows.data_refresh configs/demo.yaml
    plm data configs/demo.yaml --set runner.kind=dask     # the stages on a local Dask cluster (flows/runner.py)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from flows.runner import on_configured_runner, with_runner
from flows.runs import load_run_config, pipeline_run
from pipeline_lib.config import Config, DownloadSettings
from tasks import data
from tasks.common import RunContext, StageOutput, resolve, resolve_all
from tasks.retention import retention


@dataclass
class DataRefreshResult:
    run_id: str
    stages: dict[str, StageOutput]
    lineage: str
    release: data.ReleaseCheck | None = None
    status: str = "completed"
    report: str | None = None  # the static HTML report (end_to_end)

    @property
    def shards_dir(self) -> Path:
        return Path(self.stages["shards"].directory)


def run_data_stages(ctx, cfg: Config, release: data.ReleaseCheck | None = None) -> dict[str, StageOutput]:
    """The data path on the run's task runner (also used by the end-to-end flow).

    Source files download side by side; then each stage needs the one before, so they run one at a time,
    each wherever the runner puts it (a thread, a process, a Dask or Ray worker), except the shard partitions
    (``shards.partition_rows`` ingest rows each), which run side by side before the manifest. ``resolve`` writes the
    lineage a worker process kept: this process is the only one that writes the lineage database.
    """
    hosts = getattr(cfg.source, "allowed_hosts", None)
    settings = cfg.source.download_kwargs() if isinstance(cfg.source, DownloadSettings) else None
    futures = [data.source_url.submit(ctx, url, hosts, settings) for url in data.source_urls(cfg)]
    downloads = [resolve(ctx, f) for f in futures]
    source = resolve(ctx, data.source.submit(ctx, cfg, release, downloads if futures else None))
    ingested = resolve(ctx, data.ingest.submit(ctx, cfg, source))
    levels: list[StageOutput] = []
    for i in range(len(cfg.cluster.levels)):  # each level clusters the previous level's representatives
        levels.append(resolve(ctx, data.cluster_level.submit(ctx, cfg, ingested, i, levels[-1] if levels else None,
                                                             source)))
    clustered = resolve(ctx, data.cluster.submit(ctx, cfg, ingested, levels))
    decontam = _decontaminate(ctx, cfg, ingested, clustered)
    splitted = resolve(ctx, data.split.submit(ctx, cfg, ingested, clustered, decontam))
    audited = _audit(ctx, cfg, ingested, splitted) if cfg.split.audit.enabled else None
    futures = [data.shards_partition.submit(ctx, cfg, ingested, clustered, splitted, i, rows)
               for i, rows in enumerate(data.shard_partitions(cfg, ingested))]
    partitions = resolve_all(ctx, futures, "shard-partitions", "partitions")  # partitions done, in the UI
    sharded = resolve(ctx, data.shards.submit(ctx, cfg, ingested, clustered, splitted, partitions))
    per_level = {f"cluster_{lv.name}": out for lv, out in zip(cfg.cluster.levels, levels, strict=True)}
    return {"source": source, "ingest": ingested, **per_level, "cluster": clustered, "split": splitted,
            **({"audit": audited} if audited else {}), "shards": sharded}


def _decontaminate(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput) -> list[StageOutput]:
    """Decontamination's search, when asked for: the targets' database once, the training rows in chunks of
    ``split.decontaminate.chunk_rows`` side by side on the task runner."""
    n = data.decontam_chunks(cfg, ingested)
    if not n:
        return []
    target = resolve(ctx, data.decontam_target.submit(ctx, cfg, ingested, clustered, n > 1))
    futures = [data.decontam_chunk.submit(ctx, cfg, ingested, clustered, target, i) for i in range(n)]
    return resolve_all(ctx, futures, "decontam-chunks", "chunks")


def _audit(ctx: RunContext, cfg: Config, ingested: StageOutput, splitted: StageOutput) -> StageOutput:
    """The leakage audit: the train database once, the held-out queries in chunks side by side on the task runner
    (``split.audit.chunk_queries`` each), then the summary, before any shard is written."""
    n = data.audit_chunks(cfg, ingested, splitted)
    target = resolve(ctx, data.audit_target.submit(ctx, cfg, ingested, splitted, n > 1)) if n else None
    futures = [data.audit_chunk.submit(ctx, cfg, ingested, splitted, target, i) for i in range(n)]
    chunks = resolve_all(ctx, futures, "audit-chunks", "chunks") if futures else []
    return resolve(ctx, data.audit.submit(ctx, cfg, ingested, splitted, chunks))


@flow(name="data_refresh", log_prints=True)
def data_refresh(config_path: str | None = None, overrides: list[str] | None = None,
                 if_changed: bool = False) -> DataRefreshResult:
    """Refresh the data. With ``if_changed`` (scheduled refreshes), stop early as ``no_new_release``
    when the upstream source is the same as in the last completed run."""
    cfg = load_run_config(config_path, overrides, "data_refresh")
    if not on_configured_runner(cfg):  # started by a deployment on the default runner: move to the configured one
        return with_runner(data_refresh, cfg)(config_path, overrides, if_changed)
    with pipeline_run(cfg, "data_refresh") as ctx:
        release = data.check_release(ctx, cfg)
        if if_changed and not release.changed:
            ctx.final_status = "no_new_release"
            print(f"no new release: upstream unchanged since run {release.previous_run}")
            return DataRefreshResult(ctx.run_id, {}, ctx.lineage_path, release, "no_new_release")
        stages = run_data_stages(ctx, cfg, release)
        retention(ctx, cfg)  # keep the newest retention.keep_releases releases' stage outputs
    return DataRefreshResult(ctx.run_id, stages, ctx.lineage_path, release)


if __name__ == "__main__":
    from flows.runner import run_configured

    run_configured(data_refresh, sys.argv[1] if len(sys.argv) > 1 else None, None)
