"""Prefect task of the report: a finished run's static HTML report (what ``plm report RUN_ID`` writes) in its
workdir, recorded in lineage as the output of the run's ``report`` step."""
from __future__ import annotations

from pathlib import Path

from pipeline_lib.io import stable_hash
from pipeline_lib.lineage import StepRecord, artifact_for, utcnow
from tasks.common import RunContext, lineage_task, logger

__all__ = ["report", "report_path"]


def report_path(ctx: RunContext) -> Path:
    return Path(ctx.workdir) / "reports" / f"{ctx.run_id}.html"


@lineage_task(name="report")
def report(ctx: RunContext) -> str:
    """Write ``<workdir>/reports/<run id>.html`` and record it; called after the run is closed in lineage, so
    the report shows the run's final status and every stage. A failed report is recorded as a failed step."""
    from pipeline_lib.dashboard.report import write_report  # plotly: only when a report is written

    started, out = utcnow(), report_path(ctx)
    key = stable_hash([ctx.run_id, "report"])
    try:
        write_report(ctx.lineage_path, ctx.run_id, out)
    except Exception as exc:
        ctx.store.record_step(StepRecord(ctx.run_id, "report", {}, key, "failed", started, utcnow(),
                                         error=f"{type(exc).__name__}: {exc}"[:4000]))
        raise
    ctx.store.record_step(StepRecord(ctx.run_id, "report", {}, key, "completed", started, utcnow(),
                                     outputs=[artifact_for(out, "report")]))
    logger().info("report: %s", out)
    return str(out)
