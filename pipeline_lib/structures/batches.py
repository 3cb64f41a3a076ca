"""Structure batches: the structures stage's inputs listed up front as ordered work units, grouped in batches
that parse and encode independently (one task each on the task runner), then merged in order.

    batches = plan_batches(cfg, accessions=["P69905", ...])     # StructureBatch each, in source order
    result = run_batch(batches[0], cfg, backend="mini3di", download_dir=Path("work/downloads"))
    stats = write_batch(result, out_dir)                       # chains.parquet + tally.parquet (+ stats)
    merged = merge_batches([read_batch(out_dir, stats), ...])  # first source wins, as in one pass

A work unit is a structure file (``directory``: its sorted file list; ``embedded``), an accession
(``afdb``: downloaded by the batch that holds it), an archive (``archive``: members are read in stream
order, so one archive is one unit) or a whole database (``foldcomp``). A batch holds at most
``cfg.task_batch_size`` units of one source. Merging batch results in batch order gives exactly what one
pass over the sources gives: the same structures (the first source, then the first file, wins a key), the
same file tally and the same quarantine order.
"""
from __future__ import annotations

import importlib.metadata
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.progress import Progress
from pipeline_lib.structures.config import StructuresConfig, StructureSource
from pipeline_lib.structures.parse import StructureBlob, StructureTooLarge, check_structure_size
from pipeline_lib.structures.saprot import StructureRecord, parse_afdb_name, structure_records
from pipeline_lib.structures.sources import (
    UNSUPPORTED_FORMATS,
    SourceStats,
    afdb_models,
    describe_skipped,
    iter_archive,
    iter_directory,
    iter_foldcomp,
)
from pipeline_lib.structures.threedi import Backend, EncodedChain, EncodeStats, encode_structures

__all__ = ["FileTally", "StructureBatch", "BatchResult", "CHAINS_SCHEMA", "TALLY_SCHEMA", "plan_batches",
           "run_batch", "merge_batches", "write_batch", "read_batch", "with_plddt_policy"]

log = logging.getLogger(__name__)

CHAINS_SCHEMA = pa.schema([("key", pa.string()), ("name", pa.string()), ("aa", pa.string()),
                           ("threedi", pa.string()), ("mean_plddt", pa.float64()), ("source", pa.string()),
                           ("version", pa.string()), ("file", pa.string())])  # one StructureRecord a row
# one row per file that is too large, unreadable (to the encoder or its source) or encoded
TALLY_SCHEMA = pa.schema([("kind", pa.string()), ("file", pa.string()), ("reason", pa.string())])


@dataclass
class FileTally:
    """Structure files by outcome; ``files_in`` equals the sum of the other three once the stage is done."""

    files_in: int = 0
    too_large: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    encoded: set[str] = field(default_factory=set)  # files with at least one encoded chain


@dataclass(frozen=True)
class StructureBatch:
    """``units`` of ``cfg.sources[source_index]``; ``label`` names its progress bar."""

    index: int
    source_index: int
    source: StructureSource
    units: tuple[str, ...]
    label: str


@dataclass
class BatchResult:
    records: dict[str, StructureRecord] = field(default_factory=dict)
    tally: FileTally = field(default_factory=FileTally)
    encode: EncodeStats = field(default_factory=EncodeStats)
    source: SourceStats = field(default_factory=SourceStats)


def _units(src: StructureSource, accessions: list[str]) -> list[str]:
    if src.kind == "directory":
        skipped: Counter[str] = Counter()
        files = [str(p) for p in iter_directory(src.path, recursive=src.recursive, patterns=src.patterns,
                                                skipped=skipped)]
        unsupported = {k for k in skipped if k in UNSUPPORTED_FORMATS}
        if not files or unsupported:
            log.warning("structure source %s: %d structure files (patterns %s); skipped %s", src.path, len(files),
                        ", ".join(src.patterns), describe_skipped(skipped) or "nothing")
        return files
    if src.kind == "archive":
        return list(src.paths)
    if src.kind == "afdb":
        return list(dict.fromkeys(src.accessions or accessions))  # unique, order kept
    if src.kind == "foldcomp":
        return [src.path]
    from pipeline_lib.sources.embedded import embedded_structures  # noqa: PLC0415

    return [str(f.path) for f in embedded_structures(src.corpus)]


