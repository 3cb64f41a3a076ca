"""MSA benchmark: our MSA pipeline against the bare mmseqs commands on the same input.

    .venv/bin/python bench/msa_bench.py --queries 100 --batch-size 50 [--targets generated:2000] [--repeats 3]

Targets: the 500 real TrEMBL sequences in ``../shared/fixtures`` (default) or ``generated:N`` (N synthetic family
sequences, ``pipeline_lib/sequences/families.py``). Queries: the first ``--queries`` target sequences.
Each mode runs in its own subprocess, alternating, ``--repeats`` times (median reported):

* ``bare``: the exact argv lists the pipeline records (createdb of target and queries, search, filterresult,
  result2msa, unpackdb), run by ``subprocess.run`` with output discarded: the floor set by mmseqs itself;
* ``build``: ``prepare_target`` + ``build_msas`` (batches, atomic dirs, markers, A3M renaming/validation);
* ``full``: ``build`` + parse every A3M, Neff, MSA Parquet store, subsample and tokenized shards.

Wall time is what users see; CPU time (user + sys of Python and all mmseqs children) is steadier on a
shared machine; the Python-side time of a pipeline run (its wall time minus the time inside its own
mmseqs calls) is the overhead that machine load cannot blur. Peak RSS: max RSS of the Python process
(``getrusage``) and of its mmseqs children (sampled every 100 ms). Prints a markdown table;
overhead = (mode - bare) / bare.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.msa.build import build_msas, prepare_target, read_queries  # noqa: E402
from pipeline_lib.msa.config import MsaConfig  # noqa: E402
from pipeline_lib.msa.store import write_msa_parquet  # noqa: E402
from pipeline_lib.msa.tokens import write_msa_shards  # noqa: E402
from pipeline_lib.sequences.families import FamilySpec, load_seeds, write_families  # noqa: E402
from pipeline_lib.tools.base import BinaryTool  # noqa: E402
from pipeline_lib.tools.mmseqs import MMseqs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TREMBL = ROOT.parent / "shared" / "fixtures" / "sequences" / "uniprot_trembl_500.fasta"


def generate_targets(path: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic family sequences (pipeline_lib/sequences/families.py: real seed proteins grown along random
    trees), the same generator as the clustering and search benchmarks."""
    write_families(FamilySpec(n=n, seed=seed), load_seeds(), path, path.with_suffix(".truth.parquet"))


def _config(args: argparse.Namespace) -> MsaConfig:
    return MsaConfig(batch_size=args.batch_size, max_queries=args.queries, threads=args.threads,
                     search={"num_iterations": args.iterations, "prefilter_mode": args.prefilter_mode})


_IN_MMSEQS = [0.0]


def _time_tool_runs() -> None:
    """Bench-only instrumentation: add up the wall time spent inside BinaryTool.run (the mmseqs calls)."""
    original = BinaryTool.run

    def timed(self, *a, **kw):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            _IN_MMSEQS[0] += time.perf_counter() - start

    BinaryTool.run = timed  # type: ignore[method-assign]


def run_pipeline(args: argparse.Namespace, target_fa: Path, work: Path, full: bool) -> dict:
    _time_tool_runs()
    cfg = _config(args)
    queries = read_queries(target_fa)
    MMseqs().version()   # cached per process; run once before timing, in every mode alike
    version_calls = _IN_MMSEQS[0]
    start = time.perf_counter()
    target = prepare_target(target_fa, work / "target", cfg)
    results = build_msas(queries, target, work / "batches", cfg)
    built = time.perf_counter() - start
    n = sum(len(r.query_ids) for r in results)
    if full:
        msas = [m for r in results for m in r.read_msas()]
        write_msa_parquet(msas, work / "msas.parquet")
        write_msa_shards({"train": msas}, work / "shards", subsample=cfg.subsample)
    commands = [json.loads((work / "target" / "DONE.json").read_text())["commands"]]
    commands += [r.commands for r in results]
    return {"seconds": time.perf_counter() - start, "build_seconds": built, "msas": n,
            "mmseqs_seconds": _IN_MMSEQS[0] - version_calls,
            "depth_mean": statistics.mean(d for r in results for d in r.depths.values()), "commands": commands,
            "target_dir": str((work / "target").resolve())}


def run_bare(args: argparse.Namespace, target_fa: Path, work: Path, recorded: dict) -> dict:
    """The recorded argv lists, straight through subprocess (same CWD layout as the pipeline)."""
    binary = MMseqs().binary
    MMseqs().version()
    old, new = recorded["target_dir"], str((work / "target").resolve())
    commands = [[[a.replace(old, new) for a in argv] for argv in group] for group in recorded["commands"]]
    queries = read_queries(target_fa)[: args.queries]
    start = time.perf_counter()
    (work / "target").mkdir(parents=True)
    for argv in commands[0]:
        subprocess.run([binary, *argv[1:]], cwd=work / "target", check=True, stdout=subprocess.DEVNULL)
    for i, batch_cmds in enumerate(commands[1:]):
        bdir = work / f"batch-{i:05d}"
        (bdir / "work").mkdir(parents=True)
        batch = queries[i * args.batch_size:(i + 1) * args.batch_size]
        (bdir / "queries.fasta").write_text("".join(f">{j} {q}\n{s}\n" for j, (q, s) in enumerate(batch)))
        for argv in batch_cmds:
            subprocess.run([binary, *argv[1:]], cwd=bdir / "work", check=True, stdout=subprocess.DEVNULL)
    return {"seconds": time.perf_counter() - start}


