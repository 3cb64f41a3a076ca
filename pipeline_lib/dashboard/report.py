"""One run's dashboard content as a single self-contained HTML file (plotly.js inlined, works offline).

    plm report 6ddee171 --out report.html --db work/lineage.duckdb
    python -m pipeline_lib.dashboard.report work/lineage.duckdb 6ddee171 report.html

The run id may be abbreviated to any unique prefix (a prefix of several runs is an error that lists them,
:meth:`LineageStore.resolve_run`). The file is written under a temporary name and renamed.
"""
from __future__ import annotations

import html
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import plotly.graph_objects as go

from pipeline_lib.dashboard import data, figures
from pipeline_lib.dashboard.db import read_only
from pipeline_lib.dashboard.tables import (
    CSS,
    Table,
    audit_table,
    eval_rows_table,
    runs_table,
    splits_table,
    steps_table,
    summary_table,
    table_html,
)
from pipeline_lib.io import atomic_path

__all__ = ["write_report", "render_report"]


class _Doc:
    """Accumulates sections; the first figure carries plotly.js, the others reference it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._js_done = False

    def h(self, level: int, text: str) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, t: Table) -> None:
        self.parts.append(table_html(t, figures.STATUS_COLORS))

    def fig(self, fig: go.Figure) -> None:
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=not self._js_done,
                                      config={"displaylogo": False}))
        self._js_done = True


def render_report(db_path: str | os.PathLike[str], run_id: str) -> str:
    """The report's HTML text."""
    db = Path(db_path)
    with read_only(db) as con:   # one short read of lineage; Parquet statistics come after it is closed
        run_id = data.resolve_run(con, run_id)
        run = data.list_runs(con, run_id=run_id)[0]
        note = data.run_note(data.picker_runs(con, limit=1000), run_id)
        steps = data.run_steps(con, run_id)
        curves = data.training_curves(con, run_id)
        names, table = data.eval_table(con, run_id)
        target = data.default_trace_target(con, run_id)
        graph = data.lineage_graph(con, target) if target else None
    ds = data.dataset(db, run_id)
    doc = _Doc()
    doc.h(1, f"PLM pipeline run {run_id}")
    doc.p(f"{run['flow']} · {run['name']} · config {run['config_hash']} · code {run['code_version']} · "
          f"host {run['host']} · lineage {db.resolve()} · report written "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
    doc.table(runs_table([run]))
    if note is not None and note.empty:   # no_new_release: say so, and which run to open instead
        doc.p(note.text + "".join(f" {r['prefix']} ({r['flow']}, {r['started_at']:%Y-%m-%d %H:%M}, {r['status']})"
                                  for r in note.links))

    doc.h(2, "Stages")
    doc.table(summary_table(data.stage_summary(steps)))
    doc.fig(figures.stage_timeline_figure(steps))
    doc.table(steps_table(steps))

    doc.h(2, "Dataset")
    for fig in (figures.length_figure(ds.lengths), figures.cluster_size_figure(ds.cluster_sizes),
                figures.split_figure(ds.splits)):
        doc.fig(fig)
    doc.table(splits_table(ds.splits))
    if ds.audit:
        doc.p("Leakage audit: how close each held-out split is to the training data (nearest train neighbour "
              "by MMseqs2 search).")
        doc.table(audit_table(ds.audit))
    for hist, title, missing, log_y in (
            (ds.plddt, "Mean pLDDT per structure", "no structure_shard artifacts", False),
            (ds.msa_depth, "MSA depth", "no msa artifacts", True)):
        if hist.empty:
            doc.p(f"{title}: {missing} in this run.")
        else:
            doc.fig(figures.histogram_figure(hist, title, missing, log_y=log_y))

    doc.h(2, "Training")
    if not curves:
        doc.p("No training metrics recorded for this run.")
    for name in figures.metric_order(curves):
        doc.fig(figures.training_figure(name, curves[name]))

    doc.h(2, "Evaluation")
    if table:
        doc.fig(figures.eval_figure(names, table))
        doc.table(eval_rows_table(names, table))
    else:
        doc.p("No eval/* metrics recorded for this run.")

    doc.h(2, "Lineage")
    if graph is None:
        doc.p("This run produced no artifacts.")
    else:
        doc.fig(figures.lineage_figure(graph))
        chain = sorted((n for n in graph.nodes if n["type"] == "step"), key=lambda n: n["depth"])
        doc.table(Table(["depth", "step"], [[str(n["depth"]), n["detail"]] for n in chain]))
    return _page(f"PLM run {run['prefix']}", doc.parts)


def _page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS} body{{padding:12px 24px}}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>\n")


def write_report(db_path: str | os.PathLike[str], run_id: str, out_path: str | os.PathLike[str]) -> Path:
    """Write the report of ``run_id`` to ``out_path`` and return its path."""
    text = render_report(db_path, run_id)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def _main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m pipeline_lib.dashboard.report DB RUN_ID OUT.html", file=sys.stderr)
        return 2
    print(write_report(args[0], args[1], args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
