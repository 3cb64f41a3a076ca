"""Config sections for where and how a run operates rather than what it computes: the task runner, the
lineage file, object storage, retention and failure notifications (imported into :mod:`pipeline_lib.config`,
which assembles every section), and ``StrictModel``, the base of every section.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["StrictModel", "RunnerConfig", "DaskRunnerConfig", "RayRunnerConfig", "LineageConfig", "StorageConfig",
           "RetentionConfig", "NotifyConfig", "local_path"]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DaskRunnerConfig(StrictModel):
    address: str | None = Field(None, description="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 "
                                                  "(None: start a local cluster for the run).")
    n_workers: int = Field(2, ge=1, description="Local cluster: worker processes.")
    threads_per_worker: int = Field(1, ge=1, description="Local cluster: task threads per worker process.")
    processes: bool = Field(True, description="Local cluster: workers are processes (False: threads of this one).")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        address = r"(tcp|tls|ucx|ws|wss)://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):\d{1,5}"
        if value is not None and not re.fullmatch(address, value):
            raise ValueError("must look like tcp://host:port (a Dask scheduler address)")
        return value


class RayRunnerConfig(StrictModel):
    address: str | None = Field(None, description="Ray cluster, e.g. ray://head:10001 or 'auto' "
                                                  "(None: start a local Ray instance for the run).")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and not re.fullmatch(r"(ray://)?[^\s/:]+:\d{1,5}", value):
            raise ValueError("must be 'auto', host:port or ray://host:port")
        return value


class RunnerConfig(StrictModel):
    """Where a run's tasks execute. Changes speed only: never part of a cache key or the config hash."""

    kind: Literal["threads", "processes", "dask", "ray"] = Field(
        "threads", description="threads (default), processes (one machine), dask or ray (prefect-dask / prefect-ray).")
    max_workers: int | None = Field(None, ge=1, description="threads / processes: pool size (None: Prefect's default).")
    dask: DaskRunnerConfig = Field(default_factory=DaskRunnerConfig, description="kind: dask.")
    ray: RayRunnerConfig = Field(default_factory=RayRunnerConfig, description="kind: ray.")


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(value: str | None, why: str) -> str | None:
    """Refuse a URL where a local path is needed (``Path("s3://b/p")`` would quietly be a folder ``s3:/b/p``)."""
    if value is not None and _URL.match(value):
        raise ValueError(f"a URL is not allowed here: {why}")
    return value


class LineageConfig(StrictModel):
    path: str | None = Field(None, description="DuckDB file (default: <workdir>/lineage.duckdb); a local path: "
                                               "DuckDB cannot write to object storage.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return local_path(value, "the lineage database is a local file (DuckDB cannot write to object storage); "
                                  "give a path on a local or shared file system")


# option names that would carry credentials: those come from the environment, never from the config
_SECRET_OPTION = re.compile(r"(?i)(key|secret|token|password|passwd|credential|session)")


class StorageConfig(StrictModel):
    """Object storage that finished stage directories are published to; the workdir stays the local cache."""

    url: str | None = Field(None, description=(
        "fsspec URL that <workdir>/stages/... is mirrored to, e.g. s3://bucket/plm (None: local disk only). "
        "Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE)."))
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph, moto), e.g. "
                                                       "http://127.0.0.1:9000 (None: AWS).")
    region: str | None = Field(None, description="S3 region (None: from the environment / AWS config).")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "Extra fsspec storage options, e.g. {config_kwargs: {max_pool_connections: 32}}; credential-like "
        "names (key, secret, token, ...) are refused."))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^\s@]+", value):
            raise ValueError("must be an fsspec URL without credentials, e.g. s3://bucket/prefix")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/@]+(/[^\s@]*)?", value):
            raise ValueError("must be an http(s) URL without user:password@ (credentials come from the environment)")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        def walk(node: Any, path: str) -> None:
            for k, v in (node.items() if isinstance(node, dict) else []):
                if _SECRET_OPTION.search(str(k)):
                    raise ValueError(f"{path}{k}: credentials come from the environment, not the config")
                walk(v, f"{path}{k}.")
        walk(value, "")
        return value


class RetentionConfig(StrictModel):
    keep_releases: int | None = Field(
        None, ge=1, description="After a completed data refresh, delete the stage directories that only runs of "
                                "older source releases used, keeping the newest N releases (None: keep everything).")


class NotifyConfig(StrictModel):
    webhook_url: str | None = Field(None, description="POST a JSON message here when a run fails or crashes.")
    webhook_url_env: str | None = Field(
        None, description="Name of an environment variable holding the webhook URL (for URLs that embed a token: "
                          "the config, and so lineage, never sees them).")
    allowed_hosts: list[str] | None = Field(None, description="Hosts the webhook URL may point to (None: any).")
    timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the webhook to answer.")
    automation: bool = Field(False, description="`plm deploy` also creates a Prefect automation: a flow run of the "
                                                "deployment turning Failed or Crashed calls the same webhook, even "
                                                "when the process died before it could report.")

    @model_validator(mode="after")
    def _url(self) -> NotifyConfig:
        from urllib.parse import urlsplit

        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook_url must be an http(s) URL with a host")
            if self.allowed_hosts is not None and parts.hostname.lower() not in {h.lower() for h in self.allowed_hosts}:
                raise ValueError(f"webhook_url host {parts.hostname!r} is not in allowed_hosts")
        return self
