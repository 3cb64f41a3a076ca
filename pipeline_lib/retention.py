"""Retention: delete the stage outputs that only runs of old source releases use, keeping the newest N releases.

    plan = plan_retention(LineageStore("work/lineage.duckdb"), "work", config_name="uniref50", keep=2)
    print(plan.describe())                              # what would go, and why (a dry run)
    apply_retention(plan, store, run_id=current_run)    # deletes, and records a `retention` step in lineage

    python -m pipeline_lib.retention work/lineage.duckdb --workdir work --name uniref50 --keep 2 [--apply]
        [--storage-url s3://bucket/plm [--endpoint-url http://minio:9000]]

A *release* is the upstream identity a source step recorded (UniRef release and checksums, or the hashes of
the source files). Releases are ranked by their newest completed run (``current_run`` counts as completed:
retention runs at the end of a refresh, before the run is closed). The stage directories
(``<workdir>/stages/<stage>/<key16>``) and downloads (``<workdir>/downloads/...``) that steps of runs of
dropped releases used are deleted unless a step of any other run (a kept release, another config, a running
run, a run with no recorded release) uses them too. With object storage (``remote``, the config's
``storage.url``) a doomed stage directory's published copy goes too, marker first, whether or not the
stage was ever materialised locally. Each directory is deleted under its stage lock, taken
without waiting (a stage using it right now makes it skipped, not deleted), after re-checking lineage for
new users; it is renamed to a ``.tmp-`` name first, so an interrupted deletion is cleaned up by the next
``run_stage`` of that key. Lineage keeps the records of the deleted outputs; the ``retention`` step lists
them in its stats and has them as inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_lib.io import stable_hash
from pipeline_lib.lineage import ArtifactRecord, LineageStore, StepRecord, utcnow
from pipeline_lib.locks import FileLock, LockTimeout
from pipeline_lib.storage import ObjectStore, StorageError

__all__ = ["Release", "Doomed", "RetentionPlan", "plan_retention", "apply_retention"]


@dataclass
class Release:
    key: str                       # hash of the source identity
    label: str                     # release name, or kind + short key
    runs: list[str]
    newest_completed: datetime | None


@dataclass
class Doomed:
    """A stage directory or downloaded file that only runs of dropped releases used; ``url`` is the stage's
    copy on object storage (``storage.url``), when there is one."""

    stage: str
    path: str
    bytes: int
    cache_key: str | None = None
    url: str | None = None
    remote_bytes: int = 0

    @property
    def rel(self) -> str:
        """``stages/<stage>/<key16>``: the stage directory relative to the workdir and the storage URL."""
        return f"stages/{self.stage}/{(self.cache_key or '')[:16]}"


@dataclass
class RetentionPlan:
    keep: int
    workdir: str
    kept: list[Release]
    dropped: list[Release]
    doomed: list[Doomed]
    old_runs: set[str] = field(default_factory=set)

    def describe(self) -> str:
        lines = [f"keep the newest {self.keep} release(s): {', '.join(r.label for r in self.kept) or '-'}",
                 f"drop: {', '.join(r.label for r in self.dropped) or '-'}"]
        for d in self.doomed:
            lines.append(f"  delete {d.stage:10s} {_mb(d.bytes):>10s}  {d.path}")
            if d.url:
                lines.append(f"         {'':10s} {_mb(d.remote_bytes):>10s}  {d.url}")
        remote = sum(d.remote_bytes for d in self.doomed)
        lines.append(f"{len(self.doomed)} path(s), {_mb(sum(d.bytes for d in self.doomed))}"
                     + (f" local, {_mb(remote)} on object storage" if remote else ""))
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _release_of(stats: str | None, outputs: list[str]) -> tuple[str, str]:
    identity = json.loads(stats or "{}").get("identity")
    if identity:
        key = stable_hash(identity)
        return key, str(identity.get("release") or f"{identity.get('kind', 'source')}-{key[:8]}")
    key = stable_hash(sorted(outputs))  # fetches run outside a refresh flow record no identity
    return key, f"source-{key[:8]}"


def _releases(store: LineageStore, config_name: str, current_run: str | None) -> tuple[list[Release], dict[str, str]]:
    """Releases of this config's runs, newest completed first; and run_id -> release key."""
    rows = store.query(
        "SELECT r.run_id, r.status, r.started_at, s.stats, list(a.content_hash ORDER BY a.content_hash) AS outs "
        "FROM runs r JOIN steps s USING (run_id) LEFT JOIN edges e ON e.step_id=s.step_id AND e.direction='output' "
        "LEFT JOIN artifacts a USING (artifact_id) WHERE r.name=? "
        "AND s.stage IN ('source', 'fetch') "  # 'fetch': its name before December 2026
        "AND s.status<>'failed' "
        "GROUP BY r.run_id, r.status, r.started_at, s.step_id, s.stats", [config_name])
    by_key: dict[str, Release] = {}
    run_release: dict[str, str] = {}
    for row in rows:
        key, label = _release_of(row["stats"], [h for h in row["outs"] if h])
        rel = by_key.setdefault(key, Release(key, label, [], None))
        rel.runs.append(row["run_id"])
        run_release[row["run_id"]] = key
        if row["status"] == "completed" or row["run_id"] == current_run:
            rel.newest_completed = max(filter(None, [rel.newest_completed, row["started_at"]]))
    ordered = sorted(by_key.values(), key=lambda r: (r.newest_completed is not None, r.newest_completed or 0),
                     reverse=True)
    return ordered, run_release


