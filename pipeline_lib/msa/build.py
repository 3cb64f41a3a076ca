"""Build A3M MSAs with MMseqs2, one query batch at a time; a finished batch is never recomputed.

    target = prepare_target("targets.fasta", "work/msa/target", cfg)        # createdb once
    for i, batch in enumerate(iter_query_batches(read_queries("queries.fasta"), cfg)):
        res = build_msa_batch(batch, target, f"work/msa/batch-{i:05d}", cfg, threads=cfg.threads)
        for msa in res.read_msas(): ...

A batch directory holds ``queries.fasta``, ``a3m/<query id>.a3m`` (query first, header = the query id,
hits with mmseqs headers), ``mmseqs.log`` and the completion marker ``_SUCCESS.json`` (key, argv lists,
mmseqs version, depths). It is written under a temporary name and renamed (``atomic_dir``); a rerun
with the same key (queries, target fingerprint, search parameters, mmseqs version) returns the
recorded result without running mmseqs. The commands run with the work dir as CWD, so the recorded
argv lists name intermediates by relative paths and stay the same from run to run.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_dir, atomic_path, stable_hash
from pipeline_lib.msa.a3m import Msa, parse_a3m, read_a3m
from pipeline_lib.msa.commands import A3M_DIR, TargetDb, is_mmseqs_db, msa_commands, target_commands
from pipeline_lib.msa.config import MsaConfig
from pipeline_lib.progress import Progress
from pipeline_lib.stage_cache import MARKER, claim, read_marker, write_marker
from pipeline_lib.stage_code import module_closure
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["BatchResult", "build_msa_batch", "build_msas", "prepare_target", "iter_query_batches",
           "read_queries", "write_target_fasta", "MARKER"]

Query = tuple[str, str]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchResult:
    """What one batch produced, with everything lineage needs (argv lists, tool version, key)."""

    batch_dir: Path
    key: str
    query_ids: tuple[str, ...]
    a3m_files: dict[str, str]          # query id -> file name under batch_dir/a3m
    depths: dict[str, int]             # query id -> rows, query included
    commands: list[list[str]]
    mmseqs_version: str
    seconds: float
    reused: bool = field(default=False, compare=False)

    def a3m_path(self, query_id: str) -> Path:
        return self.batch_dir / "a3m" / self.a3m_files[query_id]

    def read_msas(self) -> Iterator[Msa]:
        """Parse the batch's A3M files, in query order. ``source`` is ``<batch>/<file>``, not the absolute path:
        the same MSAs built under another workdir give the same ``msas.parquet`` bytes."""
        for qid in self.query_ids:
            path = self.a3m_path(qid)
            msa = read_a3m(path, query_id=qid)
            yield dataclasses.replace(msa, source=str(path.relative_to(self.batch_dir.parent)))

    def record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["batch_dir"] = str(self.batch_dir)
        rec["query_ids"] = list(self.query_ids)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], batch_dir: Path, *, reused: bool) -> BatchResult:
        return cls(batch_dir, rec["key"], tuple(rec["query_ids"]), rec["a3m_files"], rec["depths"],
                   rec["commands"], rec["mmseqs_version"], rec["seconds"], reused)


def read_queries(fasta: str | os.PathLike[str]) -> list[Query]:
    """(id, sequence) pairs of a FASTA file; the id is the header's first word."""
    from pipeline_lib.sequences.fasta import read_fasta  # noqa: PLC0415

    out = []
    for rec in read_fasta(fasta):
        if not rec.header or not rec.header.split():
            raise DataValidationError("record without a header id", path=str(fasta), record=rec.index)
        out.append((rec.header.split()[0], rec.sequence))
    return out


def iter_query_batches(queries: Iterable[Query], cfg: MsaConfig) -> Iterator[list[Query]]:
    """Batches of ``cfg.batch_size`` queries, at most ``cfg.max_queries`` in all."""
    it = iter(queries) if cfg.max_queries is None else islice(queries, cfg.max_queries)
    while batch := list(islice(it, cfg.batch_size)):
        yield batch


def write_target_fasta(sequences_parquet: str | os.PathLike[str], out_fasta: str | os.PathLike[str]) -> int:
    """Write the ingested sequences (``id``, ``sequence`` columns) as a target FASTA; returns the count."""
    n = 0
    with atomic_path(out_fasta) as tmp, open(tmp, "w") as fh:
        for batch in pq.ParquetFile(sequences_parquet).iter_batches(65536, columns=["id", "sequence"]):
            ids, seqs = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            fh.write("".join(f">{i}\n{s}\n" for i, s in zip(ids, seqs, strict=False)))
            n += len(ids)
    return n


