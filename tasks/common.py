"""What every stage task shares: the run context, the content-addressed stage cache, lineage records.

A stage's cache key hashes its parameters, the content hashes of its inputs and the code that stage runs
(pipeline_lib/stage_code.py: the syntax trees of its task function and of the library modules it imports,
docstrings and comments left out, plus a per-stage version number). The key's parts are kept in lineage, so a
stage that runs says why ("code of pipeline_lib/sequences/cluster.py changed", "parameter level.min_seq_id
changed").
Its outputs live in ``<workdir>/stages/<stage>/<key16>/`` with a ``_SUCCESS.json`` marker written
last (the datatrove "completions" idea; the protocol is pipeline_lib/stage_cache.py, shared with the shard
partitions, structure and MSA batches), and the directory is built under a temporary name and renamed:
a killed stage leaves no partial output under the final name, a re-run with nothing changed skips the
stage ("cached"), and changing one stage's parameters recomputes that stage and what depends on it.

With ``storage.url`` set (pipeline_lib/storage.py) the workdir is the local cache of an object store: a
finished stage is published there (its marker last), a stage finished there is downloaded instead of
recomputed, and lineage names stage outputs by their URL.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from pipeline_lib import __version__
from pipeline_lib.errors import PipelineError, TransientError
from pipeline_lib.io import atomic_dir, stable_hash
from pipeline_lib.lineage import ArtifactRecord, LineageStore, PendingLineage, StepRecord, artifact_for, utcnow
from pipeline_lib.stage_cache import claim, read_marker, write_marker
from pipeline_lib.stage_code import stage_code
from pipeline_lib.storage import ObjectStore, stage_dir_of
from tasks.artifacts import progress_artifacts, results_with_progress, stage_table

__all__ = ["RunContext", "StageOutput", "Produced", "run_stage", "code_version", "retry_transient", "logger",
           "lineage_task", "resolve", "WithLineage"]

# packages whose code cannot change any stage's output: left out of the run's code version
NOT_DATA_CODE = {"dashboard"}
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + hash of the library and task sources: which code a run ran, in its lineage record.
    Cache keys do not use it: each stage's key covers the code of that stage (pipeline_lib/stage_code.py)."""
    h = hashlib.sha256()
    for pkg in ("pipeline_lib", "tasks"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if set(f.relative_to(ROOT).parts) & NOT_DATA_CODE:
                continue
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a Prefect run (library use, tests calling .fn)
        return logging.getLogger("plm")


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry only network / lock failures, never data or config errors."""
    try:
        state.result(raise_on_failure=True)
    except TransientError as exc:
        return not exc.retries_exhausted  # a download that used its own configured retries is done
    except BaseException:
        return False
    return False


_PROCESS_TOKEN = uuid.uuid4().hex[:12]  # a forked child keeps it, but not its parent's pid


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


_pending_local = threading.local()


def _pending(lineage_path: str) -> PendingLineage:
    """This worker thread's records for ``lineage_path`` (a worker runs one task per thread at a time)."""
    by_path = _pending_local.__dict__.setdefault("by_path", {})
    return by_path.setdefault(lineage_path, PendingLineage(lineage_path))


@dataclass
class RunContext:
    """Serializable handle a task needs: where to write and which run it belongs to.

    ``writer`` names the process that writes lineage (the flow's). Elsewhere (a process pool, Dask or Ray
    worker) ``store`` keeps the records for it instead: :func:`lineage_task` sends them back with the
    task's result or error and :func:`resolve` writes them in the flow's process.
    """

    run_id: str
    workdir: str
    lineage_path: str
    storage: dict[str, Any] | None = None  # the config's storage section (no credentials: those are in the env)
    writer: str = field(default_factory=_this_process)

    @property
    def is_writer(self) -> bool:
        return self.writer == _this_process()

    @property
    def store(self) -> LineageStore | PendingLineage:
        return LineageStore(self.lineage_path) if self.is_writer else _pending(self.lineage_path)


@dataclass
class WithLineage:
    """A task's result as it comes back from another process, with the lineage records it kept."""

    value: Any
    records: list[tuple[str, Any]]


_ERROR_RECORDS = "plm_lineage_records"
# Records of failed attempts, by Prefect task run id, for the retry (same id, same worker process) to send back
# with its own: Prefect retries a task inside the worker, and only the last attempt's result or error reaches
# the flow. Bounded: the attempts of a task run that ended failed are never asked for again.
_earlier_attempts: OrderedDict[str, list[tuple[str, Any]]] = OrderedDict()
_earlier_lock = threading.Lock()
_EARLIER_MAX = 1024


def _task_run_id() -> str | None:
    run = TaskRunContext.get()
    return str(run.task_run.id) if run is not None else None


def _worker_records(ctx: RunContext, run_id: str | None, *, failed: bool) -> list[tuple[str, Any]]:
    """This attempt's records, after those of the task run's earlier (failed) attempts; kept for a retry on failure."""
    with _earlier_lock:
        records = (_earlier_attempts.pop(run_id, []) if run_id else []) + _pending(ctx.lineage_path).drain()
        if failed and run_id and records:
            _earlier_attempts[run_id] = records
            while len(_earlier_attempts) > _EARLIER_MAX:
                _earlier_attempts.popitem(last=False)
    return records


def lineage_task(**task_kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@task(...)`` for a stage task whose first argument is the :class:`RunContext`: in a process
    other than the lineage writer, the records the task kept come back with its result (``WithLineage``)
    or on its exception, for :func:`resolve` to write; those of attempts that Prefect retried come with them."""
    def decorate(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def run(ctx: RunContext, *args: Any, **kwargs: Any) -> Any:
            run_id = None if ctx.is_writer else _task_run_id()
            try:
                value = fn(ctx, *args, **kwargs)
            except BaseException as exc:
                if not ctx.is_writer and (records := _worker_records(ctx, run_id, failed=True)):
                    setattr(exc, _ERROR_RECORDS, records)
                raise
            if ctx.is_writer:
                return value
            records = _worker_records(ctx, run_id, failed=False)
            return WithLineage(value, records) if records else value

        return task(**task_kwargs)(run)

    return decorate


def resolve(ctx: RunContext, future: Any) -> Any:
    """The result of a submitted task (a Prefect future, or a value), writing in this process the lineage
    records it kept in a worker; on failure those records are written, then the task's error raised."""
    try:
        value = future.result() if hasattr(future, "result") and hasattr(future, "wait") else future
    except BaseException as exc:
        records = getattr(exc, _ERROR_RECORDS, None)
        if records:
            try:
                ctx.store.write_pending(records)
            except Exception as lineage_exc:  # keep the task's own error
                logger().error("could not record a worker's lineage in %s: %s", ctx.lineage_path, lineage_exc)
        raise
    if isinstance(value, WithLineage):
        ctx.store.write_pending(value.records)
        return value.value
    return value



def resolve_all(ctx: RunContext, futures: list[Any], key: str, unit: str) -> list[Any]:
    """:func:`resolve` for each future of a batch fan-out, in order, with a progress artifact ``key`` counting
    the ``unit`` finished (the first failure raises, after its lineage is written)."""
    return results_with_progress(futures, key, unit, resolve=functools.partial(resolve, ctx))

@dataclass
class Produced:
    """One output of a stage: a file in the stage directory, or ``path`` elsewhere (downloads, sources)."""

    name: str
    kind: str
    rows: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    content_hash: str | None = None  # the file's sha256 where the stage already computed it (not hashed again)


@dataclass
class StageOutput:
    stage: str
    cache_key: str
    directory: str
    cached: bool
    outputs: dict[str, ArtifactRecord]
    stats: dict[str, Any]
    tool_versions: dict[str, str]
    url: str | None = None  # where the stage is published (storage.url), else None

    def path(self, name: str) -> Path:
        return Path(self.outputs[name].path)


@contextlib.contextmanager
def _in_place(final: Path):
    final.mkdir(parents=True, exist_ok=True)
    yield final


def _build(final: Path, stage: str, key: str, params: dict[str, Any],
           compute: Callable[[Path], tuple[list[Produced], dict[str, Any], dict[str, str]]],
           resumable: bool) -> dict[str, Any]:
    """Run ``compute`` in the stage directory (a temporary one unless ``resumable``); returns the marker."""
    with (_in_place(final) if resumable else atomic_dir(final)) as tmp:
        produced, stats, tools = compute(tmp)
        outputs = {p.name: asdict(artifact_for(p.path or tmp / p.name, p.kind, rows=p.rows, meta=p.meta,
                                             content_hash=p.content_hash)) for p in produced}
        data = {"stage": stage, "cache_key": key, "params": params, "outputs": outputs,
                "stats": stats, "tool_versions": tools, "finished_at": utcnow().isoformat()}
        return write_marker(tmp, final, data)  # last: the directory counts as finished from here


def _sync_remote(store: ObjectStore, final: Path, rel: str, data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reconcile the local cache with the store: download a stage finished there, publish one finished only
    here (a crash between the local build and the end of its upload). Returns the local marker or None."""
    if data is not None:
        if store.read_marker(rel) is None:
            logger().info("%s: publishing the local copy to %s", rel, store.url_of(rel))
            store.publish(final, rel, data)
        return data
    data = store.materialise(rel, final)
    if data is not None:
        logger().info("%s: downloaded from %s", rel, store.url_of(rel))
    return data


def _materialise_inputs(store: ObjectStore, workdir: str, inputs: list[ArtifactRecord]) -> None:
    """Download the stage directories of inputs built on another machine (tasks read local files)."""
    for rel in sorted({stage_dir_of(a.path, workdir) for a in inputs} - {None}):
        final = Path(workdir) / rel
        with claim(final, note=f"download of {rel}", sink=logger().warning):
            if read_marker(final) is None and store.materialise(rel, final) is None:
                raise PipelineError(f"input stage {rel} is neither in {final} nor finished in {store.url_of(rel)}")


def _record_failure(ctx: RunContext, step: StepRecord) -> None:
    """Record a failed step. If lineage cannot be written either (a full disk), log that and let the stage's
    own error propagate: the lineage error must not replace it."""
    try:
        ctx.store.record_step(step)
    except Exception as exc:  # logged as text: a record holding the exception would pin the failed stage's files
        logger().error("could not record the failed %s step in lineage %s: %s", step.stage, ctx.lineage_path,
                       str(exc))


def _input_names(inputs: list[ArtifactRecord]) -> dict[str, str]:
    """``{kind:file name: content hash}``: what a stage read, named without the workdir (for explanations)."""
    out: dict[str, str] = {}
    for a in inputs:
        name = f"{a.kind}:{Path(a.path).name}"
        n = 2
        while name in out:
            name, n = f"{a.kind}:{Path(a.path).name}#{n}", n + 1
        out[name] = a.content_hash
    return out


def _rerun_reasons(ctx: RunContext, stage: str, key_parts: dict[str, Any]) -> list[str]:
    """Why this stage runs, from its key parts against the closest earlier step of the stage in lineage."""
    try:
        return LineageStore(ctx.lineage_path, create=False).rerun_reasons(stage, key_parts, run_id=ctx.run_id)
    except Exception as exc:  # an explanation never fails a stage (no lineage file yet, a busy one)
        return [f"no earlier step to compare with ({type(exc).__name__})"]


def run_stage(ctx: RunContext, stage: str, params: dict[str, Any], inputs: list[ArtifactRecord],
              compute: Callable[[Path], tuple[list[Produced], dict[str, Any], dict[str, str]]],
              *, cache: bool = True, resumable: bool = False) -> StageOutput:
    """Run ``compute(tmp_dir) -> (produced, stats, tool_versions)`` unless a finished result exists.

    ``resumable`` stages (training) write straight into the final directory, which they resume from
    after a crash (their own files are written atomically); the marker still comes last.
    Records one lineage step (completed / cached / failed) with inputs, outputs and edges.
    """
    log = logger()
    code = stage_code(compute, stage)
    key = stable_hash({"stage": stage, "params": params, "inputs": sorted(a.content_hash for a in inputs),
                       "code": code.digest})
    key_parts = {"params": params, "inputs": _input_names(inputs), "code": code.parts()}
    final = Path(ctx.workdir) / "stages" / stage / key[:16]
    store, rel = ObjectStore.from_settings(ctx.storage), f"stages/{stage}/{key[:16]}"
    named = (lambda arts: [store.published(a, ctx.workdir) for a in arts]) if store else list  # lineage names
    started = utcnow()
    status = "cached"
    try:
        # One process at a time per stage key: a concurrent run waits here (saying for whom), then finds the
        # result cached; what killed runs left of this key is removed (pipeline_lib/stage_cache.py).
        with claim(final, note=f"{stage} of run {ctx.run_id}", sink=log.warning):
            data = read_marker(final) if cache else None
            if store and cache:
                data = _sync_remote(store, final, rel, data)
            if data is None:
                status = "completed"
                log.info("%s: running (cache key %s): %s", stage, key[:16],
                         "; ".join(_rerun_reasons(ctx, stage, key_parts)[:6]))
                if store:
                    _materialise_inputs(store, ctx.workdir, inputs)
                with progress_artifacts():  # long work inside shows as progress bars in the Prefect UI
                    data = _build(final, stage, key, params, compute, resumable)
                if store and cache:  # uncached stages (source) are never looked up there: nothing to publish
                    store.publish(final, rel, data)
            else:
                log.info("%s: cached, skipping (cache key %s)", stage, key[:16])
    except BaseException as exc:
        _record_failure(ctx, StepRecord(ctx.run_id, stage, params, key, "failed", started, utcnow(),
                                        inputs=named(inputs), error=f"{type(exc).__name__}: {exc}"[:4000],
                                        key_parts=key_parts))
        raise
    outputs = {k: ArtifactRecord(**v) for k, v in data["outputs"].items()}
    ctx.store.record_step(StepRecord(ctx.run_id, stage, params, key, status, started, utcnow(),
                                     inputs=named(inputs), outputs=named(list(outputs.values())),
                                     tool_versions=data["tool_versions"], stats=data["stats"], key_parts=key_parts))
    out = StageOutput(stage, key, str(final), status == "cached", outputs, data["stats"], data["tool_versions"],
                      url=store.url_of(rel) if store and cache else None)
    stage_table(out)  # the stage's counts as a table artifact in the Prefect UI (no-op outside a run)
    return out
