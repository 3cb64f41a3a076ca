"""Failure notifications: one JSON POST to the configured webhook when a pipeline run fails or crashes.

    url = webhook_url(cfg.notify)                       # notify.webhook_url, or the variable notify.webhook_url_env
    notify_failure(cfg.notify, flow="data_refresh", run_id=..., config_name="uniref50", exc=exc, lineage_path=...)
    # -> True when the webhook answered 2xx; never raises. The JSON body is failure_payload(...)

The flows call this from ``flows.runs.pipeline_run`` when the run's block raises. The payload names the flow,
run, config, failing stage and error, with credentials in URLs redacted (:func:`redact_secrets`); the webhook
URL itself is never part of it. A notification that cannot be delivered is logged, not raised: it must not
replace the run's own error.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from pipeline_lib.config import NotifyConfig
from pipeline_lib.errors import ConfigError
from pipeline_lib.lineage import LineageStore, redact_secrets, utcnow

__all__ = ["webhook_url", "failure_payload", "failing_stage", "post_json", "notify_failure"]

log = logging.getLogger("pipeline_lib.notify")


def webhook_url(cfg: NotifyConfig) -> str | None:
    """The configured URL (``webhook_url`` wins over ``webhook_url_env``), checked against ``allowed_hosts``."""
    url = cfg.webhook_url or (os.environ.get(cfg.webhook_url_env) if cfg.webhook_url_env else None)
    if not url:
        return None
    from pipeline_lib.sources.download import PermanentDownloadError, check_url_allowed

    try:
        check_url_allowed(url, ("http", "https"), cfg.allowed_hosts)
    except PermanentDownloadError as exc:
        raise ConfigError(f"notify: {exc}") from None
    return url


def failing_stage(lineage_path: str | os.PathLike[str], run_id: str) -> str | None:
    """The stage of the run's last failed step in lineage (None: it failed outside a stage)."""
    try:
        rows = LineageStore(lineage_path).query(
            "SELECT stage FROM steps WHERE run_id=? AND status='failed' ORDER BY ended_at DESC LIMIT 1", [run_id])
    except Exception as exc:  # the lineage file may be the very thing that failed
        log.warning("could not read the failing stage from %s: %s", lineage_path, exc)
        return None
    return rows[0]["stage"] if rows else None


def failure_payload(*, flow: str, run_id: str, config_name: str, exc: BaseException,
                    lineage_path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the webhook receives. ``state`` is ``crashed`` for interrupts and signals, else ``failed``."""
    state = "failed" if isinstance(exc, Exception) else "crashed"
    stage = failing_stage(lineage_path, run_id)
    payload = {
        "event": f"plm.run.{state}", "state": state, "flow": flow, "run_id": run_id, "config": config_name,
        "stage": stage, "error_type": type(exc).__name__, "error": str(exc)[:4000],
        "lineage": str(Path(lineage_path)), "host": socket.gethostname(), "at": utcnow().isoformat(),
        "text": f"plm {flow} ({config_name}) {state}" + (f" in stage {stage}" if stage else "")
                + f": {type(exc).__name__}: {str(exc)[:300]}",
        **(extra or {}),
    }
    return redact_secrets(payload)


def post_json(url: str, payload: dict[str, Any], *, timeout_s: float = 10.0) -> int:
    """POST ``payload`` as JSON (no redirects: the allow-list check covers the host we were given)."""
    import requests

    resp = requests.post(url, data=json.dumps(payload, default=str).encode(), timeout=timeout_s,
                         headers={"Content-Type": "application/json", "User-Agent": "plm-pipeline"},
                         allow_redirects=False)
    resp.close()
    return resp.status_code


def notify_failure(cfg: NotifyConfig, **payload_args: Any) -> bool:
    """POST :func:`failure_payload` (``payload_args``) when a webhook is configured; True if it answered 2xx.

    Never raises: a notification that fails is logged, and the run's own error goes on.
    """
    try:
        url = webhook_url(cfg)
        if url is None:
            return False
        status = post_json(url, failure_payload(**payload_args), timeout_s=cfg.timeout_s)
    except Exception as exc:
        log.warning("failure notification not sent: %s", redact_secrets(str(exc)))
        return False
    if not 200 <= status < 300:
        log.warning("failure notification: the webhook answered HTTP %d", status)
        return False
    return True
