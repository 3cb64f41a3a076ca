"""Prefect task of retention: after a completed refresh, delete what only older releases' runs used."""
from __future__ import annotations

from typing import Any

from prefect import task

from pipeline_lib.config import Config
from pipeline_lib.retention import apply_retention, plan_retention
from tasks.common import RunContext, logger

__all__ = ["retention"]


@task(name="retention")
def retention(ctx: RunContext, cfg: Config) -> dict[str, Any] | None:
    """Keep the newest ``retention.keep_releases`` releases' stage outputs (None: keep all, do nothing)."""
    keep = cfg.retention.keep_releases
    if keep is None:
        return None
    store = ctx.store
    plan = plan_retention(store, ctx.workdir, config_name=cfg.name, keep=keep, current_run=ctx.run_id)
    logger().info("retention:\n%s", plan.describe())
    stats = apply_retention(plan, store, run_id=ctx.run_id)
    logger().info("retention: deleted %d path(s), skipped %d, freed %.1f MiB", len(stats["deleted"]),
                  len(stats["skipped"]), stats["freed_bytes"] / 2**20)
    return stats
