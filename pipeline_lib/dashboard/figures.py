"""Plotly figures for the dashboard and the static report, built from :mod:`.data` results.

    fig = length_figure(data.length_histogram(db, run_id)); fig.write_html("lengths.html")

Each function takes plain data and returns a ``plotly.graph_objects.Figure``; an absent dataset gives a
figure that says so instead of an empty frame. ``uirevision`` keeps zoom and pan across auto-refreshes.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import plotly.graph_objects as go

from pipeline_lib.dashboard.data import LineageGraph
from pipeline_lib.dashboard.stats import Histogram

__all__ = ["STATUS_COLORS", "metric_order", "empty_figure", "histogram_figure", "length_figure",
           "stage_timeline_figure",
           "cluster_size_figure", "split_figure", "training_figure", "eval_figure", "lineage_figure"]

STATUS_COLORS = {"completed": "#2ca02c", "cached": "#1f77b4", "failed": "#d62728", "running": "#ff7f0e",
                 "crashed": "#8c564b", "no_new_release": "#7f7f7f"}
_LAYOUT: dict[str, Any] = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
                           "height": 360, "uirevision": "keep"}
TRAINING_ORDER = ("loss", "perplexity", "lr", "tokens_per_s")


def metric_order(names: Any) -> list[str]:
    """Training metrics in reading order: loss, perplexity, lr, tokens_per_s, then the rest by name."""
    return sorted(names, key=lambda n: (TRAINING_ORDER.index(n) if n in TRAINING_ORDER else len(TRAINING_ORDER), n))


def _fig(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title={"text": title}, **(_LAYOUT | layout))
    return fig


def empty_figure(title: str, message: str) -> go.Figure:
    fig = _fig(title, height=220)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#777"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def histogram_figure(h: Histogram, title: str, missing: str, *, log_y: bool = False) -> go.Figure:
    """Bars of a precomputed :class:`Histogram`."""
    if h.empty:
        return empty_figure(title, missing)
    fig = _fig(f"{title} (n={h.total:,})")
    fig.add_bar(x=[x + h.width / 2 for x in h.lefts], y=h.counts, width=h.width, name=h.label,
                marker_color="#4c78a8", hovertemplate="%{x}: %{y:,}<extra></extra>")
    fig.update_xaxes(title_text=h.label)
    fig.update_yaxes(title_text="count", type="log" if log_y else "linear")
    return fig


def length_figure(h: Histogram) -> go.Figure:
    return histogram_figure(h, "Sequence lengths", "no ingest sequences.parquet artifact in this run")


def stage_timeline_figure(steps: list[dict[str, Any]]) -> go.Figure:
    """One bar per step from its start to its end, coloured by status (a Gantt chart of the run)."""
    if not steps:
        return empty_figure("Stage timeline", "no steps recorded for this run yet")
    t0: datetime = min(s["started_at"] for s in steps)
    fig = _fig("Stage timeline (seconds since the first step)", barmode="overlay",
               height=max(260, 60 + 32 * len(steps)))
    for status in sorted({s["status"] for s in steps}):
        sel = [s for s in steps if s["status"] == status]
        fig.add_bar(orientation="h", name=status, marker_color=STATUS_COLORS.get(status, "#999"),
                    y=[s["stage"] for s in sel], x=[max(s["duration_s"] or 0.0, 0.01) for s in sel],
                    base=[(s["started_at"] - t0).total_seconds() for s in sel],
                    hovertemplate="%{y}: %{x:.2f}s<extra>" + status + "</extra>")
    fig.update_yaxes(autorange="reversed", categoryorder="array",
                     categoryarray=list(dict.fromkeys(s["stage"] for s in steps)))
    fig.update_xaxes(title_text="seconds")
    return fig


def cluster_size_figure(dist: dict[str, dict[str, list[int]]]) -> go.Figure:
    """Clusters per size, one trace per level, log-log (sizes are heavy-tailed)."""
    if not dist:
        return empty_figure("Cluster sizes", "no cluster_sizes.parquet artifact in this run")
    fig = _fig("Cluster-size distribution per level")
    for level, d in dist.items():
        fig.add_scatter(x=d["size"], y=d["clusters"], mode="lines+markers", name=level,
                        hovertemplate="size %{x}: %{y:,} clusters<extra>" + level + "</extra>")
    biggest = max((max(d["size"]) for d in dist.values() if d["size"]), default=1)
    fig.update_xaxes(title_text="cluster size (sequences)", type="log" if biggest > 50 else "linear")
    fig.update_yaxes(title_text="clusters", type="log", dtick=1)   # dtick=1: one label per decade
    return fig


def split_figure(splits: list[dict[str, Any]]) -> go.Figure:
    if not splits:
        return empty_figure("Split sizes", "no split stage in this run")
    fig = _fig("Split sizes", barmode="group")
    names = [s["split"] for s in splits]
    for key in ("sequences", "clusters"):
        fig.add_bar(x=names, y=[s[key] or 0 for s in splits], name=key, text=[s[key] for s in splits])
    fig.update_yaxes(title_text="count")
    return fig


def training_figure(name: str, curve: dict[str, list[float]]) -> go.Figure:
    fig = _fig(name, height=300, showlegend=False)
    fig.add_scatter(x=curve["step"], y=curve["value"], mode="lines+markers" if len(curve["step"]) < 200 else "lines",
                    name=name, hovertemplate="step %{x}: %{y:.4g}<extra></extra>")
    fig.update_xaxes(title_text="step")
    positive = all(v > 0 for v in curve["value"])
    if positive and name in ("loss", "perplexity", "lr") and max(curve["value"]) > 20 * min(curve["value"]):
        fig.update_yaxes(type="log")
    return fig


def eval_figure(names: list[str], table: list[dict[str, Any]]) -> go.Figure:
    """Each ``eval/*`` metric against checkpoint step (one line per run and metric)."""
    if not table:
        return empty_figure("Evaluation", "no eval/* metrics recorded")
    fig = _fig("Evaluation across checkpoints")
    runs = list(dict.fromkeys(r["run_id"] for r in table))
    for rid in runs:
        sel = [r for r in table if r["run_id"] == rid]
        for n in names:
            pts = [(r["step"], r[n]) for r in sel if r.get(n) is not None]
            if pts:
                label = n if len(runs) == 1 else f"{n} ({rid[:8]})"
                fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label)
    fig.update_xaxes(title_text="checkpoint step")
    return fig


def _layers(g: LineageGraph) -> dict[str, int]:
    """x position of each node: minus the longest path from it to the target, so every edge points right."""
    succ: dict[str, list[str]] = {}
    for a, b in g.edges:
        succ.setdefault(a, []).append(b)
    memo: dict[str, int] = {}

    def dist(nid: str, seen: frozenset[str]) -> int:
        if nid not in memo:
            nxt = [m for m in succ.get(nid, []) if m not in seen]
            memo[nid] = 1 + max(dist(m, seen | {nid}) for m in nxt) if nxt else 0
        return memo[nid]

    return {n["id"]: -dist(n["id"], frozenset()) for n in g.nodes}


def lineage_figure(g: LineageGraph) -> go.Figure:
    """The trace as a layered graph: sources on the left, the target on the right."""
    if not g.nodes:
        return empty_figure("Lineage", "no lineage for this artifact")
    x_of = _layers(g)
    columns: dict[int, list[str]] = {}
    for n in sorted(g.nodes, key=lambda n: (n["type"], n["label"])):
        columns.setdefault(x_of[n["id"]], []).append(n["id"])
    y_of = {nid: (len(ids) - 1) / 2 - i for ids in columns.values() for i, nid in enumerate(ids)}
    ex: list[float | None] = []
    ey: list[float | None] = []
    for a, b in g.edges:
        if a in x_of and b in x_of:
            ex += [x_of[a], x_of[b], None]
            ey += [y_of[a], y_of[b], None]
    tallest = max(len(v) for v in columns.values())
    fig = _fig(f"Lineage of {g.target}", height=max(320, 70 * tallest), showlegend=True, hovermode="closest")
    fig.add_scatter(x=ex, y=ey, mode="lines", line={"color": "#bbb", "width": 1}, hoverinfo="skip", name="edges",
                    showlegend=False)
    for kind, symbol, color in (("step", "square", "#ff7f0e"), ("artifact", "circle", "#4c78a8")):
        sel = [n for n in g.nodes if n["type"] == kind]
        fig.add_scatter(x=[x_of[n["id"]] for n in sel], y=[y_of[n["id"]] for n in sel], mode="markers+text",
                        name=kind + "s", text=[n["label"] for n in sel], textposition="top center",
                        customdata=[n["detail"] for n in sel], hovertemplate="%{customdata}<extra></extra>",
                        marker={"symbol": symbol, "size": 16 if kind == "step" else 11, "color": color})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig
