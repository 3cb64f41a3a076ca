"""Prefect task of retention: after a completed refresh (data_refresh, end_to_end), delete what only older
releases' runs used, here and on object storage."""
from __future__ import annotations

from typing import Any

from pipeline_lib.config import Config
from pipeline_lib.retention import apply_retention, plan_retention
from pipeline_lib.storage import ObjectStore
from tasks.common import RunContext, lineage_task, logger

__all__ = ["retention"]


@lineage_task(name="retention")
def retention(ctx: RunContext, cfg: Config) -> dict[str, Any] | None:
    """Keep the newest ``retention.keep_releases`` releases' stage outputs (None: keep all, do nothing)."""
    keep = cfg.retention.keep_releases
    if keep is None:
        return None
    store, remote = ctx.store, ObjectStore.from_settings(ctx.storage)  # published copies go too
    plan = plan_retention(store, ctx.workdir, config_name=cfg.name, keep=keep, current_run=ctx.run_id,
                          remote=remote)
    logger().info("retention:\n%s", plan.describe())
    stats = apply_retention(plan, store, run_id=ctx.run_id, remote=remote)
    logger().info("retention: deleted %d path(s), skipped %d, freed %.1f MiB (%.1f MiB on object storage)",
                  len(stats["deleted"]), len(stats["skipped"]), stats["freed_bytes"] / 2**20,
                  stats["freed_remote_bytes"] / 2**20)
    return stats
