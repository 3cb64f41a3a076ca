"""Error hierarchy of the pipeline.

Every error names what went wrong and where (file, record, key path), so a user can act on it.
Prefect retries only :class:`TransientError` subclasses (network hiccups, locks), never data errors.
"""
from __future__ import annotations

__all__ = [
    "PipelineError",
    "ConfigError",
    "DataValidationError",
    "ToolError",
    "TransientError",
    "DownloadError",
    "ChecksumError",
    "RunLookupError",
]


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """A configuration file or override is invalid (names the key path and what was expected)."""


class DataValidationError(PipelineError):
    """Input data cannot be used. Carries the file, the record and the reason."""

    def __init__(self, reason: str, *, path: str | None = None, record: str | int | None = None):
        self.reason = reason
        self.path = path
        self.record = record
        where = []
        if path is not None:
            where.append(f"file {path}")
        if record is not None:
            where.append(f"record {record}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{reason}")


class ToolError(PipelineError):
    """An external binary (mmseqs, foldseek) is missing or exited with an error."""

    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None,
                 stderr_tail: str = ""):
        self.argv = argv or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        parts = [message]
        if argv:
            parts.append("command: " + " ".join(argv))
        if returncode is not None:
            parts.append(f"exit code: {returncode}")
        if stderr_tail:
            parts.append("stderr (last lines):\n" + stderr_tail)
        super().__init__("\n".join(parts))


class TransientError(PipelineError):
    """A failure worth retrying (network, lock contention). ``retries_exhausted``: the code that raised it has
    already retried as configured, so nothing retries it again (Prefect's task retries would multiply them)."""

    retries_exhausted: bool = False


class DownloadError(TransientError):
    """An HTTP transfer failed (status, stall, connection)."""


class ChecksumError(PipelineError):
    """A downloaded file does not match its published size or checksum."""


class RunLookupError(PipelineError):
    """A run id or id prefix names no run, or several; ``candidates`` holds the runs it matched (newest first)."""

    def __init__(self, message: str, candidates: list[dict] | None = None):
        self.candidates = candidates or []
        super().__init__(message)
