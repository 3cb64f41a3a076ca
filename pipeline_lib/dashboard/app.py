"""The read-only monitoring dashboard (Plotly Dash) over the lineage DuckDB.

    plm dashboard --db work/lineage.duckdb                 # http://127.0.0.1:8050
    python -m pipeline_lib.dashboard work/lineage.duckdb --port 8051

Pages: runs, stages of a run (counts, timeline, steps with stats), dataset (lengths, cluster sizes, splits,
pLDDT and MSA depth when those artifacts exist), training curves, evaluation across checkpoints, and the
lineage graph of an artifact. The run picker opens on the newest run that ran stages (scheduled refreshes
mostly end ``no_new_release`` without one) and says which newer runs it passed over; ``?run=`` takes an id or
a unique prefix. Every few seconds the browser asks whether the database file changed (two
``stat`` calls) and re-reads only then; each read opens DuckDB read-only for one request (see :mod:`.db`),
so a running pipeline keeps writing. There is no authentication: the server binds 127.0.0.1 unless told
otherwise; expose it through an SSH tunnel or an authenticating proxy. It answers only requests whose ``Host``
is an IP address, ``localhost`` or a name given with ``--allow-host`` (the name it is bound to counts): a web
page cannot read it through a DNS name of its own pointed at 127.0.0.1 (DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.serving import make_server as _wsgi_server

from pipeline_lib.dashboard import data, figures
from pipeline_lib.dashboard.db import db_version, read_only
from pipeline_lib.dashboard.tables import (
    CSS,
    Table,
    audit_table,
    eval_rows_table,
    runs_table,
    splits_table,
    steps_table,
    summary_table,
)
from pipeline_lib.errors import PipelineError, RunLookupError

__all__ = ["create_app", "make_server", "serve", "PAGES", "HostCheck"]

log = logging.getLogger("plm.dashboard")

PAGES = {"/": "Runs", "/stages": "Stages", "/dataset": "Dataset", "/training": "Training",
         "/evaluation": "Evaluation", "/lineage": "Lineage"}


def _table(t: Table, table_id: str) -> html.Table:
    head = html.Thead(html.Tr([html.Th(c) for c in t.columns]))
    body = []
    for r, row in enumerate(t.rows):
        cells = []
        for i, v in enumerate(row):
            style = None
            if i == t.status_column and v in figures.STATUS_COLORS:
                style = {"color": figures.STATUS_COLORS[v], "fontWeight": 600}
            cells.append(html.Td(dcc.Link(v, href=t.links[r]) if i == 0 and t.links else v, style=style))
        body.append(html.Tr(cells))
    return html.Table([head, html.Tbody(body)], className="plm", id=table_id)


def _graph(fig_id: str, fig: Any) -> dcc.Graph:
    return dcc.Graph(id=fig_id, figure=fig, className="plm-graph", config={"displaylogo": False})


# --- pages ------------------------------------------------------------------------------------------------

def runs_page(db: Path, run_id: str | None) -> list[Any]:
    runs = data.list_runs(db)
    if not runs:
        return [html.P("No runs recorded yet.", className="note")]
    return [html.H3("Runs"), _table(runs_table(runs), "runs-table")]


def _run_head(run_id: str, run: dict[str, Any] | None) -> list[Any]:
    head: list[Any] = [html.H3(f"Run {run_id}")]
    if run:
        head.append(html.P(f"{run['flow']} · {run['name']} · status {run['status']} · config {run['config_hash'][:12]}"
                           f" · code {run['code_version']} · host {run['host']}", className="note"))
    return head


def stages_page(db: Path, run_id: str) -> list[Any]:
    with read_only(db) as con:
        found, steps = data.list_runs(con, run_id=run_id), data.run_steps(con, run_id)
    return _run_head(run_id, found[0] if found else None) + [
        _table(summary_table(data.stage_summary(steps)), "summary-table"),
        _graph("fig-timeline", figures.stage_timeline_figure(steps)),
        html.H4("Steps"), _table(steps_table(steps), "steps-table")]


def dataset_page(db: Path, run_id: str) -> list[Any]:
    ds = data.dataset(db, run_id)
    return [html.Div([
        _graph("fig-lengths", figures.length_figure(ds.lengths)),
        _graph("fig-clusters", figures.cluster_size_figure(ds.cluster_sizes)),
        html.Div([_graph("fig-splits", figures.split_figure(ds.splits)),
                  _table(splits_table(ds.splits), "splits-table"),
                  *([_table(audit_table(ds.audit), "audit-table")] if ds.audit else [])]),
        _graph("fig-plddt", figures.histogram_figure(ds.plddt, "Mean pLDDT per structure",
                                                     "no structure_shard artifacts in this run")),
        _graph("fig-msa", figures.histogram_figure(ds.msa_depth, "MSA depth", "no msa artifacts in this run",
                                                   log_y=True)),
    ], className="grid")]


def training_page(db: Path, run_id: str) -> list[Any]:
    curves = data.training_curves(db, run_id)
    if not curves:
        return [html.P("No training metrics for this run (the metrics table has none yet).", className="note")]
    names = figures.metric_order(curves)
    return [html.Div([_graph(f"fig-train-{i}", figures.training_figure(n, curves[n])) for i, n in enumerate(names)],
                     className="grid")]


def evaluation_page(db: Path, run_id: str) -> list[Any]:
    with read_only(db) as con:
        names, table = data.eval_table(con, run_id)
        if not table:
            names, table = data.eval_table(con)   # nothing for this run: compare every run's checkpoints
    return [_graph("fig-eval", figures.eval_figure(names, table)),
            _table(eval_rows_table(names, table), "eval-table")]


def lineage_page(db: Path, run_id: str) -> list[Any]:
    with read_only(db) as con:
        arts, target = data.run_artifacts(con, run_id), data.default_trace_target(con, run_id)
    options = [{"label": f"{a['kind']}: {a['path']}", "value": a["artifact_id"]} for a in arts]
    return [html.Div([html.Label("Artifact "),
                      dcc.Dropdown(id="artifact", options=options, value=target,
                                   clearable=False, persistence=True, persistence_type="memory")]),
            html.Div(id="lineage-view")]


def lineage_view(db: Path, target: str) -> list[Any]:
    graph = data.lineage_graph(db, target)
    steps = [n for n in graph.nodes if n["type"] == "step"]
    t = Table(["depth", "step"], [[str(n["depth"]), n["detail"]] for n in sorted(steps, key=lambda n: n["depth"])])
    return [_graph("fig-lineage", figures.lineage_figure(graph)), _table(t, "trace-table")]


def _note(note: data.RunNote, pathname: str) -> html.P:
    """The note as a paragraph whose runs link to the same page for them."""
    parts: list[Any] = [note.text]
    for i, r in enumerate(note.links):
        parts += [" · " if i else " ", dcc.Link(data.run_label(r), href=f"{pathname}?run={r['run_id']}")]
    if note.more:
        parts.append(f" and {note.more} more (Runs page)")
    return html.P(parts, className="run-note", id="run-note")


def run_page(render: Any, db: Path, run_id: str, pathname: str) -> list[Any]:
    """A run's page with the note about it (:func:`data.run_note`) on top; for a run that ran no stages the
    stage and dataset pages are the note alone, with a link to the last run that ran some, not empty charts."""
    with read_only(db) as con:
        runs = data.picker_runs(con)
    note = data.run_note(runs, run_id)
    if note is None:
        return render(db, run_id)
    if note.empty and render in (stages_page, dataset_page):
        return _run_head(run_id, next(r for r in runs if r["run_id"] == run_id)) + [_note(note, pathname)]
    return [_note(note, pathname)] + render(db, run_id)


def _url_run(con: Any, search: str | None, pathname: str) -> tuple[str | None, list[Any]]:
    """The run that ``?run=<id or unique prefix>`` names (None when absent), or None and the error to show."""
    wanted = parse_qs((search or "").lstrip("?")).get("run", [None])[0]   # /stages?run=<id> (runs table links)
    if not wanted:
        return None, []
    try:
        return data.resolve_run(con, wanted), []
    except RunLookupError as exc:
        links = [html.Li(dcc.Link(f"{r['run_id']}  {r['flow']}  {r['status']}  {r['started_at']:%Y-%m-%d %H:%M:%S}",
                                  href=f"{pathname}?run={r['run_id']}")) for r in exc.candidates[:20]]
        return None, [html.Div([str(exc).splitlines()[0]] + ([html.Ul(links)] if links else []), className="error",
                               id="run-error")]


RENDER = {"/": runs_page, "/stages": stages_page, "/dataset": dataset_page, "/training": training_page,
          "/evaluation": evaluation_page, "/lineage": lineage_page}


def _guarded(fn: Any, *args: Any) -> list[Any]:
    """Render, or show the error in the page: a busy or half-written database must not break the UI."""
    try:
        return fn(*args)
    except PipelineError as exc:
        return [html.Div(str(exc), className="error")]
    except Exception:
        log.exception("dashboard page failed")
        return [html.Div(traceback.format_exc(limit=5), className="error")]


# --- app --------------------------------------------------------------------------------------------------

def create_app(db_path: str | os.PathLike[str], *, refresh_s: float = 5.0) -> Dash:
    """A Dash app reading ``db_path``; ``refresh_s`` is how often the browser checks for changes."""
    db = Path(db_path).resolve()
    app = Dash(__name__, title="PLM pipeline", update_title=None,  # type: ignore[arg-type]  # no "Updating..." title
               suppress_callback_exceptions=True,
               serve_locally=True)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + CSS + "</style>")
    nav = [dcc.Link(title, href=path, id=f"nav{path.replace('/', '-') or '-runs'}") for path, title in PAGES.items()]
    app.layout = html.Div([
        dcc.Location(id="url"),
        dcc.Interval(id="tick", interval=int(refresh_s * 1000)),
        dcc.Store(id="version"),
        html.Header([html.H2("PLM pipeline"), html.Nav(nav),
                     html.Div(dcc.Dropdown(id="run", clearable=False, placeholder="no runs yet"),
                              className="run-picker"),
                     html.Span(str(db), className="db")]),
        html.Div(id="run-message", style={"padding": "0 20px"}),
        html.Main(id="page"),
    ])

    @app.callback(Output("version", "data"), Input("tick", "n_intervals"), State("version", "data"))
    def _poll(_: int | None, seen: str | None) -> Any:
        version = db_version(db)
        return no_update if version == seen else version

    @app.callback(Output("run", "options"), Output("run", "value"), Output("run-message", "children"),
                  Input("version", "data"), Input("url", "search"), State("url", "pathname"), State("run", "value"))
    def _runs(_: str | None, search: str | None, pathname: str | None, current: str | None) -> Any:
        from_url = ctx.triggered_id == "url" or current is None   # a later refresh keeps the user's pick
        try:
            with read_only(db) as con:
                runs = data.picker_runs(con)
                wanted, message = _url_run(con, search, pathname or "/") if from_url else (None, no_update)
                if wanted and wanted not in {r["run_id"] for r in runs}:   # older than the picker's 200
                    runs += data.list_runs(con, run_id=wanted)
        except PipelineError:
            return [], None, no_update
        ids = {r["run_id"] for r in runs}
        value = wanted or (current if current in ids else data.default_run(runs))
        return data.run_options(runs), value, message

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("run", "value"),
                  Input("version", "data"))
    def _page(pathname: str | None, run_id: str | None, _: str | None) -> Any:
        render = RENDER.get(pathname or "/", runs_page)
        if render is runs_page:
            return _guarded(runs_page, db, run_id)
        if run_id is None:
            return [html.P("No run selected: the lineage database has no runs yet.", className="note")]
        return _guarded(run_page, render, db, run_id, pathname)

    @app.callback(Output("lineage-view", "children"), Input("artifact", "value"), Input("version", "data"))
    def _lineage(target: str | None, _: str | None) -> Any:
        if not target:
            return [html.P("This run produced no artifacts yet.", className="note")]
        return _guarded(lineage_view, db, target)

    return app


class _QuietHandler(WSGIRequestHandler):
    """Logs failed requests only: the page polls every few seconds and would flood the log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(code)[:1] in ("4", "5"):
            super().log_request(code, size)


