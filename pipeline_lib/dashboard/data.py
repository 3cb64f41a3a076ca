"""What the dashboard and the static report show, as plain data read from the lineage DuckDB.

    from pipeline_lib.dashboard import data
    data.list_runs("work/lineage.duckdb")                      # newest first, with step counts and unique prefixes
    data.dataset("work/lineage.duckdb", run_id).lengths        # from the run's ingest sequences.parquet

Functions that read lineage take a database path, opened read-only for the duration of the call (see
:mod:`.db`), or an open connection (one open for several reads: each open costs ~0.1 s and holds the
file's lock meanwhile). They return lists, dicts or small dataclasses, never figures. Statistics over the
artifacts' Parquet files are in :mod:`.stats` (re-exported here); :func:`dataset` reads lineage first and
computes them after closing the database. What a run lacks (no structures, no training yet) is empty.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipeline_lib.dashboard.db import ReadOnlyLineage, read_only, rows
from pipeline_lib.dashboard.stats import (
    Histogram,
    cluster_size_distribution,
    length_histogram,
    msa_depth_histogram,
    plddt_histogram,
)
from pipeline_lib.errors import PipelineError

__all__ = ["Source", "Histogram", "LineageGraph", "Dataset", "RunNote", "list_runs", "latest_run_id", "resolve_run",
           "run_label", "run_options", "default_run", "run_note", "run_steps", "stage_summary", "run_artifacts",
           "dataset", "length_histogram", "cluster_size_distribution", "split_sizes", "plddt_histogram",
           "msa_depth_histogram", "training_curves", "eval_table", "default_trace_target", "lineage_graph"]

PathLike = str | os.PathLike[str]
Source = PathLike | duckdb.DuckDBPyConnection   # a database file, or a connection already open on one
# older names of training metrics -> the names the dashboard shows (training logged "ppl" before "perplexity")
METRIC_ALIASES = {"ppl": "perplexity"}
NO_NEW_RELEASE = "no_new_release"   # a scheduled refresh that found upstream unchanged: it ran no stages


@dataclass
class LineageGraph:
    """Steps and artifacts behind one artifact; ``depth`` 0 is the step that produced the target."""

    target: str
    nodes: list[dict[str, Any]]       # id, type (step / artifact), label, depth, detail
    edges: list[tuple[str, str]]      # (from id, to id): input artifact -> step -> output artifact


@contextmanager
def _open(db: Source) -> Iterator[duckdb.DuckDBPyConnection]:
    """Use an open connection as is; open a file read-only for the duration of the block."""
    if isinstance(db, duckdb.DuckDBPyConnection):
        yield db
    else:
        with read_only(db) as con:
            yield con


# --- runs and steps ----------------------------------------------------------------------------------

def list_runs(db: Source, limit: int = 50, run_id: str | None = None) -> list[dict[str, Any]]:
    """Runs newest first (or just ``run_id``) with status, duration (so far, for running ones), step
    counts by status and ``prefix``, the shortest id prefix that tells the run apart from every other."""
    with _open(db) as con:
        prefixes = ReadOnlyLineage(con).run_prefixes()
        out = rows(con, """
            SELECT r.run_id, r.flow, r.name, r.status, r.started_at, r.ended_at, r.config_hash, r.code_version,
                   r.host, r.error, count(s.step_id) AS steps,
                   count(*) FILTER (WHERE s.status = 'completed') AS completed,
                   count(*) FILTER (WHERE s.status = 'cached') AS cached,
                   count(*) FILTER (WHERE s.status = 'failed') AS failed
            FROM runs r LEFT JOIN steps s USING (run_id) WHERE ? IS NULL OR r.run_id = ?
            GROUP BY ALL ORDER BY r.started_at DESC LIMIT ?""", [run_id, run_id, limit])
    now = datetime.now(UTC)
    for r in out:
        end = r["ended_at"] or (now if r["status"] == "running" else None)
        r["duration_s"] = (end - r["started_at"]).total_seconds() if end and r["started_at"] else None
        r["prefix"] = prefixes[r["run_id"]]
    return out


def picker_runs(db: Source, limit: int = 200) -> list[dict[str, Any]]:
    """:func:`list_runs` of the newest ``limit`` runs, plus the newest run that ran stages when it is older:
    an hourly schedule with a monthly upstream makes hundreds of ``no_new_release`` runs in between."""
    with _open(db) as con:
        runs = list_runs(con, limit=limit)
        row = con.execute("SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.run_id) "
                          "ORDER BY r.started_at DESC LIMIT 1").fetchone()
        if row and row[0] not in {r["run_id"] for r in runs}:
            runs += list_runs(con, run_id=row[0])
    return runs


def latest_run_id(db: Source) -> str | None:
    with _open(db) as con:
        row = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    return row[0] if row else None


def resolve_run(db: Source, id_or_prefix: str) -> str:
    """The full id of the run that ``id_or_prefix`` names (:meth:`LineageStore.resolve_run`: an exact id or a
    unique prefix; :class:`RunLookupError` listing the candidates otherwise)."""
    with _open(db) as con:
        return ReadOnlyLineage(con).resolve_run(id_or_prefix)["run_id"]


def run_label(run: dict[str, Any]) -> str:
    """``prefix  flow  start  status``: the unique prefix keeps two runs' labels apart."""
    started = f"{run['started_at']:%Y-%m-%d %H:%M}" if run["started_at"] else "-"
    return f"{run['prefix']}  {run['flow']}  {started}  {run['status']}"