def plan_batches(cfg: StructuresConfig, *, accessions: list[str]) -> list[StructureBatch]:
    """Every source's work units, in source order, in batches of ``cfg.task_batch_size`` units of one source."""
    batches: list[StructureBatch] = []
    for i, src in enumerate(cfg.sources):
        label = f"structures {src.kind}" + (f" {i}" if len(cfg.sources) > 1 else "")
        units = _units(src, accessions)
        size = cfg.task_batch_size
        chunks = [tuple(units[j:j + size]) for j in range(0, len(units), size)]
        for j, chunk in enumerate(chunks):
            batches.append(StructureBatch(len(batches), i, src, chunk,
                                          label + (f" batch {j:05d}" if len(chunks) > 1 else "")))
    return batches


def _inputs(batch: StructureBatch, download_dir: Path, stats: SourceStats,
            max_file_bytes: int | None = None) -> Iterator[Path | StructureBlob]:
    src = batch.source
    if src.kind == "archive":
        # a member over the structure size limit is refused from its header, before a byte of it is read: read
        # whole and refused afterwards, a 300 MB member of zeros in a small .tar.gz cost 550 MB of memory
        limit = min(src.max_member_bytes, max_file_bytes or src.max_member_bytes)
        for path in batch.units:
            yield from iter_archive(path, stats=stats, max_member_bytes=limit)
    elif src.kind == "afdb":
        yield from (m.path for m in afdb_models(batch.units, download_dir / "afdb", src, stats=stats))
    elif src.kind == "foldcomp":
        yield from iter_foldcomp(src.path, src.ids)
    else:  # directory, embedded: the files themselves
        yield from (Path(u) for u in batch.units)


def _within_limits(items: Iterator[Path | StructureBlob], cfg: StructuresConfig,
                   tally: FileTally) -> Iterator[Path | StructureBlob]:
    """Count every input file; hold back those over the size limits (streamed check, bounded memory)."""
    for item in items:
        tally.files_in += 1
        try:
            check_structure_size(item, max_bytes=cfg.max_file_bytes, max_atoms=cfg.max_atoms)
        except StructureTooLarge as exc:
            log.warning("%s", exc)
            tally.too_large.append((exc.path or "", exc.reason))
            continue
        yield item


def _noting_files(chains: Iterator[EncodedChain], tally: FileTally) -> Iterator[EncodedChain]:
    for ch in chains:
        tally.encoded.add(ch.source)
        yield ch


def _source_version(src: StructureSource) -> str | None:
    if src.kind == "embedded":
        return f"pyjess {importlib.metadata.version('pyjess')}"
    if src.kind == "foldcomp":
        return Path(src.path).name
    return None  # afdb: the model version comes from each file name


def with_plddt_policy(chains: Iterable[EncodedChain], kind: str, policy: str) -> Iterator[EncodedChain]:
    """Drop the per-residue values of chains whose B-factor column is not pLDDT (no masking for them).

    ``auto``: AlphaFold DB / Foldcomp sources, ``AF-`` names and files whose content marks a predicted model."""
    predicted_source = kind in ("afdb", "foldcomp")
    for ch in chains:
        is_plddt = policy == "always" or (policy == "auto" and (predicted_source or ch.predicted
                                                               or parse_afdb_name(ch.name) is not None))
        yield ch if is_plddt else ch._replace(plddt=None)


