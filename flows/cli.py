"""The ``plm`` command line.

    plm data configs/demo.yaml [--set cluster.threads=8]   run the data_refresh flow
    plm run configs/demo.yaml                               end to end (data, then later stages when enabled)
    plm config configs/demo.yaml                            print the validated config
    plm lineage runs | show PATH_OR_ID | trace PATH_OR_ID   query lineage (--db F, or --config C --set K=V)
    plm msa import FILE... --out msas.parquet               import existing A3M / A2M / Stockholm MSAs
    plm dashboard [--db F | --config C --set K=V]           read-only monitoring dashboard on 127.0.0.1
    plm report RUN_ID --out report.html [--db F | --config C --set K=V]   one run as a self-contained HTML file
    plm deploy configs/esm2_ur50d.yaml --cron "0 3 * * 1"     schedule a flow on a Prefect work pool
    plm worker [--pool plm-process]                         run the scheduled runs (a Prefect process worker)
    plm doctor                                              server, scheduler, deployments, pools, workers

Output piped into a reader that stops early (``plm lineage runs | head -1``) ends the command quietly, exit 141.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
from pathlib import Path
from typing import Any

from pipeline_lib.errors import PipelineError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="configs/demo.yaml", help="YAML config (default configs/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set cluster.threads=8 (repeatable)")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="lineage DuckDB file")
    p.add_argument("--config", default=None, help="config whose lineage file to read (default configs/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of --config, e.g. --set workdir=/data/plm or --set lineage.path=F")


def _db_path(args: argparse.Namespace) -> Path:
    from pipeline_lib.config import load_config

    if args.db and (args.config or args.overrides):
        raise PipelineError("give either --db or --config/--set, not both: --db names the lineage file itself")
    return Path(args.db) if args.db else load_config(args.config or "configs/demo.yaml", args.overrides).lineage_path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="plm", description="Protein language model data and pretraining pipeline")
    ap.add_argument("--debug", action="store_true",
                    help="print the tracebacks of failed flows and tasks on the console (they are always in the "
                         "Prefect UI and its log)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in (("data", "run the data_refresh flow"), ("run", "run the end-to-end flow"),
                       ("structures", "run the data stages and the structures (3Di / SaProt) stage"),
                       ("msa", "run the data stages and the MSA (MMseqs2) stage"),
                       ("train", "run the data stages and pretraining (torchrun)"),
                       ("evaluate", "evaluate checkpoints / Hugging Face ESM-2 directories on this config's data"),
                       ("config", "validate and print a config")):
        _add_config(sub.add_parser(name, help=text))
    sub.choices["data"].add_argument("--if-changed", action="store_true",
                                     help="stop early ('no new release') when the upstream source is unchanged")
    sub.choices["evaluate"].add_argument("--checkpoint", nargs="+", default=[], metavar="DIR",
                                         help="our checkpoint directory or a Hugging Face EsmForMaskedLM directory")
    sub.choices["evaluate"].add_argument("--compare", action="store_true",
                                         help="print a table of every evaluation in lineage, by checkpoint")
    sub.choices["config"].add_argument("--reference", action="store_true",
                                       help="print the reference of every config key (markdown)")
    lin = sub.add_parser("lineage", help="query the lineage database")
    lin.add_argument("what", choices=["runs", "show", "trace"])
    lin.add_argument("target", nargs="?", help="artifact path, artifact/step/run id")
    _add_db(lin)
    lin.add_argument("--json", action="store_true", help="print JSON")
    dash = sub.add_parser("dashboard", help="serve the read-only monitoring dashboard")
    _add_db(dash)
    dash.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=int, default=8050)
    dash.add_argument("--refresh-s", type=float, default=5.0, help="seconds between checks for new data")
    dash.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                      help="a host name the dashboard may be opened by (repeatable; IP addresses, localhost and the "
                           "--host name always work): requests naming it otherwise get 403 (DNS rebinding)")
    rep = sub.add_parser("report", help="write one run's dashboard content as a self-contained HTML file")
    rep.add_argument("run_id", help="run id or a unique prefix of one (plm lineage runs)")
    rep.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    _add_db(rep)
    from flows.deploy import add_deploy_parser, add_worker_parser
    from flows.doctor import add_doctor_parser

    add_deploy_parser(sub)
    add_worker_parser(sub)
    add_doctor_parser(sub)
    return ap


def _print_summary(result) -> None:
    if result.status == "no_new_release":
        print(f"\nno new release: upstream unchanged since run {result.release.previous_run}")
        return
    print("\nstage        status     key               details")
    for name, out in result.stages.items():
        status = "cached" if out.cached else ("checked" if name == "source" else "ran")
        brief = {k: v for k, v in out.stats.items() if k not in ("commands", "packages", "identity")}
        print(f"{name:<12} {status:<10} {out.cache_key[:16]}  {json.dumps(brief, default=str)[:108]}")
    if "train" in result.stages:
        t = result.stages["train"]
        print(f"\ncheckpoint: {next((a.path for a in t.outputs.values() if a.kind == 'checkpoint'), '-')}")
        if "hf" in t.outputs:
            print(f"HF model:   {t.outputs['hf'].path}  (transformers.EsmForMaskedLM.from_pretrained)")
    for name, out in result.stages.items():
        if name.startswith("evaluate") and "metrics.md" in out.outputs:
            print(f"\nevaluation ({out.stats.get('checkpoint')}):\n" + Path(out.path("metrics.md")).read_text())
    if "ingest" not in result.stages:  # plm evaluate on DMS files / structures alone: no data stage ran
        print(f"lineage:    {result.lineage}   (plm lineage runs | show | trace)")
        return
    ing = result.stages["ingest"]
    print(f"\nshards:     {result.shards_dir}")
    if "structures" in result.stages:
        cover = result.stages["structures"].stats.get("coverage") or {}
        shown = ", ".join(f"{k} {v:.1%}" for k, v in cover.items() if v is not None)
        print(f"SaProt:     {Path(result.stages['structures'].directory) / 'shards'}"
              + (f"   (rows with a structure: {shown})" if shown else ""))
    if "msa" in result.stages:
        print(f"MSAs:       {Path(result.stages['msa'].directory) / 'shards'}")
    split_quarantine = result.stages["split"].path("quarantine.parquet")
    print(f"quarantine: {ing.path('quarantine.parquet')} (+ split stage: {split_quarantine})")
    print(f"lineage:    {result.lineage}   (plm lineage runs | show | trace)")
    if result.report:
        print(f"report:     {result.report}   (static HTML: plm report RUN_ID --out FILE writes the same)")


def _compare(db: Path) -> str:
    """Markdown table of every evaluation recorded in lineage (rows: metrics, columns: checkpoints)."""
    import pyarrow.parquet as pq

    from pipeline_lib.evaluate.report import MetricRow, render_comparison
    from pipeline_lib.lineage import LineageStore

    arts = LineageStore(db).query("SELECT DISTINCT path FROM artifacts WHERE kind='eval_metrics' ORDER BY path")
    results: dict[str, list] = {}
    for a in arts:
        if Path(a["path"]).is_file():
            for r in pq.read_table(a["path"]).to_pylist():
                results.setdefault(r["checkpoint"] or Path(a["path"]).parent.name, []).append(
                    MetricRow(r["metric"], r["subset"], r["value"], r["n"]))
    if not results:
        raise PipelineError(f"no evaluations in {db}: run plm evaluate or plm run first")
    return render_comparison(results)


def _lineage(args: argparse.Namespace) -> int:
    from pipeline_lib.lineage import LineageStore

    db = _db_path(args)
    store = LineageStore(db) if db.exists() else None
    if store is None:
        raise PipelineError(f"no lineage database at {db}: run a flow first or pass --db")
    if args.what == "runs":
        rows: Any = store.runs()
    elif not args.target:
        raise PipelineError(f"plm lineage {args.what} needs a PATH_OR_ID")
    elif args.what == "show":
        rows = store.show(args.target)
    else:
        rows = store.trace(args.target)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        from flows import lineage_view

        if args.what == "runs":
            lineage_view.print_runs(rows)
        elif args.what == "show":
            lineage_view.print_show(rows)
        else:
            lineage_view.print_trace(rows)
    return 0


def _msa_import(argv: list[str]) -> int:
    """``plm msa import FILE... --out msas.parquet``: existing A3M / A2M / Stockholm files into the MSA table."""
    from pipeline_lib.msa.a3m import import_alignment
    from pipeline_lib.msa.store import write_msa_parquet

    ap = argparse.ArgumentParser(prog="plm msa import", description=_msa_import.__doc__)
    ap.add_argument("files", nargs="+", help="alignment files (format from the extension: .a3m, .a2m, .sto; "
                                             "gzipped too)")
    ap.add_argument("--out", required=True, help="output Parquet (the MSA table: depth, Neff, rows, headers)")
    ap.add_argument("--format", choices=["a3m", "a2m", "stockholm"], default=None)
    args = ap.parse_args(argv)
    msas, bad = [], []
    for f in args.files:  # every file is tried: the good ones are imported, the bad ones listed after
        try:
            msas.append(import_alignment(f, args.format))
        except PipelineError as exc:
            bad.append(str(exc))
    if msas:
        write_msa_parquet(msas, Path(args.out))
    for m in msas:
        print(f"{m.query_id}: depth {m.depth}, length {m.query_length}, Neff {m.neff:.1f}")
    print(f"{len(msas)} MSAs -> {args.out}" if msas else "no MSA imported")
    for reason in bad:
        print(f"plm: not imported: {reason}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Run one ``plm`` command and return its exit code. Output cut short by its reader (``| head``) ends
    quietly with 141, the code of a process that SIGPIPE ends, as ``git log | head`` does."""
    try:
        try:
            return _command(argv)
        finally:
            sys.stdout.flush()   # buffered output meets a closed pipe here, not at the interpreter's exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise   # from a socket (a webhook, a worker): a failure, not a reader that stopped
        # the recipe of Python's docs (signal, "Note on SIGPIPE"): what is still buffered goes to devnull, so
        # the interpreter's last flush does not print the error again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _stdout_closed() -> bool:
    """True when stdout is a pipe or socket whose reader has gone."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no poll() here, or stdout is no file (captured, closed)
        return False


class _NoTraceback(logging.Formatter):
    """The console's log format without tracebacks: a failed flow or task is one line there (its exception's
    text), and ``plm: error: ...`` says the rest; the Prefect UI and its log keep the whole traceback."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_without_tracebacks() -> None:
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()  # Prefect's handlers now, so that they are the ones changed (it sets them up once)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(_NoTraceback(handler.formatter or logging.Formatter()))