class _RssSampler(threading.Thread):
    """Peak RSS of this process and of its mmseqs child processes (summed), sampled every 100 ms.

    getrusage's children figure is useless here: a forked child briefly holds the parent's pages."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.me, self.stop, self.self_peak, self.children_peak = psutil.Process(), threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                # only exec'd mmseqs processes: a child caught between fork and exec still holds Python's pages
                kids = sum(c.memory_info().rss for c in self.me.children(recursive=True) if c.name() == "mmseqs")
            except psutil.Error:
                continue
            self.self_peak = max(self.self_peak, self.me.memory_info().rss)
            self.children_peak = max(self.children_peak, kids)


def _child(args: argparse.Namespace) -> None:
    target_fa = Path(args.target_fasta)
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    sampler = _RssSampler()
    sampler.start()
    import pyarrow as pa  # noqa: PLC0415  (warm-up: pyarrow's first pa.array imports pandas, ~1 s once per process)

    pa.array([0])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime   # CPU spent on imports is not the pipeline's
    try:
        if args.mode == "bare":
            out = run_bare(args, target_fa, work, json.loads(Path(args.commands).read_text()))
        else:
            out = run_pipeline(args, target_fa, work, full=args.mode == "full")
    finally:
        sampler.stop.set()
        shutil.rmtree(work, ignore_errors=True)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_self_s"] = me.ru_utime + me.ru_stime - cpu0
    out["cpu_children_s"] = kids.ru_utime + kids.ru_stime
    out["rss_self_mb"] = me.ru_maxrss / 1024
    out["rss_children_mb"] = sampler.children_peak / 2 ** 20
    print(json.dumps(out))


def _spawn(args: argparse.Namespace, mode: str, target_fa: Path, commands_file: Path) -> dict:
    argv = [sys.executable, __file__, "--mode", mode, "--target-fasta", str(target_fa), "--commands",
            str(commands_file), "--workdir", str(args.workdir)]
    for k in ("queries", "batch_size", "threads", "iterations", "prefilter_mode"):
        argv += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3, help="search --num-iterations (ColabFold 3)")
    ap.add_argument("--prefilter-mode", type=int, default=0, help="0 k-mer (ColabFold), 1 ungapped, 2 none")
    ap.add_argument("--targets", default="trembl", help="'trembl' or 'generated:N'")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--mode", choices=["bare", "build", "full"], help=argparse.SUPPRESS)
    ap.add_argument("--target-fasta", help=argparse.SUPPRESS)
    ap.add_argument("--commands", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return _child(args)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="msa-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.targets == "trembl":
        target_fa = TREMBL
    else:
        target_fa = args.workdir / "targets.fa"
        generate_targets(target_fa, int(args.targets.split(":")[1]))
    commands_file = args.workdir / "commands.json"
    runs: dict[str, list[dict]] = {"bare": [], "build": [], "full": []}
    first = _spawn(args, "full", target_fa, commands_file)   # warm-up; records the argv lists for bare
    commands_file.write_text(json.dumps({k: first[k] for k in ("commands", "target_dir")}))
    order = ["bare", "build", "full"]
    for i in range(args.repeats):
        for mode in order[i % 3:] + order[:i % 3]:   # rotate the order so no mode always follows another
            runs[mode].append(_spawn(args, mode, target_fa, commands_file))
    _report(args, first, runs)


def _report(args: argparse.Namespace, first: dict, runs: dict[str, list[dict]]) -> None:
    bare = statistics.median(r["seconds"] for r in runs["bare"])
    print(f"\n{first['msas']} queries vs {args.targets} targets, batch {args.batch_size}, {args.threads} threads, "
          f"{args.iterations} iterations, prefilter-mode {args.prefilter_mode}, mean depth {first['depth_mean']:.1f}, "
          f"median of {args.repeats}, {os.cpu_count()} CPUs\n")
    bare_cpu = statistics.median(r["cpu_self_s"] + r["cpu_children_s"] for r in runs["bare"])
    print("| mode | wall s | MSAs/min | wall overhead | CPU s (python + mmseqs) | CPU overhead "
          "| peak RSS python MB | peak RSS mmseqs MB |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        py = statistics.median(r["cpu_self_s"] for r in rs)
        cpu = statistics.median(r["cpu_self_s"] + r["cpu_children_s"] for r in rs)
        over = "-" if mode == "bare" else f"{100 * (sec - bare) / bare:+.1f}%"
        cpu_over = "-" if mode == "bare" else f"{100 * (cpu - bare_cpu) / bare_cpu:+.1f}%"
        print(f"| {mode} | {sec:.2f} | {60 * first['msas'] / sec:.0f} | {over} | {cpu:.2f} ({py:.2f} + "
              f"{cpu - py:.2f}) | {cpu_over} | {max(r['rss_self_mb'] for r in rs):.0f} | "
              f"{max(r['rss_children_mb'] for r in rs):.0f} |")
    print("\nwall s per run: " + "; ".join(f"{m} " + ", ".join(f"{r['seconds']:.1f}" for r in rs)
                                          for m, rs in runs.items()))
    print("\nPython-side time per run (wall outside the mmseqs calls, same run, so machine load cancels):")
    for mode in ("build", "full"):
        own = [r["seconds"] - r["mmseqs_seconds"] for r in runs[mode]]
        share = [100 * o / r["mmseqs_seconds"] for o, r in zip(own, runs[mode], strict=False)]
        print(f"- {mode}: {statistics.median(own):.2f} s = {statistics.median(share):.1f}% of the mmseqs time")


if __name__ == "__main__":
    main()
