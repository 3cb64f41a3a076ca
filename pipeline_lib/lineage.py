"""Lineage in DuckDB: runs, steps, artifacts, the edges between them, and metrics.

    store = LineageStore("work/lineage.duckdb")
    store.start_run(RunRecord(...)); store.record_step(StepRecord(...)); store.end_run(run_id, "completed")
    store.trace("work/shards/train/part-00000.parquet")   # what produced this shard, from what
    store.resolve_run("01a24b59e3")                       # a run by exact id or unique prefix, else an error

DuckDB allows one writing process: every write opens the file, writes in one transaction and closes it
at once, retrying while another process holds the lock, so readers (CLI, dashboard) and several runs
interleave. Within a process a lock serializes writers. A task running in another process (a process
pool, Dask or Ray worker) writes nothing: it keeps its records in a :class:`PendingLineage` that travels
back with its result, and the flow's process writes them (``tasks.common.resolve``).
Credentials never reach the file: ``user:password@`` in URLs and token-like query values are written
as ``***`` (:func:`redact_secrets`), in JSON columns and error texts alike.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipeline_lib.errors import PipelineError, RunLookupError
from pipeline_lib.io import duckdb_connect, sha256_file, stable_hash

__all__ = ["ArtifactRecord", "StepRecord", "RunRecord", "LineageStore", "PendingLineage", "artifact_for", "utcnow",
           "redact_secrets", "to_json", "unique_prefixes", "stored_path", "resolve_rows"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR, name VARCHAR, config JSON, config_hash VARCHAR,
    code_version VARCHAR, tool_versions JSON, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ,
    status VARCHAR, host VARCHAR, pid INTEGER, workdir VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS steps (
    step_id VARCHAR PRIMARY KEY, run_id VARCHAR, stage VARCHAR, params JSON, cache_key VARCHAR,
    status VARCHAR, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, duration_s DOUBLE, error VARCHAR,
    tool_versions JSON, stats JSON);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id VARCHAR PRIMARY KEY, path VARCHAR, kind VARCHAR, content_hash VARCHAR, rows BIGINT,
    bytes BIGINT, meta JSON, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS edges (step_id VARCHAR, artifact_id VARCHAR, direction VARCHAR);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, step_id VARCHAR, name VARCHAR, step BIGINT, value DOUBLE, ts TIMESTAMPTZ);
ALTER TABLE steps ADD COLUMN IF NOT EXISTS key_parts JSON;
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ArtifactRecord:
    path: str
    kind: str
    content_hash: str
    rows: int | None = None
    bytes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepRecord:
    run_id: str
    stage: str
    params: dict[str, Any]
    cache_key: str
    status: str                       # completed / cached / failed
    started_at: datetime
    ended_at: datetime
    inputs: list[ArtifactRecord] = field(default_factory=list)
    outputs: list[ArtifactRecord] = field(default_factory=list)
    tool_versions: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    step_id: str = ""
    key_parts: dict[str, Any] = field(default_factory=dict)  # what the cache key hashes: params, inputs, code

    def __post_init__(self) -> None:
        if not self.step_id:
            self.step_id = stable_hash([self.run_id, self.stage, self.cache_key, self.started_at.isoformat()])[:24]


@dataclass
class RunRecord:
    run_id: str
    flow: str
    name: str
    config: dict[str, Any]
    config_hash: str
    code_version: str
    workdir: str
    tool_versions: dict[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=utcnow)
    status: str = "running"


def artifact_for(path: str | os.PathLike[str], kind: str, *, rows: int | None = None,
                 meta: dict[str, Any] | None = None, content_hash: str | None = None) -> ArtifactRecord:
    """Describe a file (or a directory, hashed over its sorted files) as an artifact."""
    p = Path(path).resolve()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        digest = content_hash or stable_hash([[str(f.relative_to(p)), sha256_file(f)] for f in files])
        size = sum(f.stat().st_size for f in files)
    else:
        digest = content_hash or sha256_file(p)
        size = p.stat().st_size
    return ArtifactRecord(str(p), kind, digest, rows=rows, bytes=size, meta=meta or {})


_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> threading.RLock:
    """One lock per database file for the whole process: DuckDB refuses a second open of the same
    file from one process, so every LineageStore on that path (one per task thread) must share it."""
    key = str(path.resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


# user:password@ in any URL, and the values of query parameters whose name looks like a secret
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@\"']+@")
_SECRET_QUERY = re.compile(r"(?i)([?&][a-z0-9_.-]*(?:token|key|sig|signature|password|passwd|secret|auth|credential)"
                           r"[a-z0-9_.-]*=)[^&#\s\"']+")


def redact_secrets(obj: Any) -> Any:
    """``obj`` (strings, and lists / dicts of them, walked) with URL credentials replaced by ``***``."""
    if isinstance(obj, str):
        return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", obj))
    if isinstance(obj, dict):
        return {k: redact_secrets(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_secrets(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """The JSON that lineage stores for ``obj`` (sorted keys, secrets redacted): compare stored params with it."""
    return json.dumps(redact_secrets(obj), sort_keys=True, default=str)


_json = to_json


PATH_COLUMNS = ("path", "workdir")   # columns whose values lineage stores relative to its own directory


def stored_path(path: str, root: Path) -> str:
    """``path`` as lineage stores it: relative to ``root`` (the lineage database's directory, by default the
    workdir) when it lies inside, so that a moved or copied workdir's lineage still names its files; other
    paths and URLs as given."""
    p = Path(path)
    if "://" in path or not p.is_absolute() or not p.is_relative_to(root):
        return path
    return p.relative_to(root).as_posix() or "."


def resolve_rows(rows: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Query rows with the relative values of :data:`PATH_COLUMNS` made absolute against ``root``."""
    for row in rows:
        for col in PATH_COLUMNS:
            v = row.get(col)
            if isinstance(v, str) and v and "://" not in v and not v.startswith("/"):
                row[col] = str(root / v) if v != "." else str(root)
    return rows


