"""Opening and closing a pipeline run in lineage (shared by every flow).

Every way a run can fail is reported the same way: a failed run in lineage with its error, and the config's
webhook. That includes a config or override that fails to load when the run starts (a scheduled run whose YAML was
edited after deploying): :func:`load_run_config` records it under the best config it can still load.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run

from pipeline_lib import preflight
from pipeline_lib.config import (
    Config,
    anchor_workdir,
    config_from_raw,
    load_config,
    read_config_file,
    unsafe_overrides,
)
from pipeline_lib.errors import ConfigError
from pipeline_lib.lineage import LineageStore, RunRecord
from pipeline_lib.notify import notify_failure
from pipeline_lib.tools.mmseqs import MMseqs
from tasks.common import RunContext, code_version


def tool_versions(cfg: Config) -> dict[str, str]:
    versions = {"plm-pipeline": code_version()}
    try:
        versions["mmseqs"] = MMseqs(binary=cfg.cluster.binary).version()
    except Exception as exc:  # recorded, not fatal here: the stage that needs mmseqs raises clearly
        versions["mmseqs"] = f"unavailable: {exc}".splitlines()[0]
    return versions


def library_logging() -> None:
    """Show the library's log lines (progress of downloads and ingest, mmseqs heartbeats, counts) where Prefect's
    own go: the console, and the run's logs in the Prefect UI. Without this they are dropped, as the root logger
    passes only warnings. Prefect's ``PREFECT_LOGGING_EXTRA_LOGGERS`` would give the handler but not the level."""
    lib = logging.getLogger("pipeline_lib")
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.getLogger("prefect").getEffectiveLevel())  # PREFECT_LOGGING_LEVEL
    if not any(isinstance(h, _RunLogHandler) for h in lib.handlers):  # the console is the root's, by propagation
        lib.addHandler(_RunLogHandler())


class _RunLogHandler(APILogHandler):
    """Prefect's API log handler for the records logged inside a flow or task run; the others (library use
    after a flow ran in this process, a pool process) only print, with no warning about a missing run."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) or FlowRunContext.get() or TaskRunContext.get():
            super().emit(record)


@dataclass
class RunHandle(RunContext):
    """The run context plus the final status a flow may set (e.g. ``no_new_release``)."""

    final_status: str = "completed"


@contextlib.contextmanager
def pipeline_run(cfg: Config, flow: str) -> Iterator[RunContext]:
    """Record the run as running, then completed / failed (crashed runs are found by ``mark_crashed``).

    The flow may set ``ctx.final_status`` (e.g. ``no_new_release``) before the block ends.
    """
    library_logging()
    workdir = cfg.workdir_path
    workdir.mkdir(parents=True, exist_ok=True)
    store = LineageStore(cfg.lineage_path)
    store.mark_crashed()
    run_id = str(flow_run.id or uuid.uuid4())
    store.start_run(RunRecord(run_id, flow, cfg.name, cfg.model_dump(mode="json"), cfg.hash(), code_version(),
                              str(workdir), tool_versions=tool_versions(cfg)))
    ctx = RunHandle(run_id, str(workdir), str(cfg.lineage_path), storage=cfg.storage.model_dump(mode="json"))
    try:
        yield ctx
    except BaseException as exc:
        _report_failure(store, cfg, flow, run_id, exc)
        raise
    store.end_run(run_id, ctx.final_status)


def _report_failure(store: LineageStore | None, cfg: Config, flow: str, run_id: str, exc: BaseException) -> None:
    """The failed run in lineage (a lineage problem, e.g. a full disk, is printed, not raised) and the webhook."""
    try:
        if store is not None:
            store.end_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
    except Exception as lineage_exc:
        print(f"plm: could not record the failed run in lineage: {lineage_exc}", file=sys.stderr)
    notify_failure(cfg.notify, flow=flow, run_id=run_id, config_name=cfg.name, exc=exc,
                   lineage_path=cfg.lineage_path, extra={"ui_url": flow_run.ui_url})


def _check_deployment_parameters(config_path: str | None, overrides: list[str]) -> None:
    """A run of a deployment takes its parameters from whoever started it through the Prefect API (the UI, a
    custom run): those that differ from the deployment's own may not name another config file, an executable
    or a path outside the deployment's workdir, unless the deployment allows it (``--allow-unsafe-overrides``)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    from flows.deploy import ALLOW_UNSAFE_TAG

    dep_id = deployment.id
    if not dep_id:
        return  # started from the command line or Python: the caller is the user
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
    if ALLOW_UNSAFE_TAG in (dep.tags or []):
        return
    defaults = dict(dep.parameters or {})
    problems = []
    if config_path != defaults.get("config_path"):
        problems.append(f"config_path: {config_path!r} is not the deployment's {defaults.get('config_path')!r}")
    own = list(defaults.get("overrides") or [])
    extra = [o for o in overrides if o not in own]
    if extra:
        workdir = load_config(defaults.get("config_path"), own).workdir_path
        problems += unsafe_overrides(extra, workdir)
    if problems:
        raise ConfigError(f"deployment {dep.name!r}: a run's parameters may not " + "; ".join(problems) +
                          " (recreate it with `plm deploy --allow-unsafe-overrides` to allow this: docs/security.md)")