def run_batch(batch: StructureBatch, cfg: StructuresConfig, *, backend: str, download_dir: Path,
              workers: int = 1) -> BatchResult:
    """Fetch / read, size-check, parse and encode one batch; ``workers`` encoding processes (1: this one)."""
    res = BatchResult()
    src = batch.source
    inputs = _within_limits(_inputs(batch, download_dir, res.source, cfg.max_file_bytes), cfg, res.tally)
    with Progress(batch.label, unit="files") as prog:
        chains = encode_structures(inputs, backend=cast(Backend, backend), threads=cfg.threads, workers=workers,
                                   batch_size=cfg.batch_size, foldseek_binary=cfg.foldseek_binary,
                                   altloc=cfg.altloc, stats=res.encode, progress=prog)
        chains = with_plddt_policy(_noting_files(chains, res.tally), src.kind, cfg.plddt_in_bfactor)
        res.records = structure_records(chains, source=src.kind, version=_source_version(src),
                                        threshold=cfg.plddt_threshold)
    log.info("%s: %d units, %d chains", batch.label, len(batch.units), len(res.records))
    return res


def merge_batches(results: Iterable[BatchResult]) -> BatchResult:
    """Results in batch order as one: the first batch with a structure for a key wins."""
    out = BatchResult()
    for res in results:
        for key, rec in res.records.items():
            out.records.setdefault(key, rec)
        out.tally.files_in += res.tally.files_in
        out.tally.too_large.extend(res.tally.too_large)
        out.tally.encoded.update(res.tally.encoded)
        out.encode.merge(res.encode)
        out.source.merge(res.source)
    return out


def write_batch(res: BatchResult, out_dir: Path) -> dict[str, Any]:
    """``chains.parquet`` and ``tally.parquet`` in ``out_dir``; returns the counts :func:`read_batch` needs."""
    pq.write_table(pa.Table.from_pylist([asdict(r) for r in res.records.values()], schema=CHAINS_SCHEMA),
                   out_dir / "chains.parquet")
    rows: list[dict[str, str | None]] = [{"kind": kind, "file": f, "reason": why}
            for kind, pairs in (("too_large", res.tally.too_large), ("unreadable", res.encode.failures),
                                ("source_failure", res.source.failures)) for f, why in pairs]
    rows += [{"kind": "encoded", "file": f, "reason": None} for f in sorted(res.tally.encoded)]
    pq.write_table(pa.Table.from_pylist(rows, schema=TALLY_SCHEMA), out_dir / "tally.parquet")
    e, s = res.encode, res.source
    return {"structures": len(res.records), "files_in": res.tally.files_in, "files_encoded": len(res.tally.encoded),
            "encode": {"files": e.files, "chains": e.chains, "residues": e.residues, "skipped": dict(e.skipped)},
            "source": {"refused": dict(s.refused), "skipped": dict(s.skipped), "afdb": dict(s.afdb),
                       "yielded": s.yielded}}


def read_batch(out_dir: Path, stats: dict[str, Any]) -> BatchResult:
    """The :class:`BatchResult` that :func:`write_batch` wrote to ``out_dir`` (with the counts it returned)."""
    res = BatchResult()
    for row in pq.read_table(out_dir / "chains.parquet").to_pylist():
        res.records[row["key"]] = StructureRecord(**row)
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for row in pq.read_table(out_dir / "tally.parquet").to_pylist():
        by_kind.setdefault(row["kind"], []).append((row["file"], row["reason"]))
    res.tally = FileTally(stats["files_in"], by_kind.get("too_large", []), {f for f, _ in by_kind.get("encoded", [])})
    e, s = stats["encode"], stats["source"]
    res.encode = EncodeStats(e["files"], e["chains"], e["residues"], Counter(e["skipped"]),
                             by_kind.get("unreadable", []))
    res.source = SourceStats(Counter(s["refused"]), Counter(s["skipped"]), Counter(s["afdb"]),
                             by_kind.get("source_failure", []), s["yielded"])
    return res
