"""Read-only access to the lineage DuckDB that never holds up the pipeline's writers.

    with read_only("work/lineage.duckdb") as con:
        con.execute("SELECT count(*) FROM runs").fetchone()

DuckDB lets one process write a file, or several read it, never both at once (a file lock). The pipeline's
:class:`~pipeline_lib.lineage.LineageStore` opens, writes and closes within milliseconds and retries while
the file is locked, so the dashboard does the same from the other side: every request opens the file
read-only, runs its queries and closes it at once, and retries while a writer holds the lock. When the
lock stays taken longer than ``lock_wait_s`` (a long transaction, a writer that keeps its connection
open), the database file and its write-ahead log are copied to a temporary snapshot and read from there:
the copy may miss the newest rows, never blocks anyone, and is deleted when the block ends. A file that
exists without the lineage tables (the first run is creating it) is waited for the same way.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from pipeline_lib.errors import PipelineError
from pipeline_lib.io import duckdb_connect
from pipeline_lib.lineage import LineageStore, resolve_rows

__all__ = ["read_only", "ReadOnlyLineage", "db_version", "rows", "DatabaseBusy"]

LOCK_WAIT_S = 3.0
SNAPSHOT_ATTEMPTS = 3


class DatabaseBusy(PipelineError):
    """The lineage file stayed locked and no consistent snapshot could be read."""


def _retryable(exc: Exception) -> bool:
    text = str(exc).lower()
    # "Could not set lock": another process writes. "different configuration": this process itself has a
    # read-write connection open (a flow and the dashboard in one interpreter); both clear within moments.
    return "lock" in text or "different configuration" in text


@contextmanager
def read_only(db_path: str | os.PathLike[str], *, lock_wait_s: float = LOCK_WAIT_S
              ) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived read-only connection; falls back to a snapshot copy when the file stays locked."""
    path = Path(db_path)
    if not path.is_file():
        raise PipelineError(f"no lineage database at {path}: run a flow first")
    deadline = time.monotonic() + lock_wait_s
    delay = 0.02
    con: duckdb.DuckDBPyConnection | None = None
    while con is None:
        try:
            con = duckdb_connect(str(path), read_only=True)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _retryable(exc):
                raise PipelineError(f"cannot read lineage database {path}: {exc}") from exc
        else:
            if not _has_schema(con):  # DuckDB made the file; its creator has not committed the tables yet
                con.close()
                con = None
                if time.monotonic() > deadline:
                    raise PipelineError(f"lineage database {path} has no lineage tables (yet): a run is creating "
                                        "it, or it is not a lineage database")
        if con is None:
            if time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
    if con is not None:
        try:
            with _rooted(con, path):
                yield con
        finally:
            con.close()
        return
    with _snapshot(path) as con, _rooted(con, path):
        yield con


# connection -> the directory its lineage file lies in (a snapshot copy's too): relative paths resolve there
_ROOTS: dict[int, Path] = {}


@contextmanager
def _rooted(con: duckdb.DuckDBPyConnection, path: Path) -> Iterator[None]:
    _ROOTS[id(con)] = path.resolve().parent
    try:
        yield
    finally:
        _ROOTS.pop(id(con), None)


def root_of(con: duckdb.DuckDBPyConnection) -> Path:
    """The directory of the lineage file ``con`` reads (the working directory for one opened elsewhere)."""
    return _ROOTS.get(id(con)) or Path.cwd()


def _has_schema(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'runs'").fetchone()
    return row is not None and row[0] > 0


@contextmanager
def _snapshot(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    last: Exception | None = None
    for _ in range(SNAPSHOT_ATTEMPTS):
        tmp = Path(tempfile.mkdtemp(prefix="plm-dash-"))
        try:
            copy = tmp / path.name
            shutil.copyfile(path, copy)
            wal = path.with_name(path.name + ".wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
            # a copy taken mid-checkpoint can be torn: DuckDB's block checksums reject it, and we copy again
            con = duckdb_connect(str(copy), read_only=True)
        except (OSError, duckdb.Error) as exc:
            last = exc
            shutil.rmtree(tmp, ignore_errors=True)
            time.sleep(0.1)
            continue
        try:
            yield con
        finally:
            con.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    raise DatabaseBusy(f"lineage database {path} is locked and no snapshot could be read: {last}")


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Run a query and return its rows as dicts."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return resolve_rows([dict(zip(names, r, strict=False)) for r in cur.fetchall()], root_of(con))


def db_version(db_path: str | os.PathLike[str]) -> str:
    """A token that changes whenever the database or its write-ahead log changes (cheap: two stat calls)."""
    parts = []
    for p in (Path(db_path), Path(f"{db_path}.wal")):
        try:
            st = p.stat()
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return "/".join(parts)


class ReadOnlyLineage(LineageStore):
    """:class:`LineageStore`'s queries (``show``, ``trace``) over one read-only connection.

    The base class creates the schema on open, which needs the write lock; this one never writes.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str | os.PathLike[str] = "") -> None:
        self.path = Path(path)
        self._root = self.path.resolve().parent if path else None
        self.lock_timeout_s = 0.0
        self._lock = threading.RLock()
        self._con = con

    def root(self) -> Path:
        return self._root or root_of(self._con)

    @contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if not read_only:
            raise PipelineError("the dashboard opens the lineage database read-only")
        yield self._con