def _file_fingerprint(p: Path) -> list[object]:
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def prepare_target(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: MsaConfig,
                   threads: int | None = None) -> TargetDb:
    """An mmseqs DB is used as it is; a FASTA becomes ``<out_dir>/db`` (plus ``db_rep``/``db_aln`` when
    ``cfg.expand.enabled``), built once: a rerun with the same input and parameters reuses it."""
    src = Path(source).resolve()
    if is_mmseqs_db(src):
        return TargetDb.from_db(src, expand=cfg.expand.enabled)
    if not src.is_file():
        raise DataValidationError("target is neither an mmseqs DB (<path>.dbtype) nor a FASTA file", path=str(src))
    out = Path(out_dir).resolve()
    tool = MMseqs(binary=cfg.binary, threads=threads or cfg.threads)
    target = (TargetDb(out / "db_rep", out / "db", out / "db_aln") if cfg.expand.enabled
              else TargetDb(out / "db", out / "db"))
    key = stable_hash({"fasta": _file_fingerprint(src), "mmseqs": tool.version(),
                       "expand": cfg.expand.model_dump(mode="json") if cfg.expand.enabled else None})
    with claim(out, note=f"msa target {out.name}"):
        done = read_marker(out)
        if done is not None and done.get("key") == key:
            return target
        cmds = target_commands(src, Path("db"), Path("."), cfg, tool.threads)
        with atomic_dir(out) as tmp:
            for argv in cmds:
                tool.run(*argv[1:], cwd=tmp, log_file=tmp / "mmseqs.log")
            shutil.rmtree(tmp / "tmp_linclust", ignore_errors=True)
            write_marker(tmp, out, {"key": key, "commands": cmds, "mmseqs_version": tool.version()})
    return target


def _validate_queries(batch: Sequence[Query]) -> list[Query]:
    if not batch:
        raise DataValidationError("empty query batch")
    seen: set[str] = set()
    for i, (qid, seq) in enumerate(batch):
        if not qid or any(c.isspace() for c in qid) or qid in seen:
            raise DataValidationError(f"query id {qid!r} is empty, has whitespace or is duplicated", record=i)
        if not seq or not seq.isalpha():
            raise DataValidationError(f"query {qid!r}: sequence must be non-empty letters", record=i)
        seen.add(qid)
    return [(qid, seq.upper()) for qid, seq in batch]


def _resolve_target(target_db: TargetDb | str | os.PathLike[str], cfg: MsaConfig) -> TargetDb | Path:
    """A TargetDb with absolute paths, or the path of a FASTA to build inside the batch."""
    if isinstance(target_db, TargetDb):
        return TargetDb(Path(target_db.search_db).resolve(), Path(target_db.seq_db).resolve(),
                        Path(target_db.aln_db).resolve() if target_db.aln_db is not None else None)
    p = Path(target_db).resolve()
    if is_mmseqs_db(p):
        return TargetDb.from_db(p, expand=cfg.expand.enabled)
    if p.is_file():
        return p
    raise DataValidationError("target is neither an mmseqs DB (<path>.dbtype) nor a FASTA file", path=str(p))


def _batch_key(queries: list[Query], target: TargetDb | Path, cfg: MsaConfig, version: str) -> str:
    """Queries, target, search parameters, mmseqs version and the code that builds a batch (this module and what
    it imports, by syntax tree: pipeline_lib/stage_code.py), as batches live at fixed paths across code edits."""
    fp = target.fingerprint() if isinstance(target, TargetDb) else _file_fingerprint(target)
    params = cfg.model_dump(mode="json", include={"search", "expand", "filterresult", "result2msa"})
    return stable_hash({"queries": queries, "target": fp, "params": params, "mmseqs": version,
                        "code": module_closure({__name__})})


def _chain(queries: list[Query], target: TargetDb | Path, cfg: MsaConfig, threads: int) -> list[list[str]]:
    cmds = [["mmseqs", "createdb", "../queries.fasta", "qdb", "-v", "1"]]
    if isinstance(target, Path):  # a FASTA: a private target DB inside the work dir
        cmds += target_commands(target, Path("target"), Path("."), cfg, threads)
        target = (TargetDb(Path("target_rep"), Path("target"), Path("target_aln")) if cfg.expand.enabled
                  else TargetDb(Path("target"), Path("target")))
    return cmds + msa_commands(Path("qdb"), target, Path("."), cfg, threads)