def load_run_config(config_path: str | None, overrides: list[str] | None, flow: str, *,
                    checkpoints: Sequence[str] = ()) -> Config:
    """The run's config. One that fails to load fails the run like any stage would: the error is recorded as a
    failed run in the lineage of the best config that still loads (:func:`_loadable_part`: the file, or the
    sections of an edited file that say where lineage and the webhook are, with every override that applies)
    and sent to that config's webhook, then raised. When the file is missing or not YAML, there is no lineage
    file to write to: only the Prefect run (and a ``notify.automation``) shows the failure."""
    try:
        _check_deployment_parameters(config_path, list(overrides or []))
        cfg = load_config(config_path, overrides)
        preflight.check(cfg, flow, checkpoints=checkpoints)  # inputs exist, splits exist, the model fits the task
        return cfg
    except ConfigError as exc:
        fallback = _loadable_part(config_path, overrides or [])
        if fallback is None:
            print(f"plm: the failed run is not in lineage: {config_path} is missing or not a YAML mapping",
                  file=sys.stderr)
            raise
        library_logging()
        run_id = str(flow_run.id or uuid.uuid4())
        store: LineageStore | None = None
        try:
            fallback.workdir_path.mkdir(parents=True, exist_ok=True)
            store = LineageStore(fallback.lineage_path)
            store.start_run(RunRecord(run_id, flow, fallback.name, {"config_path": config_path,
                                                                    "overrides": list(overrides or [])},
                                      "", code_version(), str(fallback.workdir_path)))
        except Exception as lineage_exc:
            print(f"plm: could not record the failed run in lineage: {lineage_exc}", file=sys.stderr)
            store = None
        _report_failure(store, fallback, flow, run_id, exc)
        raise


# what says where a run's records and failure messages go: kept from a file that no longer validates
_ESSENTIALS = ("name", "workdir", "lineage", "notify")


def _loadable_part(config_path: str | None, overrides: list[str]) -> Config | None:
    """The best config that still loads: the file (or, when an edit broke it, its name, workdir, lineage and
    notify sections), with each override that applies on top of those kept so far. None when the file is
    missing or not a YAML mapping: nothing says where the run's lineage is."""
    origin = str(config_path) if config_path else "<defaults>"
    try:
        raw = read_config_file(config_path) if config_path else {}
    except ConfigError:
        return None
    try:
        cfg = config_from_raw(raw, [], origin)
    except ConfigError:
        raw = {k: raw[k] for k in _ESSENTIALS if k in raw}
        try:
            cfg = config_from_raw(raw, [], origin)
        except ConfigError:
            return None
    kept: list[str] = []
    for override in overrides:
        try:
            cfg = config_from_raw(raw, [*kept, override], origin)
            kept.append(override)
        except ConfigError:
            continue
    return anchor_workdir(cfg, config_path, raw, kept)


def env_defaults() -> None:
    """Offline-friendly Prefect defaults (the user's environment wins)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # transformers draws a tqdm bar for every model it loads ("Loading weights"): noise between our log lines
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # the temporary API server can take over 20 s to start on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
