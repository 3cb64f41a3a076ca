"""Tables shown by the dashboard and the report: column headers plus rows of display strings.

    header, body = runs_table(data.list_runs(db))

Both front ends render the same :class:`Table`, the dashboard as Dash components and the report as
escaped HTML, so the two never disagree about what a column means or how a value is formatted.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["CSS", "Table", "fmt", "runs_table", "steps_table", "summary_table", "splits_table", "audit_table",
           "eval_rows_table",
           "table_html"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{display:flex;gap:24px;align-items:center;padding:10px 20px;background:#1f2933;color:#eee;flex-wrap:wrap}
header h2{margin:0;font-size:20px} header .db{font-size:12px;color:#9aa5b1}
nav a{color:#cbd2d9;margin-right:14px;text-decoration:none} nav a:hover{color:#fff}
main{padding:12px 20px} .run-picker{min-width:420px;color:#222}
table.plm{border-collapse:collapse;margin:8px 0 18px;font-size:13px;background:#fff}
table.plm th,table.plm td{border:1px solid #e4e7eb;padding:4px 8px;text-align:left;vertical-align:top}
table.plm th{background:#f0f4f8} td{max-width:560px;overflow-wrap:anywhere}
.error{background:#fde8e8;border:1px solid #f5a3a3;padding:10px;white-space:pre-wrap;font-family:monospace}
.note{color:#666;font-size:13px}
.run-note{background:#fff8e1;border:1px solid #f0d58c;padding:8px 12px;font-size:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
"""


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    status_column: int | None = None   # index of a status cell, coloured by the front ends
    links: list[str] | None = None     # per row, where the first cell links to (dashboard only)


def fmt(value: Any, *, digits: int = 4) -> str:
    """A short human-readable rendering of one cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def runs_table(runs: list[dict[str, Any]]) -> Table:
    cols = ["run", "flow", "name", "status", "started (UTC)", "duration", "steps", "completed", "cached",
            "failed", "error"]
    body = [[r["prefix"], r["flow"], r["name"], r["status"], fmt(r["started_at"]), _duration(r["duration_s"]),
             fmt(r["steps"]), fmt(r["completed"]), fmt(r["cached"]), fmt(r["failed"]), (r["error"] or "")[:160]]
            for r in runs]
    return Table(cols, body, status_column=3, links=[f"/stages?run={r['run_id']}" for r in runs])


def _brief_stats(stats: dict[str, Any]) -> str:
    # commands are long argv lists and packages a version map: lineage keeps them, the table does not
    return fmt({k: v for k, v in stats.items() if k not in ("commands", "packages")})[:400]


def steps_table(steps: list[dict[str, Any]]) -> Table:
    cols = ["stage", "status", "started (UTC)", "duration", "cache key", "stats", "error"]
    body = [[s["stage"], s["status"], fmt(s["started_at"]), _duration(s["duration_s"]), (s["cache_key"] or "")[:16],
             _brief_stats(s["stats"]), (s["error"] or "")[:300]] for s in steps]
    return Table(cols, body, status_column=1)


def summary_table(summary: list[dict[str, Any]]) -> Table:
    cols = ["stage", "completed", "cached", "failed", "total time"]
    return Table(cols, [[r["stage"], fmt(r["completed"]), fmt(r["cached"]), fmt(r["failed"]),
                         _duration(r["duration_s"])] for r in summary])


def splits_table(splits: list[dict[str, Any]]) -> Table:
    cols = ["split", "sequences", "clusters", "tokens", "shard files"]
    return Table(cols, [[s["split"], fmt(s["sequences"]), fmt(s["clusters"]), fmt(s["tokens"]), fmt(s["files"])]
                        for s in splits])


def audit_table(audit: list[dict[str, Any]]) -> Table:
    """The leakage audit: per held-out split, the share whose nearest training neighbour is that close."""
    cols = ["split", "searched", ">= 30 %", ">= 50 %", ">= 70 %", ">= 90 %", "max identity", "closest pair"]
    return Table(cols, [[a["split"], f"{fmt(a.get('queries'))} of {fmt(a.get('held_out'))}",
                         *(f"{100 * a.get(f'share_ge_{t}', 0):.1f} %" for t in (30, 50, 70, 90)),
                         fmt(a.get("max_identity"), digits=3),
                         (f"{a['closest']['id']} ~ {a['closest']['train_id']}" if a.get("closest") else "-")]
                        for a in audit])


def eval_rows_table(names: list[str], rows: list[dict[str, Any]]) -> Table:
    cols = ["run", "checkpoint step"] + names
    return Table(cols, [[r["prefix"], fmt(r["step"])] + [fmt(r.get(n)) for n in names] for r in rows])


def table_html(t: Table, colors: dict[str, str] | None = None) -> str:
    """The table as escaped HTML (for the static report)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    out = [f"<table class='plm'><thead><tr>{head}</tr></thead><tbody>"]
    for row in t.rows:
        cells = []
        for i, v in enumerate(row):
            style = ""
            if colors and i == t.status_column and v in colors:
                style = f" style='color:{colors[v]};font-weight:600'"
            cells.append(f"<td{style}>{html.escape(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