def plan_retention(store: LineageStore, workdir: str | os.PathLike[str], *, config_name: str, keep: int,
                   current_run: str | None = None, remote: ObjectStore | None = None) -> RetentionPlan:
    """What to delete so that only the newest ``keep`` completed releases of ``config_name`` keep outputs;
    with ``remote``, their copies on object storage too (also those of stages never materialised here)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    work = Path(workdir).resolve()
    releases, run_release = _releases(store, config_name, current_run)
    completed = [r for r in releases if r.newest_completed is not None]
    kept = completed[:keep]
    oldest_kept = kept[-1].newest_completed if kept else None
    runs = {r["run_id"]: r for r in store.query("SELECT run_id, status, started_at FROM runs")}
    dropped = []
    for rel in releases:
        if rel in kept:
            continue
        # a release that never completed is dropped only when all its runs predate the kept releases
        if rel.newest_completed is None and (oldest_kept is None or any(
                runs[r]["started_at"] >= oldest_kept for r in rel.runs)):
            continue
        dropped.append(rel)
    old_runs = {r for rel in dropped for r in rel.runs
                if runs[r]["status"] != "running" and r != current_run}
    doomed = _doomed(store, work, old_runs, remote) if old_runs else []
    return RetentionPlan(keep, str(work), kept, dropped, doomed, old_runs)


def _doomed(store: LineageStore, work: Path, old_runs: set[str], remote: ObjectStore | None) -> list[Doomed]:
    steps = store.query("SELECT run_id, stage, cache_key FROM steps WHERE cache_key IS NOT NULL AND cache_key<>''")
    downloads = store.query("SELECT s.run_id, a.path FROM steps s JOIN edges e USING (step_id) JOIN artifacts a "
                            "USING (artifact_id) WHERE s.stage IN ('source', 'fetch') AND e.direction='output'")
    used_by_others: set[Path] = set()
    candidates: dict[Path, Doomed] = {}
    for row in steps:
        path = work / "stages" / row["stage"] / row["cache_key"][:16]
        if row["run_id"] not in old_runs:
            used_by_others.add(path)
        else:  # kept only if it exists here or on object storage (below)
            candidates.setdefault(path, Doomed(row["stage"], str(path), 0, row["cache_key"]))
    root = work / "downloads"
    for row in downloads:
        path = Path(row["path"])
        if row["run_id"] not in old_runs:
            used_by_others.add(path)
        elif path.is_relative_to(root) and path.is_file():  # user files outside the workdir are never touched
            candidates.setdefault(path, Doomed("source", str(path), 0))
    doomed = []
    for p, d in sorted(candidates.items()):
        if p in used_by_others:
            continue
        if d.cache_key is not None:
            remote_bytes = remote.size(d.rel) if remote is not None else None
            if remote is not None and remote_bytes is not None:
                d.url, d.remote_bytes = remote.url_of(d.rel), remote_bytes
            elif not p.is_dir():
                continue
        d.bytes = _size(p) if p.exists() else 0
        doomed.append(d)
    return doomed


def _still_unused(store: LineageStore, d: Doomed, old_runs: set[str]) -> bool:
    """No run outside ``old_runs`` recorded a step on this key since the plan was made."""
    if d.cache_key is None:
        return True
    rows = store.query("SELECT DISTINCT run_id FROM steps WHERE stage=? AND cache_key=?", [d.stage, d.cache_key])
    return all(r["run_id"] in old_runs for r in rows)


def _delete(path: Path) -> None:
    if path.is_file():
        path.unlink()
        return
    tmp = path.with_name(f"{path.name}.tmp-retention-{os.getpid()}")
    path.rename(tmp)  # the final name disappears at once; a killed deletion leaves a temporary run_stage removes
    shutil.rmtree(tmp)


def _deleted_artifacts(store: LineageStore, paths: list[str]) -> list[ArtifactRecord]:
    """Lineage records of the outputs that lived at or under ``paths`` (inputs of the retention step)."""
    arts: dict[tuple[str, str], ArtifactRecord] = {}
    for p in paths:
        rel = store.stored_path(p)  # recorded relative to the lineage's directory, or absolute before 2026-12
        for a in store.query("SELECT path, kind, content_hash, rows, bytes FROM artifacts WHERE path IN (?, ?) OR "
                             "starts_with(path, ?) OR starts_with(path, ?)",  # literal: '_' and '%' are common in paths
                             [p, rel, p.rstrip("/") + "/", rel.rstrip("/") + "/"]):
            rec = ArtifactRecord(a["path"], a["kind"], a["content_hash"], a["rows"], a["bytes"])
            arts[(rec.path, rec.content_hash)] = rec
    return list(arts.values())


def _delete_one(d: Doomed, store: LineageStore, old_runs: set[str], remote: ObjectStore | None) -> str | None:
    """Delete one doomed path (and its object-storage copy) under its stage lock; the reason it was skipped."""
    path = Path(d.path)
    lock = FileLock(path.with_name(path.name + ".lock"), timeout_s=0, note="retention") \
        if d.cache_key is not None else None
    try:
        if lock is not None:
            lock.acquire()
        on_remote = d.url is not None and remote is not None and remote.size(d.rel) is not None
        if not (path.exists() or on_remote):
            return "gone"
        if not _still_unused(store, d, old_runs):
            return "in use by a newer run"
        if on_remote and remote is not None:  # first: a machine looking the stage up now finds no marker
            remote.delete(d.rel)
        if path.exists():
            _delete(path)
        return None
    except LockTimeout:
        return "locked by a running stage"
    except StorageError as exc:  # the local copy stays too: a later retention run retries both
        return f"object storage: {exc}"
    finally:
        if lock is not None:
            lock.release()


def apply_retention(plan: RetentionPlan, store: LineageStore, *, run_id: str | None = None,
                    remote: ObjectStore | None = None) -> dict[str, Any]:
    """Delete ``plan.doomed`` (skipping what is locked or newly used), and with ``remote`` their copies on
    object storage; record a ``retention`` step for ``run_id``."""
    started = utcnow()
    deleted, skipped = [], []
    for d in plan.doomed:
        reason = _delete_one(d, store, plan.old_runs, remote)
        if reason is None:
            deleted.append(asdict(d))
        else:
            skipped.append({**asdict(d), "reason": reason})
    stats = {"keep_releases": plan.keep, "kept_releases": [r.label for r in plan.kept],
             "dropped_releases": [r.label for r in plan.dropped], "deleted": deleted, "skipped": skipped,
             "freed_bytes": sum(d["bytes"] for d in deleted),
             "freed_remote_bytes": sum(d["remote_bytes"] for d in deleted if d["url"])}
    if run_id is not None:  # lineage names stage outputs by URL when they are published
        inputs = _deleted_artifacts(store, [p for d in deleted for p in (d["path"], d["url"]) if p])
        store.record_step(StepRecord(run_id, "retention", {"keep_releases": plan.keep},
                                     stable_hash([run_id, "retention", started.isoformat()]), "completed",
                                     started, utcnow(), inputs=inputs, stats=stats))
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline_lib.retention", description=__doc__.split("\n")[0])
    ap.add_argument("lineage", help="lineage DuckDB file")
    ap.add_argument("--workdir", required=True, help="the config's workdir")
    ap.add_argument("--name", required=True, help="config name (runs of other configs are never touched)")
    ap.add_argument("--keep", type=int, required=True, help="newest completed releases to keep")
    ap.add_argument("--apply", action="store_true", help="delete (default: only list what would go)")
    ap.add_argument("--storage-url", help="the config's storage.url: prune the stage copies published there too")
    ap.add_argument("--endpoint-url", help="the config's storage.endpoint_url (S3-compatible servers)")
    args = ap.parse_args(argv)
    store = LineageStore(args.lineage)
    remote = ObjectStore(args.storage_url, endpoint_url=args.endpoint_url) if args.storage_url else None
    plan = plan_retention(store, args.workdir, config_name=args.name, keep=args.keep, remote=remote)
    print(plan.describe())
    if args.apply:
        import uuid

        from pipeline_lib import __version__
        from pipeline_lib.lineage import RunRecord

        run_id = f"retention-{uuid.uuid4()}"  # a run of its own, so that lineage records the deletion
        store.start_run(RunRecord(run_id, "retention", args.name, {"keep_releases": args.keep}, "", __version__,
                                  str(Path(args.workdir).resolve())))
        stats = apply_retention(plan, store, run_id=run_id, remote=remote)
        store.end_run(run_id, "completed")
        print(f"deleted {len(stats['deleted'])}, skipped {len(stats['skipped'])}, freed {_mb(stats['freed_bytes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
