"""Scheduled runs: register a flow of this repository as a Prefect deployment on a process work pool.

    plm deploy configs/esm2_ur50d.yaml --cron "0 3 * * 1"                 # data_refresh, Mondays 03:00 UTC
    plm deploy configs/demo.yaml --flow end_to_end --cron "0 4 1 * *" --name demo-monthly
    plm deploy configs/demo.yaml --interval 6h                          # every 6 hours (s, m, h, d)
    python -m flows.deploy configs/esm2_ur50d.yaml --cron "0 3 * * 1"     # the same without the CLI
    plm worker --pool plm-process                                       # executes the scheduled runs
    plm doctor                                                          # server, scheduler, pools, workers

A server must be reachable (``prefect server start`` and ``PREFECT_API_URL``, or Prefect Cloud). The flow
code is taken from this checkout (``flow.from_source`` on the repository root), so a worker on the same
machine or on a shared filesystem runs exactly this code; the deployments declared in ``prefect.yaml``
(``prefect deploy --all``) are the same thing for the standard schedules. Every deployment gets a concurrency
limit of 1 (a refresh still running makes the next one wait), and ``deploy`` waits until the server's
scheduler has created the upcoming runs: a server whose scheduler fails (it logs the error, nothing else
shows it) is an error here, not a schedule that silently never fires. Kubernetes / Docker pools:
docs/operations.md. With ``notify.automation: true`` in the config, a Prefect automation also POSTs to the
config's webhook when a run of the deployment fails or crashes (docs/operations.md, section 10).
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline_lib.config import Config, load_config
from pipeline_lib.errors import ConfigError, PipelineError

# Prefect is imported inside the functions: `plm --help` and the parser stay fast.

# a deployment created with `plm deploy --allow-unsafe-overrides` carries this tag (flows/runs.py reads it)
ALLOW_UNSAFE_TAG = "plm:allow-unsafe-overrides"

__all__ = ["FLOWS", "DEFAULT_POOL", "ALLOW_UNSAFE_TAG", "deploy", "parse_interval", "upcoming_runs", "SchedulerError",
           "ensure_work_pool", "ensure_failure_automation", "add_deploy_parser", "deploy_command", "add_worker_parser",
           "worker_command"]

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {"data_refresh": "flows/data_refresh.py:data_refresh", "end_to_end": "flows/end_to_end.py:end_to_end"}
DEFAULT_POOL = "plm-process"
CHECK_S = 60.0  # the server's scheduler picks up a new or changed deployment within seconds (every 5 s by default)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SchedulerError(PipelineError):
    """The Prefect server accepted a deployment but its scheduler created no runs for it."""


def parse_interval(text: str) -> timedelta:
    """``"20s"``, ``"15m"``, ``"6h"``, ``"1d"`` or plain seconds (``"90"``) as a positive timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"invalid interval {text!r}: a positive number with an optional unit s, m, h or d "
                          f"(e.g. 20s, 15m, 6h, 1d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "s"])


