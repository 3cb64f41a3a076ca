"""Prefect UI artifacts: counts per stage (table), progress of long stages, a markdown summary of the run.

    stage_table(out)                         # run_stage calls it for every stage: key "<stage>-counts"
    with progress_artifacts():               # long work reporting through pipeline_lib.progress.Progress
        ingest_fasta(...)                    #   -> a progress artifact per Progress, updated every few seconds
    bar = ProgressArtifact("train-steps", total=1000, unit="steps"); bar.set(step)
    results = results_with_progress(futures, "msa-batches", "batches")   # a fan-out, batches done / total
    run_summary(ctx, cfg, stages)            # end of end_to_end: key "<config>-summary"
    flow_run_artifacts(run_id)               # read them back (tests, scripts)

The writers are no-ops outside a Prefect flow or task run (library use, ``task.fn()`` in tests) and never
raise: a UI artifact that cannot be written is logged, and the stage goes on (``results_with_progress``
raises what its futures raise, like ``.result()``).
"""
from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_lib import progress as progress_lib

if TYPE_CHECKING:
    from pipeline_lib.config import Config
    from tasks.common import RunContext, StageOutput

__all__ = ["in_prefect_run", "artifact_key", "stage_counts", "stage_table", "ProgressArtifact",
           "progress_artifacts", "results_with_progress", "run_summary",
           "flow_run_artifacts"]

MAX_ROWS = 200
SKIP_STATS = {"commands", "argv", "identity", "packages", "tool_versions"}  # long or not counts


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def _log_failure(what: str, exc: Exception) -> None:
    from tasks.common import logger

    logger().warning("could not write the %s artifact: %s", what, exc)


def stage_counts(stats: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """The numbers in a stage's stats, flattened to rows ``{"count": "clusters_per_level.c90", "value": 412}``."""
    rows: list[dict[str, Any]] = []
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if key in SKIP_STATS:
            continue
        if isinstance(value, dict):
            rows += stage_counts(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"count": name, "value": value})
    return rows[:MAX_ROWS]


def stage_table(out: StageOutput) -> None:
    """A table artifact with ``out``'s counts (in, kept, quarantined, clusters per level, split sizes, tokens...)."""
    if not in_prefect_run():
        return
    try:
        from prefect.artifacts import create_table_artifact

        rows = [{"stage": out.stage, **r} for r in stage_counts(out.stats)]
        rows += [{"stage": out.stage, "count": f"rows.{name}", "value": a.rows}
                 for name, a in out.outputs.items() if a.rows is not None][: MAX_ROWS - len(rows)]
        how = "cached" if out.cached else "computed"
        desc = f"**{out.stage}** ({how}, cache key `{out.cache_key[:16]}`): `{out.directory}`"
        create_table_artifact(rows, key=artifact_key(out.stage, "counts"), description=desc)
    except Exception as exc:
        _log_failure(f"{out.stage} counts", exc)


class ProgressArtifact:
    """A progress bar in the Prefect UI, created on the first update and updated at most every ``every_s``."""

    def __init__(self, key: str, *, total: float | None = None, unit: str = "", every_s: float = 5.0) -> None:
        self.key, self.total, self.unit, self.every_s = artifact_key(key), total, unit, every_s
        self.artifact_id = None
        self._last = 0.0
        self.enabled = in_prefect_run()

    def percent(self, done: float) -> float:
        return min(100.0, 100.0 * done / self.total) if self.total else 0.0

    def set(self, done: float, description: str | None = None, *, force: bool = False) -> None:
        """Report ``done`` of ``total`` (percent 0 while the total is unknown; ``finish`` sets 100)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every_s):
            return
        self._last = now
        desc = description or f"{self.key}: {done:,.0f}" + (f" / {self.total:,.0f}" if self.total else "") + \
            (f" {self.unit}" if self.unit else "")
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(self.percent(done), key=self.key, description=desc)
            else:
                update_progress_artifact(self.artifact_id, self.percent(done), description=desc)
        except Exception as exc:
            self.enabled = False  # one warning, not one per update
            _log_failure(f"{self.key} progress", exc)

    def finish(self, description: str | None = None) -> None:
        if self.total is None:
            self.total = 1
        self.set(self.total, description, force=True)


@contextlib.contextmanager
def progress_artifacts(prefix: str = "") -> Iterator[None]:
    """While open, each :class:`pipeline_lib.progress.Progress` made in this context gets a progress artifact."""
    if not in_prefect_run():
        yield
        return
    bars: dict[int, ProgressArtifact] = {}

    def listener(p: progress_lib.Progress, finished: bool) -> None:
        bar = bars.get(id(p))
        if bar is None:
            bar = bars[id(p)] = ProgressArtifact(f"{prefix}-{p.label}" if prefix else p.label, total=p.total,
                                                 unit=p.unit, every_s=p.every_s)
        bar.finish(p.line()) if finished else bar.set(p.done, p.line(), force=True)  # Progress throttles

    with progress_lib.listen(listener):
        yield


def results_with_progress(futures: list[Any], key: str, unit: str,
                          resolve: Callable[[Any], Any] = lambda f: f.result()) -> list[Any]:
    """The results of ``futures`` (Prefect futures of a batch fan-out) in order, with a progress artifact
    ``key`` counting the batches finished as they complete on the task runner. Raises like ``.result()``;
    ``resolve`` turns a finished future into its result (``tasks.common.resolve`` writes its lineage)."""
    from prefect.futures import as_completed

    bar = ProgressArtifact(key, total=len(futures), unit=unit, every_s=2.0)
    ok = failed = 0
    for future in as_completed(futures):
        try:
            future.result()  # done: returns at once (its state in the API may lag behind)
            ok += 1
        except Exception:
            failed += 1  # raised below, in submission order
        bar.set(ok, f"{ok:,} / {len(futures):,} {unit} done" + (f", {failed:,} failed" if failed else ""),
                force=ok + failed == len(futures))
    return [resolve(f) for f in futures]


def flow_run_artifacts(flow_run_id: str) -> list[Any]:
    """Every artifact of a flow run (its tasks' included), read back through the Prefect client."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))


def _markdown_table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_summary(ctx: RunContext, cfg: Config, stages: dict[str, StageOutput]) -> None:
    """A markdown artifact: the run, each stage's status and main counts, and the evaluation tables."""
    if not in_prefect_run():
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        rows = []
        for name, out in stages.items():
            counts = ", ".join(f"{r['count']}={r['value']:,}" if isinstance(r["value"], int) else
                               f"{r['count']}={r['value']:.4g}" for r in stage_counts(out.stats)[:8])
            rows.append([name, "cached" if out.cached else "computed", f"`{out.cache_key[:16]}`", counts])
        parts = [f"# {cfg.name}: run `{ctx.run_id}`", "", f"Lineage: `{ctx.lineage_path}`", "",
                 _markdown_table(rows, ["stage", "status", "cache key", "counts"])]
        for name, out in stages.items():
            table = out.outputs.get("metrics.md")
            if name.startswith("evaluate") and table is not None and Path(table.path).is_file():
                parts += ["", f"## Evaluation: {out.stats.get('checkpoint', name)}", "",
                          Path(table.path).read_text()]
        create_markdown_artifact("\n".join(parts), key=artifact_key(cfg.name, "summary"),
                                 description=f"{cfg.name} run {ctx.run_id}")
    except Exception as exc:
        _log_failure("run summary", exc)