def unique_prefixes(run_ids: Iterable[str], min_len: int = 8) -> dict[str, str]:
    """Each id's shortest prefix, ``min_len`` characters at least, that starts no other id: a label that
    :meth:`LineageStore.resolve_run` resolves back. An id that another id extends is its own label in full."""
    ids = sorted(set(run_ids))
    out = {}
    for i, rid in enumerate(ids):   # in sorted order the longest prefix shared with any id is a neighbour's
        shared = max((len(os.path.commonprefix([rid, ids[j]])) for j in (i - 1, i + 1) if 0 <= j < len(ids)),
                     default=0)
        out[rid] = rid[:max(min_len, shared + 1)]
    return out


def _when(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}" if t else "-"


def _run_lines(runs: list[dict[str, Any]], limit: int = 20) -> str:
    lines = [f"  {r['run_id']}  {r['flow']}  {r['status']}  started {_when(r['started_at'])}" for r in runs[:limit]]
    return "\n".join(lines + ([f"  ... and {len(runs) - limit} more"] if len(runs) > limit else []))


class LineageStore:
    """The lineage database. Safe to share between threads; writes retry while another process writes."""

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout_s: float = 120.0, create: bool = True) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._lock = _path_lock(self.path)
        if not create:  # a reader: never opens the file for writing
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size == 0:
            self.path.unlink()  # an empty file is a creation that failed (disk full): nothing to keep
        existed = self.path.exists()
        try:
            with self._connect() as con:
                con.execute(_SCHEMA)
        except BaseException:
            if not existed and _unusable(self.path):  # half-written: every later open would fail
                for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                    p.unlink(missing_ok=True)
            raise

    def root(self) -> Path:
        """The directory relative lineage paths are relative to: the database file's."""
        return self.path.resolve().parent

    def stored_path(self, path: str) -> str:
        return stored_path(path, self.root())

    @contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise PipelineError(f"no lineage database at {self.path}")
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        with self._lock:
            while True:
                try:
                    con = duckdb_connect(str(self.path), read_only=read_only)
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    # another process holds the file lock, or this process has it open read-only
                    busy = "lock" in str(exc).lower() or "different configuration" in str(exc).lower()
                    if not busy:
                        raise PipelineError(f"cannot open lineage database {self.path}: {exc}") from exc
                    if time.monotonic() > deadline:
                        raise PipelineError(f"lineage database {self.path} is busy: {exc}") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
            try:
                yield con
            finally:
                con.close()

    # --- writes -------------------------------------------------------------------------------------

    def start_run(self, run: RunRecord) -> None:
        with self._connect() as con:
            con.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,NULL,?,?,?,?,NULL)", [
                run.run_id, run.flow, run.name, _json(run.config), run.config_hash, run.code_version,
                _json(run.tool_versions), run.started_at, run.status, os.uname().nodename, os.getpid(),
                self.stored_path(str(Path(run.workdir).resolve()))])

    def end_run(self, run_id: str, status: str, error: str | None = None,
                tool_versions: dict[str, str] | None = None) -> None:
        with self._connect() as con:
            con.execute("UPDATE runs SET ended_at=?, status=?, error=? WHERE run_id=?",
                        [utcnow(), status, redact_secrets(error), run_id])
            if tool_versions:
                con.execute("UPDATE runs SET tool_versions=? WHERE run_id=?", [_json(tool_versions), run_id])

    def mark_crashed(self) -> int:
        """Runs left 'running' by a process that no longer exists on this host become 'crashed'."""
        host = os.uname().nodename
        with self._connect() as con:
            rows = con.execute("SELECT run_id, pid FROM runs WHERE status='running' AND host=?", [host]).fetchall()
            dead = [rid for rid, pid in rows if pid is not None and not _pid_alive(pid)]
            for rid in dead:
                con.execute("UPDATE runs SET status='crashed', ended_at=? WHERE run_id=?", [utcnow(), rid])
        return len(dead)

    def record_step(self, step: StepRecord) -> None:
        with self._connect() as con:
            con.execute("BEGIN")
            con.execute("INSERT OR REPLACE INTO steps (step_id, run_id, stage, params, cache_key, status, started_at, "
                        "ended_at, duration_s, error, tool_versions, stats, key_parts) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", [
                step.step_id, step.run_id, step.stage, _json(step.params), step.cache_key, step.status,
                step.started_at, step.ended_at, (step.ended_at - step.started_at).total_seconds(),
                redact_secrets(step.error),
                _json(step.tool_versions), _json(step.stats), _json(step.key_parts) if step.key_parts else None])
            root = self.root()
            for direction, arts in (("input", step.inputs), ("output", step.outputs)):
                for a in arts:
                    # files in the lineage's directory (the workdir) by relative path, the id from that path
                    path = stored_path(redact_secrets(a.path), root)
                    aid = stable_hash([path, a.content_hash])[:24]
                    con.execute("INSERT OR IGNORE INTO artifacts VALUES (?,?,?,?,?,?,?,?)", [
                        aid, path, a.kind, a.content_hash, a.rows, a.bytes, _json(a.meta), utcnow()])
                    con.execute("INSERT INTO edges VALUES (?,?,?)", [step.step_id, aid, direction])
            con.execute("COMMIT")

    def record_metrics(self, run_id: str, step_id: str | None, rows: list[tuple[str, int, float]]) -> None:
        if not rows:  # an evaluation that measured nothing: DuckDB's executemany refuses an empty list
            return
        with self._connect() as con:
            now = utcnow()
            con.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?)",
                            [(run_id, step_id, name, int(s), float(v), now) for name, s, v in rows])

    def write_pending(self, records: list[tuple[str, Any]]) -> None:
        """Write what a worker process kept for this writer (:meth:`PendingLineage.drain`), in its order."""
        for kind, record in records:
            if kind == "step":
                self.record_step(record)
            else:
                self.record_metrics(*record)

    # --- reads --------------------------------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._connect(read_only=True) as con:
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return resolve_rows([dict(zip(names, row, strict=False)) for row in cur.fetchall()], self.root())

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.query("SELECT run_id, flow, name, status, started_at, ended_at, config_hash, code_version, error "
                          "FROM runs ORDER BY started_at DESC LIMIT ?", [limit])

    def run_prefixes(self, min_len: int = 8) -> dict[str, str]:
        """``{run_id: shortest unique prefix}`` over every run in the database (:func:`unique_prefixes`)."""
        return unique_prefixes((r["run_id"] for r in self.query("SELECT run_id FROM runs")), min_len)

    def resolve_run(self, id_or_prefix: str) -> dict[str, Any]:
        """The run (its ``runs`` row) that ``id_or_prefix`` names: an exact id, else the one run whose id starts
        with it. ``%`` and ``_`` are literal characters.

        A prefix of several runs raises :class:`RunLookupError` listing them: ids that Prefect's scheduler makes
        are time-ordered and share their first 8-12 characters, so no match is a safe guess. No match raises too.
        """
        if not id_or_prefix:
            raise RunLookupError("an empty run id names no run")
        found = self.query("SELECT * FROM runs WHERE starts_with(run_id, ?) ORDER BY started_at DESC, run_id",
                           [id_or_prefix])
        exact = [r for r in found if r["run_id"] == id_or_prefix]
        if exact or len(found) == 1:
            return (exact or found)[0]
        if not found:
            raise RunLookupError(f"no run {id_or_prefix!r} in the lineage database (plm lineage runs lists them)")
        raise RunLookupError(f"run id prefix {id_or_prefix!r} matches {len(found)} runs; give more of the id:\n"
                             + _run_lines(found), found)

    def find_artifacts(self, path_or_id: str) -> list[dict[str, Any]]:
        local = "://" not in path_or_id  # URLs (s3://...) are kept as given
        p = str(Path(path_or_id).resolve()) if local else path_or_id
        return self.query("SELECT * FROM artifacts WHERE artifact_id=? OR path=? OR path=? OR content_hash=? "
                          "ORDER BY created_at DESC", [path_or_id, p, self.stored_path(p), path_or_id])

    def show(self, path_or_id: str) -> dict[str, Any]:
        """An artifact, a step or a run by id or path, with its edges."""
        arts = self.find_artifacts(path_or_id)
        if arts:
            a = arts[0]
            a["produced_by"] = self.query("SELECT s.* FROM edges e JOIN steps s USING (step_id) WHERE "
                                          "e.artifact_id=? AND e.direction='output' ORDER BY s.started_at",
                                          [a["artifact_id"]])
            a["used_by"] = self.query("SELECT s.step_id, s.stage, s.run_id FROM edges e JOIN steps s USING (step_id) "
                                      "WHERE e.artifact_id=? AND e.direction='input'", [a["artifact_id"]])
            return {"artifact": a}
        steps = self.query("SELECT * FROM steps WHERE step_id=?", [path_or_id])
        if steps:
            return {"step": steps[0], "edges": self.query(
                "SELECT e.direction, a.* FROM edges e JOIN artifacts a USING (artifact_id) WHERE e.step_id=?",
                [path_or_id])}
        try:
            run = self.resolve_run(path_or_id)
        except RunLookupError as exc:
            if exc.candidates:   # an ambiguous run prefix: the error lists the runs
                raise
            raise PipelineError(f"nothing in lineage matches {path_or_id!r}") from None
        steps = self.query("SELECT stage, status, duration_s, cache_key, step_id, started_at, key_parts FROM steps "
                           "WHERE run_id=? ORDER BY started_at", [run["run_id"]])
        for s in steps:
            parts = s.pop("key_parts")
            if s["status"] == "completed" and parts:
                s["why"] = self.rerun_reasons(s["stage"], json.loads(parts), s.pop("started_at"), run["run_id"])
            else:
                s.pop("started_at")
        return {"run": run, "steps": steps}

    def rerun_reasons(self, stage: str, key_parts: dict[str, Any], before: datetime | None = None,
                      run_id: str | None = None) -> list[str]:
        """Why a step of ``stage`` with these key parts ran: what differs from the closest earlier step of the
        stage (the one with the fewest differences, among the last 50), in words. Steps of ``run_id`` itself
        are no reason (a run's c50 level does not run because of its c90 level)."""
        from pipeline_lib.stage_code import explain_rerun

        rows = self.query("SELECT key_parts FROM steps WHERE stage=? AND key_parts IS NOT NULL AND run_id <> ?"
                          + (" AND started_at < ?" if before else "") + " ORDER BY started_at DESC LIMIT 50",
                          [stage, run_id or "", before] if before else [stage, run_id or ""])
        return min((explain_rerun(json.loads(r["key_parts"]), key_parts) for r in rows), key=len,
                   default=explain_rerun(None, key_parts))

    def trace(self, path_or_id: str, max_depth: int = 32) -> list[dict[str, Any]]:
        """Walk back from an artifact: each producing step with its params, tool versions and inputs."""
        arts = self.find_artifacts(path_or_id)
        if not arts:
            raise PipelineError(f"no artifact in lineage matches {path_or_id!r}")
        chain: list[dict[str, Any]] = []
        frontier, seen, seen_steps = [arts[0]["artifact_id"]], set(), set()
        depth = 0
        while frontier and depth < max_depth:
            nxt = []
            for aid in frontier:
                if aid in seen:
                    continue
                seen.add(aid)
                prod = self.query(
                    "SELECT s.* FROM edges e JOIN steps s USING (step_id) WHERE e.artifact_id=? AND "
                    "e.direction='output' ORDER BY (s.status='completed') DESC, s.started_at LIMIT 1", [aid])
                for s in prod:
                    if s["step_id"] in seen_steps:
                        continue
                    seen_steps.add(s["step_id"])
                    s["inputs"] = self.query(
                        "SELECT a.artifact_id, a.path, a.kind, a.content_hash, a.meta FROM edges e JOIN artifacts a "
                        "USING (artifact_id) WHERE e.step_id=? AND e.direction='input'", [s["step_id"]])
                    s["depth"] = depth
                    chain.append(s)
                    nxt += [i["artifact_id"] for i in s["inputs"]]
            frontier, depth = nxt, depth + 1
        return chain


def _unusable(path: Path) -> bool:
    """True when ``path`` exists but DuckDB cannot open it (not merely locked by another process)."""
    if not path.exists():
        return False
    try:
        duckdb_connect(str(path), read_only=True).close()
    except duckdb.IOException as exc:
        return "lock" not in str(exc).lower()
    except duckdb.Error:
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PendingLineage:
    """What a worker process has in place of :class:`LineageStore`: the records it would write, kept in
    order for the one writing process (the flow's) to write with :meth:`LineageStore.write_pending`.

    DuckDB allows one writing process per file, and a Dask or Ray worker may not even see the file, so
    workers never open it for writing. Reads (``query``) go to the file read-only.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._records: list[tuple[str, Any]] = []

    def record_step(self, step: StepRecord) -> None:
        self._records.append(("step", step))

    def record_metrics(self, run_id: str, step_id: str | None, rows: list[tuple[str, int, float]]) -> None:
        self._records.append(("metrics", (run_id, step_id, list(rows))))

    def drain(self) -> list[tuple[str, Any]]:
        out, self._records = self._records, []
        return out

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return LineageStore(self.path, create=False).query(sql, params)