def _with_query_header(text: str, qid: str, seq: str) -> str:
    """The A3M with its first header replaced by the query id (mmseqs shortens UniProt-style names)."""
    if not text.strip():
        return f">{qid}\n{seq}\n"
    lines = text.lstrip("\n").split("\n")
    lines[0] = f">{qid}"
    return "\n".join(lines)


def _collect(queries: list[Query], work: Path, a3m_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Rename unpackdb's ``<key>.a3m`` files to query ids, validating each by parsing it."""
    key_of = {}
    for line in (work / "qdb.lookup").read_text().splitlines():
        key, name = line.split("\t")[:2]
        key_of[int(name)] = key
    a3m_dir.mkdir()
    files: dict[str, str] = {}
    depths: dict[str, int] = {}
    for i, (qid, seq) in enumerate(queries):
        raw = work / A3M_DIR / f"{key_of[i]}.a3m"
        text = _with_query_header(raw.read_text() if raw.is_file() else "", qid, seq)
        name = _UNSAFE.sub("_", qid)[:120] + ".a3m"
        if name in files.values():
            name = f"{name[:-4]}-{i}.a3m"
        msa = parse_a3m(text, source=f"{qid} ({raw.name})", query_id=qid)
        (a3m_dir / name).write_text(text)
        files[qid], depths[qid] = name, msa.depth
    return files, depths


def build_msa_batch(batch_queries: Sequence[Query], target_db: TargetDb | str | os.PathLike[str],
                    out_dir: str | os.PathLike[str], cfg: MsaConfig, threads: int | None = None) -> BatchResult:
    """Build one A3M per query of the batch into ``out_dir`` (atomic, with a completion marker).

    ``target_db``: a :class:`TargetDb` from :func:`prepare_target` (best: built once), an mmseqs DB path,
    or a FASTA path (its DB is then built inside this batch). Returns the recorded result at once when
    ``out_dir`` already holds a finished batch with the same key.
    """
    queries = _validate_queries(batch_queries)
    tool = MMseqs(binary=cfg.binary, threads=threads or cfg.threads)
    out = Path(out_dir).resolve()
    target = _resolve_target(target_db, cfg)
    version = tool.version()
    key = _batch_key(queries, target, cfg, version)
    # One builder per batch directory: a concurrent run waits, then reuses the batch; what a killed run left
    # (``batch-N.tmp-<pid>-<rand>``) is removed under the lock (pipeline_lib/stage_cache.py).
    with claim(out, note=f"msa batch {out.name}"):
        rec = read_marker(out)
        if rec is not None and rec.get("key") == key:
            return BatchResult.from_record(rec, out, reused=True)
        return _build_batch(queries, tool, target, out, key, version, cfg)


def _build_batch(queries: list[Query], tool: MMseqs, target: TargetDb | Path, out: Path, key: str, version: str,
                 cfg: MsaConfig) -> BatchResult:
    start = time.perf_counter()
    cmds = _chain(queries, target, cfg, tool.threads)
    with atomic_dir(out) as tmp:
        work = tmp / "work"
        work.mkdir()
        (tmp / "queries.fasta").write_text("".join(f">{i} {q}\n{s}\n" for i, (q, s) in enumerate(queries)))
        # one line (and, under the tasks layer, one progress artifact update) per mmseqs command of the chain
        with Progress(f"msa {out.name}", total=len(cmds), unit="commands", every_s=0) as prog:
            for argv in cmds:
                tool.run(*argv[1:], cwd=work, log_file=tmp / "mmseqs.log")
                prog.update()
        files, depths = _collect(queries, work, tmp / "a3m")
        shutil.rmtree(work)
        result = BatchResult(out, key, tuple(q for q, _ in queries), files, depths, cmds, version,
                             round(time.perf_counter() - start, 3))
        write_marker(tmp, out, result.record())
    return result


def build_msas(queries: Iterable[Query], target_db: TargetDb | str | os.PathLike[str],
               out_dir: str | os.PathLike[str], cfg: MsaConfig, threads: int | None = None) -> list[BatchResult]:
    """Every batch in turn into ``<out_dir>/batch-NNNNN`` (the sequential driver; flows run batches as tasks)."""
    return [build_msa_batch(batch, target_db, Path(out_dir) / f"batch-{i:05d}", cfg, threads)
            for i, batch in enumerate(iter_query_batches(queries, cfg))]