def _host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8050`` -> ``::1``), lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostCheck:
    """WSGI middleware answering 403 to a request whose ``Host`` names the server by a name it was not given:
    what a page served from ``evil.example`` sends after pointing ``evil.example`` at 127.0.0.1 (DNS rebinding),
    which would otherwise let it read the lineage. IP addresses and ``localhost`` are always accepted (a
    rebinding attack needs a name of its own), and so are the ``allowed`` names."""

    def __init__(self, app: Callable[..., Iterable[bytes]], allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {"localhost", *(a.strip().lower() for a in allowed if a.strip())}

    def accepts(self, header: str | None) -> bool:
        if not header:  # HTTP/1.0 clients; browsers always send one
            return True
        name = _host_name(header)
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self.allowed or name.endswith(".localhost")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.accepts(environ.get("HTTP_HOST")):
            return self.app(environ, start_response)
        body = (f"Host {environ.get('HTTP_HOST')!r} is not allowed: open the dashboard by its IP address or "
                "localhost, or start it with --allow-host NAME\n").encode()
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]


def make_server(db_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8050, *,
                refresh_s: float = 5.0, allow_hosts: Iterable[str] = ()) -> BaseWSGIServer:
    """A threaded WSGI server for the dashboard (``port=0`` picks a free port: see ``server.server_port``).
    Requests must name it by an IP address, ``localhost``, ``host`` or one of ``allow_hosts`` (:class:`HostCheck`)."""
    app = create_app(db_path, refresh_s=refresh_s)
    checked = HostCheck(app.server, [host, *allow_hosts])
    return _wsgi_server(host, port, checked, threaded=True, request_handler=_QuietHandler)


def serve(db_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8050, *,
          refresh_s: float = 5.0, allow_hosts: Iterable[str] = ()) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(db_path, host, port, refresh_s=refresh_s, allow_hosts=allow_hosts)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard bound to %s without authentication: anyone who can reach it can read lineage", host)
    print(f"plm dashboard: http://{host}:{server.server_port}/  (lineage {Path(db_path).resolve()}; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
