"""Monitoring: a read-only web dashboard over the lineage DuckDB, and static per-run HTML reports.

    plm dashboard --db work/lineage.duckdb [--host 127.0.0.1 --port 8050]
    plm report RUN_ID --out report.html --db work/lineage.duckdb

Modules: :mod:`.db` (read-only connections that never block the pipeline's writers), :mod:`.data` (queries
returning plain data), :mod:`.stats` (histograms over the Parquet / A3M artifacts lineage names),
:mod:`.figures` and :mod:`.tables` (presentation shared by both front ends),
:mod:`.app` (Plotly Dash) and :mod:`.report` (one self-contained HTML file). The app is imported lazily so
that reading data or writing a report does not import Dash, and ``python -m`` runs its modules cleanly.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve", "write_report"]


def create_app(db_path: Any, **kwargs: Any) -> Any:
    from pipeline_lib.dashboard.app import create_app as _create

    return _create(db_path, **kwargs)


def serve(db_path: Any, host: str = "127.0.0.1", port: int = 8050, **kwargs: Any) -> None:
    from pipeline_lib.dashboard.app import serve as _serve

    _serve(db_path, host, port, **kwargs)


def write_report(db_path: Any, run_id: str, out_path: Any) -> Any:
    from pipeline_lib.dashboard.report import write_report as _write

    return _write(db_path, run_id, out_path)
