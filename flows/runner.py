"""The task runner a run's tasks execute on, built per run from the config's ``runner`` section.

    from flows.runner import run_configured
    run_configured(data_refresh, "configs/demo.yaml", ["runner.kind=dask"])   # what ``plm data`` does

``threads`` (default) is Prefect's thread pool in the flow process; ``processes`` a pool of spawned
processes on this machine; ``dask`` prefect-dask's ``DaskTaskRunner`` on a local cluster started for the
run (``n_workers`` processes of ``threads_per_worker`` threads) or on an existing scheduler (``address``);
``ray`` prefect-ray's ``RayTaskRunner`` (the optional extra ``ray``). Only what the flows ``.submit`` runs
there (the data stages, downloads, shard partitions, structure batches and the structures stage, MSA batches);
training and evaluation run in the flow process, which they parallelize themselves. The runner never enters a cache key
or the config hash: every runner produces the same artifacts. Tests: ``.venv/bin/pytest -q tests/test_runner.py``.
"""
from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.context import FlowRunContext
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from pipeline_lib.config import Config, RunnerConfig, load_config
from pipeline_lib.errors import ConfigError

__all__ = ["task_runner", "with_runner", "run_configured", "on_configured_runner"]

_RUNNER_CLASS = {"threads": "ThreadPoolTaskRunner", "processes": "ProcessPoolTaskRunner",
                 "dask": "DaskTaskRunner", "ray": "RayTaskRunner"}


def _dask(cfg: RunnerConfig) -> TaskRunner:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(f"runner.kind is 'dask' but prefect-dask is not installed ({exc}): "
                          "pip install 'plm-pipeline[dask]'") from exc
    d = cfg.dask
    if d.address:
        return DaskTaskRunner(address=d.address)
    # no dashboard: it needs bokeh, and a fixed port would clash between runs on one host
    return DaskTaskRunner(cluster_kwargs={"n_workers": d.n_workers, "threads_per_worker": d.threads_per_worker,
                                         "processes": d.processes, "dashboard_address": None})


def _ray(cfg: RunnerConfig) -> TaskRunner:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ConfigError(f"runner.kind is 'ray' but prefect-ray is not installed ({exc}): "
                          "pip install 'plm-pipeline[ray]' (prefect-ray and ray, several hundred MB), "
                          "or choose runner.kind threads, processes or dask") from exc
    return RayTaskRunner(address=cfg.ray.address) if cfg.ray.address else RayTaskRunner()


def task_runner(cfg: RunnerConfig) -> TaskRunner:
    """A fresh, unstarted Prefect task runner for ``cfg``; :class:`ConfigError` when its package is missing."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.kind == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.max_workers)
    return _dask(cfg) if cfg.kind == "dask" else _ray(cfg)


def with_runner(flow: Flow, cfg: Config) -> Flow:
    """``flow`` with the task runner ``cfg.runner`` asks for (``flow.with_options``; the original is unchanged)."""
    return flow.with_options(task_runner=task_runner(cfg.runner))


def run_configured(flow: Flow, config_path: str | None, overrides: list[str] | None, **kwargs: Any) -> Any:
    """Call ``flow(config_path, overrides, **kwargs)`` on the task runner its config names.

    The runner has to be chosen before the flow starts, so the config is read here once more (cheap).
    """
    return with_runner(flow, load_config(config_path, overrides))(config_path, overrides, **kwargs)


def on_configured_runner(cfg: Config) -> bool:
    """Whether the current flow run already executes on the task runner ``cfg.runner`` names (True outside a
    flow run). A deployment starts its flow on Prefect's default thread pool: a flow that finds itself on
    another runner than its config asks for runs itself again as a subflow on the right one."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.task_runner is None:
        return True
    return type(ctx.task_runner).__name__ == _RUNNER_CLASS[cfg.runner.kind]
