"""``plm doctor``: is this installation able to run scheduled refreshes? One table, one line per check.

    plm doctor                          # the server PREFECT_API_URL names, its scheduler, plm deployments, pools
    plm doctor --pool plm-process       # also a pool no deployment uses yet

Checks, in order: the server answers (``/health``, version), its scheduler service is enabled, this environment's
SQLAlchemy is one Prefect 3.8's scheduler works with, every deployment tagged ``plm`` has upcoming runs when its
schedule is active (and a concurrency limit), and every work pool they use exists, is not paused and has a worker
that sent a heartbeat recently. Exit status 1 when a check fails. ``deploy`` uses :func:`scheduler_diagnosis`
for its own error message.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from uuid import UUID

__all__ = ["Check", "doctor", "scheduler_diagnosis", "add_doctor_parser", "doctor_command"]

# Prefect 3.8.8's scheduler fails on every loop with SQLAlchemy 2.1 ("Can't evaluate bulk DML statement",
# prefect/server/models/deployments.py, _insert_scheduled_flow_runs): deployments are accepted, no run is created.
_SQLALCHEMY_BROKEN = (2, 1)


@dataclass
class Check:
    name: str
    status: str  # ok / warn / fail
    detail: str


def _sqlalchemy_check() -> Check:
    try:
        v = version("sqlalchemy")
    except PackageNotFoundError:
        return Check("sqlalchemy", "warn", "not installed here: cannot check the server's environment")
    parts = tuple(int(x) for x in v.split(".")[:2] if x.isdigit())
    if parts >= _SQLALCHEMY_BROKEN:
        return Check("sqlalchemy", "fail", f"{v}: Prefect 3.8's scheduler creates no runs with SQLAlchemy >= 2.1 "
                                           f"(its log: \"Can't evaluate bulk DML statement\"); install with "
                                           f"constraints.txt (make install) and restart the server")
    return Check("sqlalchemy", "ok", v)


def _scheduler_settings(client: Any) -> dict[str, Any]:
    """The server's scheduler settings (``/admin/settings``; raises where the server has no admin routes)."""
    return client._client.get("/admin/settings").json()["server"]["services"]["scheduler"]


def scheduler_diagnosis(deployment_id: UUID | None = None, *, client: Any = None, from_doctor: bool = False) -> str:
    """What is known about why the server's scheduler created no runs (for error messages); ``client`` is an
    open sync Prefect client, or None to open one."""
    from prefect.client.orchestration import get_client

    if client is None:
        with get_client(sync_client=True) as opened:
            return scheduler_diagnosis(deployment_id, client=opened, from_doctor=from_doctor)
    hints = []
    sa = _sqlalchemy_check()
    if sa.status == "fail":
        hints.append(f"SQLAlchemy {sa.detail}")
    try:
        if not _scheduler_settings(client).get("enabled", True):
            hints.append("the server's scheduler service is disabled (PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED)")
        if deployment_id is not None:
            dep = client.read_deployment(deployment_id)
            if dep.paused or not any(s.active for s in dep.schedules):
                hints.append("the deployment or its schedule is paused")
    except Exception as exc:  # a diagnosis must not hide the error it explains
        hints.append(f"could not read the server's settings: {type(exc).__name__}: {exc}")
    hints = hints or ["the server's log shows the scheduler's error (prefect server start's output)"]
    return "Likely cause: " + "; ".join(hints) + ("." if from_doctor else ". Check everything with: plm doctor")


