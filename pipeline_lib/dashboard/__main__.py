"""Run the dashboard without the ``plm`` CLI.

    python -m pipeline_lib.dashboard work/lineage.duckdb [--host 127.0.0.1] [--port 8050] [--refresh-s 5]
"""
from __future__ import annotations

import argparse

from pipeline_lib.dashboard.app import serve


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline_lib.dashboard", description=__doc__)
    ap.add_argument("db", help="lineage DuckDB file")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8050)
    ap.add_argument("--refresh-s", type=float, default=5.0, help="how often the browser checks for new data")
    args = ap.parse_args(argv)
    serve(args.db, args.host, args.port, refresh_s=args.refresh_s)


if __name__ == "__main__":
    main()