def _command(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["msa", "import"]:
        try:
            return _msa_import(argv[2:])
        except PipelineError as exc:
            print(f"plm: error: {exc}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    from flows.runs import env_defaults

    env_defaults()
    try:
        if args.cmd == "lineage":
            return _lineage(args)
        if args.cmd == "dashboard":
            from pipeline_lib.dashboard.app import serve

            serve(_db_path(args), args.host, args.port, refresh_s=args.refresh_s, allow_hosts=args.allow_host)
            return 0
        if args.cmd == "report":
            from pipeline_lib.dashboard.report import write_report

            print(write_report(_db_path(args), args.run_id, args.out))
            return 0
        if args.cmd == "deploy":
            from flows.deploy import deploy_command

            return deploy_command(args)
        if args.cmd == "worker":
            from flows.deploy import worker_command

            return worker_command(args)
        if args.cmd == "doctor":
            from flows.doctor import doctor_command

            return doctor_command(args)
        from pipeline_lib.config import load_config

        cfg = load_config(args.config, args.overrides)  # fail fast on config errors, before Prefect starts
        if args.cmd == "config" and args.reference:
            from pipeline_lib.config_reference import config_reference

            print(config_reference())
            return 0
        if args.cmd == "config":
            print(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return 0
        flow_name = {"data": "data_refresh", "run": "end_to_end", "structures": "structures", "msa": "msa",
                     "train": "train", "evaluate": "evaluate"}.get(args.cmd)
        if flow_name and not (args.cmd == "evaluate" and not args.checkpoint):
            from pipeline_lib.preflight import check

            check(cfg, flow_name, checkpoints=getattr(args, "checkpoint", None) or ())  # before Prefect starts
        from flows.runner import with_runner  # the configured task runner (threads, processes, Dask, Ray)

        if not args.debug:
            _console_without_tracebacks()

        if args.cmd == "data":
            from flows.data_refresh import data_refresh

            _print_summary(with_runner(data_refresh, cfg)(args.config, args.overrides, if_changed=args.if_changed))
            return 0
        if args.cmd in ("run", "structures", "msa", "train"):
            from flows import end_to_end as flows

            fn = {"run": flows.end_to_end, "structures": flows.structures_flow, "msa": flows.msa_flow,
                  "train": flows.train_flow}[args.cmd]
            _print_summary(with_runner(fn, cfg)(args.config, args.overrides))
            return 0
        if args.cmd == "evaluate":
            if args.compare and not args.checkpoint:
                print(_compare(cfg.lineage_path))
                return 0
            if not args.checkpoint:
                raise PipelineError("plm evaluate needs --checkpoint DIR [DIR ...] (or --compare)")
            from flows.end_to_end import evaluate_flow

            _print_summary(with_runner(evaluate_flow, cfg)(args.config, args.overrides, args.checkpoint))
            if args.compare:
                print(_compare(cfg.lineage_path))
            return 0
    except PipelineError as exc:
        print(f"plm: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