def run_options(runs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The run picker's options (``label``, ``value``) for :func:`list_runs` rows."""
    return [{"label": run_label(r), "value": r["run_id"]} for r in runs]


def _ran_stages(run: dict[str, Any]) -> bool:
    return run["steps"] > 0


def default_run(runs: list[dict[str, Any]]) -> str | None:
    """The run the dashboard opens on (``runs`` newest first): the newest that ran stages, else the newest.

    Scheduled refreshes mostly end ``no_new_release`` without running a stage; opening on one would show
    empty stage and dataset pages.
    """
    chosen = next((r for r in runs if _ran_stages(r)), runs[0] if runs else None)
    return chosen["run_id"] if chosen else None


@dataclass
class RunNote:
    """A line the run pages show above a run: ``text``, then links to the runs ``links`` and ``more`` unlinked.

    ``empty`` is true when the run itself ran no stages: its stage and dataset pages have nothing to plot.
    """

    text: str
    links: list[dict[str, Any]]
    more: int = 0
    empty: bool = False


def run_note(runs: list[dict[str, Any]], run_id: str, max_links: int = 3) -> RunNote | None:
    """What to say about ``run_id`` among ``runs`` (:func:`list_runs` rows, newest first), or None.

    A finished run that ran no stages (``no_new_release``, or a failure before the first stage) says so and
    links to the last run before it that ran stages. The newest run that ran stages names the newer ones
    that did not, so a page opened on it by default never hides them.
    """
    at = next((i for i, r in enumerate(runs) if r["run_id"] == run_id), None)
    if at is None:
        return None
    run = runs[at]
    if not _ran_stages(run) and run["status"] != "running":
        why = ("found no new release (upstream unchanged), so it ran no stages" if run["status"] == NO_NEW_RELEASE
               else f"ran no stages (status {run['status']}{': ' + run['error'][:200] if run['error'] else ''})")
        before = next((r for r in runs[at + 1:] if _ran_stages(r)), None)
        return RunNote(f"Run {run['prefix']} {why}. " + ("The last run before it that ran stages:" if before else
                                                        "No earlier run ran stages."), [before] if before else [],
                       empty=True)
    newer = runs[:at]
    if not newer or any(_ran_stages(r) for r in newer):
        return None
    statuses = Counter(r["status"] for r in newer)
    what = ("found no new release (upstream unchanged)" if set(statuses) == {NO_NEW_RELEASE} else
            "ran no stages (" + ", ".join(f"{n} {status}" for status, n in statuses.most_common()) + ")")
    runs_text = f"the {len(newer)} newer runs" if len(newer) > 1 else "the newer run"
    return RunNote(f"Showing run {run['prefix']}, the newest that ran stages; {runs_text} {what}:",
                   newer[:max_links], max(0, len(newer) - max_links))


def run_steps(db: Source, run_id: str) -> list[dict[str, Any]]:
    """The run's steps in order: stage, status (cached / completed / failed), times, duration, stats dict."""
    with _open(db) as con:
        out = rows(con, "SELECT step_id, stage, status, started_at, ended_at, duration_s, cache_key, error, "
                        "stats, tool_versions FROM steps WHERE run_id=? ORDER BY started_at", [run_id])
    for r in out:
        r["stats"] = json.loads(r["stats"] or "{}")
        r["tool_versions"] = json.loads(r["tool_versions"] or "{}")
    return out


def stage_summary(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage: how many steps completed, were cached, failed, and their total duration."""
    by: dict[str, dict[str, Any]] = {}
    for s in steps:
        row = by.setdefault(s["stage"], {"stage": s["stage"], "completed": 0, "cached": 0, "failed": 0,
                                         "duration_s": 0.0})
        if s["status"] in ("completed", "cached", "failed"):
            row[s["status"]] += 1
        row["duration_s"] += s["duration_s"] or 0.0
    return list(by.values())


def run_artifacts(db: Source, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Artifacts the run's steps produced (cached steps included), newest step first."""
    sql = ("SELECT DISTINCT a.artifact_id, a.path, a.kind, a.content_hash, a.rows, a.bytes, a.meta, s.stage, "
           "s.started_at FROM steps s JOIN edges e ON e.step_id = s.step_id AND e.direction = 'output' "
           "JOIN artifacts a ON a.artifact_id = e.artifact_id WHERE s.run_id = ?")
    params: list[Any] = [run_id]
    if kind is not None:
        sql += " AND a.kind = ?"
        params.append(kind)
    with _open(db) as con:
        out = rows(con, sql + " ORDER BY s.started_at DESC, a.path", params)
    for r in out:
        r["meta"] = json.loads(r["meta"] or "{}")
    return out


# --- dataset -------------------------------------------------------------------------------------------

def split_sizes(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per split: sequences and clusters (split stage stats) with tokens and files (shards stage stats)."""
    latest: dict[str, dict[str, Any]] = {}
    for s in steps:
        if s["status"] != "failed" and s["stage"] in ("split", "shards"):
            latest[s["stage"]] = s["stats"]
    sp, sh = latest.get("split", {}), latest.get("shards", {})
    names = list(sp.get("sizes", {})) or [k for k, v in sh.items() if isinstance(v, dict) and "rows" in v]
    return [{"split": n, "sequences": sp.get("sizes", {}).get(n), "clusters": sp.get("clusters", {}).get(n),
             "tokens": (sh.get(n) or {}).get("tokens"), "files": (sh.get(n) or {}).get("files")} for n in names]


def split_audit(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per held-out split: the leakage audit stage's stats (searched, shares by identity, the closest pair)."""
    latest: dict[str, Any] = {}
    for s in steps:
        if s["status"] != "failed" and s["stage"] == "audit":
            latest = s["stats"] or {}
    return [{"split": name, **latest[name]} for name in ("valid", "test") if isinstance(latest.get(name), dict)]


@dataclass
class Dataset:
    """Everything the dataset page shows for one run."""

    lengths: Histogram
    cluster_sizes: dict[str, dict[str, list[int]]]
    splits: list[dict[str, Any]]
    plddt: Histogram
    msa_depth: Histogram
    audit: list[dict[str, Any]] = field(default_factory=list)


def dataset(db: Source, run_id: str) -> Dataset:
    """One short read of lineage (artifacts, steps), then the Parquet statistics with the database closed."""
    with _open(db) as con:
        arts, steps = run_artifacts(con, run_id), run_steps(con, run_id)
    return Dataset(length_histogram(arts), cluster_size_distribution(arts), split_sizes(steps),
                   plddt_histogram(arts), msa_depth_histogram(arts), split_audit(steps))


# --- training and evaluation ---------------------------------------------------------------------------

def training_curves(db: Source, run_id: str, max_points: int = 2000) -> dict[str, dict[str, list[float]]]:
    """``{metric: {"step": [...], "value": [...]}}`` for every training metric of the run (not ``eval/`` or
    ``audit/``), thinned to about ``max_points`` points per metric (the last point is always kept)."""
    with _open(db) as con:
        got = con.execute("""
            WITH m AS (SELECT name, step, value, row_number() OVER (PARTITION BY name ORDER BY step, ts) AS rn,
                              count(*) OVER (PARTITION BY name) AS n
                       FROM metrics WHERE run_id = ? AND name NOT LIKE 'eval/%' AND name NOT LIKE 'audit/%')
            SELECT name, step, value FROM m WHERE (rn - 1) % greatest(1, n // ?) = 0 OR rn = n
            ORDER BY name, step""", [run_id, max_points]).fetchall()
    out: dict[str, dict[str, list[float]]] = {}
    for name, step, value in got:
        d = out.setdefault(name, {"step": [], "value": []})
        d["step"].append(step)
        d["value"].append(value)
    for old, new in METRIC_ALIASES.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def eval_table(db: Source, run_id: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """``eval/*`` metrics pivoted to one row per (run, checkpoint step): ``(metric names, rows)``; a row's
    ``prefix`` is its run's unique id prefix.

    ``run_id=None`` compares checkpoints across every run.
    """
    where, params = ("AND run_id = ?", [run_id]) if run_id else ("", [])
    with _open(db) as con:
        got = con.execute(f"SELECT run_id, step, name, arg_max(value, ts) FROM metrics WHERE name LIKE 'eval/%' "
                          f"{where} GROUP BY ALL ORDER BY run_id, step, name", params).fetchall()
        prefixes = ReadOnlyLineage(con).run_prefixes() if got else {}
    names = sorted({n for _, _, n, _ in got})
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for rid, step, name, value in got:
        row = {"run_id": rid, "prefix": prefixes.get(rid, rid), "step": step}
        table.setdefault((rid, step), row)[name] = value
    return names, list(table.values())


# --- lineage -------------------------------------------------------------------------------------------

def default_trace_target(db: Source, run_id: str) -> str | None:
    """The artifact whose lineage best summarizes a run: its manifest, else its last step's first output."""
    arts = run_artifacts(db, run_id)
    preferred = [a for a in arts if a["kind"] == "manifest"] or arts
    return preferred[0]["artifact_id"] if preferred else None


def lineage_graph(db: Source, target: str) -> LineageGraph:
    """Nodes and edges of :meth:`LineageStore.trace` for an artifact path or id."""
    with _open(db) as con:
        store = ReadOnlyLineage(con)
        found = store.find_artifacts(target)
        if not found:
            raise PipelineError(f"no artifact in lineage matches {target!r}")
        chain = store.trace(found[0]["artifact_id"])
        step_ids = [s["step_id"] for s in chain]
        produced = rows(con, "SELECT e.step_id, a.artifact_id, a.kind, a.path, a.rows FROM edges e JOIN artifacts a "
                             "USING (artifact_id) WHERE e.direction = 'output' AND list_contains(?, e.step_id)",
                        [step_ids]) if step_ids else []
    nodes: dict[str, dict[str, Any]] = {}
    edges: set[tuple[str, str]] = set()
    root = found[0]
    nodes[root["artifact_id"]] = _art_node(root, -1)
    for s in chain:
        nodes[s["step_id"]] = {"id": s["step_id"], "type": "step", "label": s["stage"], "depth": s["depth"],
                               "detail": f"{s['stage']} [{s['status']}] run {s['run_id'][:8]} "
                                         f"{s['duration_s'] or 0:.1f}s params {s['params']}"[:400]}
        for i in s["inputs"]:
            nodes.setdefault(i["artifact_id"], _art_node(i, s["depth"]))
            edges.add((i["artifact_id"], s["step_id"]))
    for p in produced:  # outputs that lead to the target: the target itself or another step's input
        if p["artifact_id"] in nodes:
            edges.add((p["step_id"], p["artifact_id"]))
    return LineageGraph(root["path"], list(nodes.values()), sorted(edges))


def _art_node(a: dict[str, Any], depth: int) -> dict[str, Any]:
    return {"id": a["artifact_id"], "type": "artifact", "label": f"{a['kind']}: {Path(a['path']).name}",
            "depth": depth, "detail": f"{a['path']} sha256:{(a.get('content_hash') or '')[:16]}"}