def _check_server() -> None:
    """A deployment lives on a long-lived server: without PREFECT_API_URL the client starts a temporary one,
    reports success against it and takes it down a second later; an unreachable one fails here, clearly."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("plm deploy needs a long-lived Prefect server: PREFECT_API_URL is not set (start one "
                          "with `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api, "
                          "or log in to Prefect Cloud); see docs/operations.md")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise PipelineError(f"the Prefect server at {url} does not answer ({type(problem).__name__}: {problem}); "
                            "is `prefect server start` running?")


def ensure_work_pool(name: str = DEFAULT_POOL, pool_type: str = "process") -> bool:
    """Create the work pool (with the worker type's default job template) unless it exists; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        template: dict[str, Any] = {}
        if pool_type == "process":
            from prefect.workers.process import ProcessWorker

            template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
        return True


def _config_parameter(config_path: str) -> str:
    """Relative to the repository root when inside it (runs start there), else absolute."""
    p = Path(config_path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _schedule(cron: str | None, interval: str | timedelta | None, timezone: str) -> Any:
    """A Prefect schedule from exactly one of ``cron`` and ``interval``, validated before the server is touched."""
    from prefect.schedules import Cron, Interval

    if (cron is None) == (interval is None):
        raise ConfigError("give exactly one of a cron schedule (--cron) and an interval (--interval)")
    try:
        ZoneInfo(timezone)
        if cron is not None:
            return Cron(cron, timezone=timezone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise ConfigError(f"invalid schedule {cron!r} ({timezone}): {exc}") from exc
    every = parse_interval(interval) if isinstance(interval, str) else interval
    return Interval(every, timezone=timezone)


def _when(cron: str | None, interval: str | timedelta | None) -> str:
    """How a schedule reads in messages: ``'0 3 * * 1'`` or ``every 6:00:00``."""
    if cron is not None:
        return f"'{cron}'"
    return f"every {parse_interval(interval) if isinstance(interval, str) else interval}"


def deploy(config_path: str, cron: str | None = None, name: str | None = None, work_pool: str = DEFAULT_POOL, *,
           interval: str | timedelta | None = None, flow: str = "data_refresh", overrides: list[str] | None = None,
           timezone: str = "UTC", paused: bool = False, if_changed: bool = True, source: str | Path = ROOT,
           check_s: float = CHECK_S, allow_unsafe_overrides: bool = False) -> UUID:
    """Create or update the deployment ``<flow>/<name>`` running ``flow`` on ``cron`` (or every ``interval``)
    with this config, at most one run at a time (later runs wait for a slot).

    The config is validated first (a typo fails here, not at 3 a.m.); the work pool is created as a process
    pool when missing. ``if_changed`` (flows that take it: data_refresh) ends a scheduled run early, with
    status ``no_new_release``, when the upstream source is unchanged. Unless ``paused`` or ``check_s`` is 0,
    waits up to ``check_s`` seconds for the server to schedule the upcoming runs and raises
    :class:`SchedulerError` with what is known of the cause when it does not. Returns the deployment id.
    Runs started through the Prefect API with other parameters may not name another config file, an
    executable or a path outside the workdir unless ``allow_unsafe_overrides`` (docs/security.md).
    """
    from prefect import flow as prefect_flow

    if flow not in FLOWS:
        raise ConfigError(f"unknown flow {flow!r}: choose one of {', '.join(FLOWS)}")
    cfg = load_config(config_path, overrides)
    schedule = _schedule(cron, interval, timezone)
    _check_server()
    ensure_work_pool(work_pool)
    remote = prefect_flow.from_source(source=str(source), entrypoint=FLOWS[flow])
    parameters: dict[str, Any] = {"config_path": _config_parameter(config_path), "overrides": list(overrides or [])}
    if "if_changed" in remote.parameters.properties:
        parameters["if_changed"] = if_changed
    name = name or f"{cfg.name}-{flow.replace('_', '-')}"
    when = _when(cron, interval)
    dep_id = remote.deploy(
        name=name, work_pool_name=work_pool, schedules=[schedule], parameters=parameters, concurrency_limit=1,
        tags=["plm", flow, cfg.name, *([ALLOW_UNSAFE_TAG] if allow_unsafe_overrides else [])], paused=paused,
        description=f"{flow} with {config_path} on {when} ({timezone})",
        build=False, push=False, print_next_steps=False, ignore_warnings=True)
    if cfg.notify.automation:
        ensure_failure_automation(cfg, dep_id, f"{flow}/{name}")
    if not paused and check_s > 0:
        _check_scheduled(dep_id, f"{flow}/{name}", check_s)
    return dep_id


def upcoming_runs(deployment_id: UUID, limit: int = 3) -> list[Any]:
    """The deployment's next scheduled flow runs, soonest first (what the server's scheduler created)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=limit)


def _check_scheduled(deployment_id: UUID, label: str, timeout_s: float) -> None:
    """Wait for the first auto-scheduled run; raise :class:`SchedulerError` with the likely cause when none comes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if upcoming_runs(deployment_id, limit=1):
            return
        time.sleep(1.0)
    from flows.doctor import scheduler_diagnosis

    raise SchedulerError(f"deployment {label} ({deployment_id}) is registered, but the Prefect server created no "
                         f"scheduled run for it within {timeout_s:.0f} s, so the schedule would never fire. "
                         f"{scheduler_diagnosis(deployment_id)}")


# What the automation POSTs: Prefect renders it (Jinja) when the event fires. The state message is left out:
# it is the run's exception text, which Prefect does not redact (the flow's own webhook call does).
_AUTOMATION_PAYLOAD = (
    '{"event": "prefect.flow-run.{{ flow_run.state.name }}", "state": "{{ flow_run.state.name | lower }}", '
    '"flow": "{{ flow.name }}", "run_id": "{{ flow_run.id }}", "flow_run": "{{ flow_run.name }}", '
    '"deployment": %s, "config": %s, "lineage": %s, "ui_url": "{{ flow_run | ui_url }}", '
    '"text": "plm {{ flow.name }} ({{ flow_run.name }}) {{ flow_run.state.name | lower }}"}')


def ensure_failure_automation(cfg: Config, deployment_id: UUID, deployment: str) -> UUID:
    """A Prefect automation: a flow run of ``deployment_id`` entering Failed or Crashed POSTs to the
    notify webhook (a Webhook block holds the URL as a secret). Replaces one of the same name; returns its id.

    It covers what the flow cannot report itself: a worker or process killed outright (Crashed).
    """
    import json

    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import EventTrigger, Posture

    from pipeline_lib.notify import webhook_url
    from tasks.artifacts import artifact_key

    url = webhook_url(cfg.notify)
    if url is None:
        raise ConfigError("notify.automation needs notify.webhook_url or notify.webhook_url_env (set when deploying)")
    block_id = Webhook(method="POST", url=url).save(artifact_key("plm", deployment, "failure"), overwrite=True)
    payload = _AUTOMATION_PAYLOAD % (json.dumps(deployment), json.dumps(cfg.name), json.dumps(str(cfg.lineage_path)))
    automation = Automation(
        name=f"plm {deployment}: failed or crashed", description=f"POST to the {cfg.name} webhook (notify)",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                             match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
                             posture=Posture.Reactive, threshold=1),
        actions=[CallWebhook(block_document_id=block_id, payload=payload)])
    try:
        Automation.read(name=automation.name).delete()
    except ValueError:  # none yet
        pass
    return automation.create().id


def add_deploy_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``deploy`` to the ``plm`` sub-commands."""
    p = sub.add_parser("deploy", help="schedule a flow as a Prefect deployment (needs a Prefect server)")
    p.add_argument("config", help="YAML config the scheduled runs use")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * 1" (Mondays 03:00)')
    when.add_argument("--interval", help="fixed interval instead of cron: 20s, 15m, 6h, 1d")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (default UTC)")
    p.add_argument("--flow", choices=sorted(FLOWS), default="data_refresh")
    p.add_argument("--name", default=None, help="deployment name (default <config name>-<flow>)")
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool (default {DEFAULT_POOL}, created if missing)")
    p.add_argument("--paused", action="store_true", help="register the schedule paused")
    p.add_argument("--always", action="store_true",
                   help="run every stage even when the upstream release is unchanged (default: stop early)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every scheduled run (repeatable)")
    p.add_argument("--check-s", type=float, default=CHECK_S,
                   help=f"seconds to wait for the server to schedule the first run (default {CHECK_S:.0f}; 0: skip)")
    p.add_argument("--allow-unsafe-overrides", action="store_true",
                   help="let runs started through the Prefect API with other parameters name another config, an "
                        "executable or a path outside the workdir (refused by default: docs/security.md)")
    return p


def deploy_command(args: argparse.Namespace) -> int:
    """Run ``plm deploy`` from parsed arguments."""
    dep_id = deploy(args.config, args.cron, args.name, args.pool, interval=args.interval, flow=args.flow,
                    overrides=args.overrides, timezone=args.timezone, paused=args.paused, if_changed=not args.always,
                    check_s=args.check_s, allow_unsafe_overrides=args.allow_unsafe_overrides)
    when = _when(args.cron, args.interval)
    print(f"deployment {dep_id}: {args.flow} on {when} ({args.timezone}) in work pool {args.pool}, "
          f"one run at a time")
    if args.paused:
        print("the schedule is paused: prefect deployment schedule resume ... (docs/operations.md)")
    for run in upcoming_runs(dep_id) if not args.paused else []:
        print(f"  next run {run.name}: {run.expected_start_time:%Y-%m-%d %H:%M:%S %Z}")
    print(f"start a worker to run it:  plm worker --pool {args.pool}   (or: prefect worker start --pool {args.pool})")
    return 0


def add_worker_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``worker`` to the ``plm`` sub-commands."""
    p = sub.add_parser("worker", help="run a Prefect process worker that executes scheduled runs (prefect worker "
                                      "start, stopping cleanly on SIGTERM and SIGINT)")
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool to poll (default {DEFAULT_POOL})")
    p.add_argument("--limit", type=int, default=1,
                   help="flow runs at once on this host (default 1: mmseqs and training each use the whole machine)")
    return p


def worker_command(args: argparse.Namespace) -> int:
    """``prefect worker start --pool POOL --limit N``, run in this process with SIGINT handled.

    A process started in the background of a shell script (``cmd &``, ``nohup``) inherits an *ignored* SIGINT.
    Prefect's worker answers SIGTERM by sending itself SIGINT, and that signal's previous handler runs, so such a
    worker ignores both and a service manager's stop hangs until it kills. With Python's own handler back in
    place, SIGINT and SIGTERM stop the worker as they do in a terminal. (In this process rather than a child: a
    child in the same process group would get a terminal's Ctrl-C twice, which Prefect takes as "kill now".)
    """
    from prefect.cli import app

    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = ["worker", "start", "--pool", args.pool, "--limit", str(args.limit)]
    print("plm worker: prefect " + " ".join(argv), flush=True)
    sys.argv = ["prefect", *argv]  # Prefect's CLI entry point reads its arguments there
    try:
        app()
    except SystemExit as exc:  # the CLI ends by exiting; its code is the command's
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m flows.deploy")
    add_deploy_parser(parser.add_subparsers(dest="cmd", required=True))
    try:
        sys.exit(deploy_command(parser.parse_args(["deploy", *sys.argv[1:]])))
    except PipelineError as exc:
        sys.exit(f"deploy: error: {exc}")
