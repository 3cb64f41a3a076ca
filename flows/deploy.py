"""Scheduled runs: register a flow of this repository as a Prefect deployment on a process work pool.

    plm deploy configs/uniref50.yaml --cron "0 3 * * 1"                 # data_refresh, Mondays 03:00 UTC
    plm deploy configs/demo.yaml --flow end_to_end --cron "0 4 1 * *" --name demo-monthly
    python -m flows.deploy configs/uniref50.yaml --cron "0 3 * * 1"     # the same without the CLI
    prefect worker start --pool plm-process                             # executes the scheduled runs

A server must be reachable (``prefect server start`` and ``PREFECT_API_URL``, or Prefect Cloud). The flow
code is taken from this checkout (``flow.from_source`` on the repository root), so a worker on the same
machine or on a shared filesystem runs exactly this code; the deployments declared in ``prefect.yaml``
(``prefect deploy --all``) are the same thing for the standard schedules. Kubernetes / Docker pools:
docs/operations.md. With ``notify.automation: true`` in the config, a Prefect automation also POSTs to the
config's webhook when a run of the deployment fails or crashes (docs/operations.md, section 10).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline_lib.config import Config, load_config
from pipeline_lib.errors import ConfigError, PipelineError

# Prefect is imported inside the functions: `plm --help` and the parser stay fast.

__all__ = ["FLOWS", "DEFAULT_POOL", "deploy", "ensure_work_pool", "ensure_failure_automation", "add_deploy_parser",
           "deploy_command"]

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {"data_refresh": "flows/data_refresh.py:data_refresh", "end_to_end": "flows/end_to_end.py:end_to_end"}
DEFAULT_POOL = "plm-process"


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


def deploy(config_path: str, cron: str, name: str | None = None, work_pool: str = DEFAULT_POOL, *,
           flow: str = "data_refresh", overrides: list[str] | None = None, timezone: str = "UTC",
           paused: bool = False, if_changed: bool = True, source: str | Path = ROOT) -> UUID:
    """Create or update the deployment ``<flow>/<name>`` running ``flow`` on ``cron`` with this config.

    The config is validated first (a typo fails here, not at 3 a.m.); the work pool is created as a process
    pool when missing. ``if_changed`` (flows that take it: data_refresh) ends a scheduled run early, with
    status ``no_new_release``, when the upstream source is unchanged. Returns the deployment id.
    """
    from prefect import flow as prefect_flow
    from prefect.schedules import Cron

    if flow not in FLOWS:
        raise ConfigError(f"unknown flow {flow!r}: choose one of {', '.join(FLOWS)}")
    cfg = load_config(config_path, overrides)
    try:
        ZoneInfo(timezone)
        schedule = Cron(cron, timezone=timezone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise ConfigError(f"invalid schedule {cron!r} ({timezone}): {exc}") from exc
    ensure_work_pool(work_pool)
    remote = prefect_flow.from_source(source=str(source), entrypoint=FLOWS[flow])
    parameters: dict[str, Any] = {"config_path": _config_parameter(config_path), "overrides": list(overrides or [])}
    if "if_changed" in remote.parameters.properties:
        parameters["if_changed"] = if_changed
    name = name or f"{cfg.name}-{flow.replace('_', '-')}"
    dep_id = remote.deploy(
        name=name, work_pool_name=work_pool, schedules=[schedule], parameters=parameters,
        tags=["plm", flow, cfg.name], paused=paused, description=f"{flow} with {config_path} on '{cron}' ({timezone})",
        build=False, push=False, print_next_steps=False, ignore_warnings=True)
    if cfg.notify.automation:
        ensure_failure_automation(cfg, dep_id, f"{flow}/{name}")
    return dep_id


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
    p.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * 1" (Mondays 03:00)')
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (default UTC)")
    p.add_argument("--flow", choices=sorted(FLOWS), default="data_refresh")
    p.add_argument("--name", default=None, help="deployment name (default <config name>-<flow>)")
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool (default {DEFAULT_POOL}, created if missing)")
    p.add_argument("--paused", action="store_true", help="register the schedule paused")
    p.add_argument("--always", action="store_true",
                   help="run every stage even when the upstream release is unchanged (default: stop early)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every scheduled run (repeatable)")
    return p


def deploy_command(args: argparse.Namespace) -> int:
    """Run ``plm deploy`` from parsed arguments."""
    dep_id = deploy(args.config, args.cron, args.name, args.pool, flow=args.flow, overrides=args.overrides,
                    timezone=args.timezone, paused=args.paused, if_changed=not args.always)
    print(f"deployment {dep_id}: {args.flow} on '{args.cron}' ({args.timezone}) in work pool {args.pool}\n"
          f"start a worker to run it:  prefect worker start --pool {args.pool}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m flows.deploy")
    add_deploy_parser(parser.add_subparsers(dest="cmd", required=True))
    try:
        sys.exit(deploy_command(parser.parse_args(["deploy", *sys.argv[1:]])))
    except PipelineError as exc:
        sys.exit(f"deploy: error: {exc}")