def _server_checks(client: Any) -> list[Check]:
    api = str(client.api_url)
    ok = client.api_healthcheck()
    if ok is not None:
        return [Check("server", "fail", f"{api} does not answer ({type(ok).__name__}: {ok}); start one with "
                                        "prefect server start and export PREFECT_API_URL")]
    try:
        server_version = client._client.get("/admin/version").json()
    except Exception:  # Prefect Cloud has no admin routes: the health check is what counts
        server_version = "version not reported"
    checks = [Check("server", "ok", f"{api} (Prefect {server_version})")]
    try:
        sched = _scheduler_settings(client)
    except Exception as exc:
        return [*checks, Check("scheduler", "warn", f"settings not readable ({type(exc).__name__}): not checked")]
    if sched.get("enabled", True):
        checks.append(Check("scheduler", "ok", f"enabled, loop every {sched.get('loop_seconds')} s"))
    else:
        checks.append(Check("scheduler", "fail", "disabled on the server (PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED)"))
    return checks


def _deployment_checks(client: Any) -> tuple[list[Check], set[str]]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    from flows.deploy import upcoming_runs

    checks, pools = [], set()
    deployments = client.read_deployments(deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["plm"])))
    if not deployments:
        checks.append(Check("deployments", "warn", "no deployment tagged plm: plm deploy CONFIG --cron ..."))
    flows = {f.id: f.name for f in client.read_flows()} if deployments else {}
    for dep in deployments:
        label = f"{flows.get(dep.flow_id, '?')}/{dep.name}"
        pools.add(dep.work_pool_name)
        active = not dep.paused and any(s.active for s in dep.schedules)
        nxt = upcoming_runs(dep.id, limit=1)
        limit = dep.global_concurrency_limit.limit if dep.global_concurrency_limit else None
        detail = f"pool {dep.work_pool_name}, concurrency limit {limit or 'none'}, "
        if not active:
            checks.append(Check(label, "ok", detail + "schedule paused"))
        elif nxt:
            checks.append(Check(label, "ok" if limit else "warn",
                                detail + f"next run {nxt[0].expected_start_time:%Y-%m-%d %H:%M:%S %Z}"))
        else:
            checks.append(Check(label, "fail", detail + "active schedule but no upcoming run: " +
                                scheduler_diagnosis(dep.id, client=client, from_doctor=True)))
    return checks, pools


def _pool_checks(client: Any, pools: set[str]) -> list[Check]:
    from prefect.exceptions import ObjectNotFound

    checks = []
    for name in sorted(p for p in pools if p):
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            checks.append(Check(f"pool {name}", "fail", "does not exist: plm deploy creates it"))
            continue
        workers = client.read_workers_for_work_pool(name)
        online = [w for w in workers if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"]
        if pool.is_paused:
            checks.append(Check(f"pool {name}", "fail", "paused: prefect work-pool resume " + name))
        elif not online:
            checks.append(Check(f"pool {name}", "warn", f"no worker online: plm worker --pool {name}"))
        else:
            beats = ", ".join(f"{w.name} ({w.last_heartbeat_time:%H:%M:%S})" for w in online)
            checks.append(Check(f"pool {name}", "ok", f"{pool.type}, {len(online)} worker(s) online: {beats}"))
    return checks


def doctor(pools: list[str] | None = None) -> list[Check]:
    """Every check, in order; the server checks stop the rest when the server does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    checks = [_sqlalchemy_check()]
    if not PREFECT_API_URL.value():  # the client would start a temporary server of its own and find it healthy
        return [*checks, Check("server", "fail", "PREFECT_API_URL is not set: scheduled runs need a long-lived "
                                                 "server (prefect server start; export PREFECT_API_URL=...)")]
    with get_client(sync_client=True) as client:
        server = _server_checks(client)
        checks += server
        if server[0].status == "fail":
            return checks
        deps, used = _deployment_checks(client)
        return checks + deps + _pool_checks(client, used | set(pools or []))


def add_doctor_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("doctor", help="check the Prefect server, its scheduler, deployments, pools and workers")
    p.add_argument("--pool", action="append", default=[], help="also check this work pool (repeatable)")
    return p


def doctor_command(args: argparse.Namespace) -> int:
    checks = doctor(args.pool)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.name:<{width}}  {c.status:<4}  {c.detail}")
    return 1 if any(c.status == "fail" for c in checks) else 0
