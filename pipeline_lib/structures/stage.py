"""The structures stage: structure sources -> 3Di -> pLDDT-masked SaProt token shards, split like the
sequence shards.

    result = build_structure_shards(sequences, clusters, splits, out_dir, cfg.structures,
                                    levels=["c90", "c50"], shards_cfg=cfg.shards, download_dir=workdir / "downloads")

    found = merge_batches(read_batch(d, stats) for d, stats in batch_outputs)   # the batches of tasks/structures.py
    result = write_structure_shards(found, sequences, clusters, splits, out_dir, cfg.structures, ...)

The inputs are planned and encoded in batches (:mod:`pipeline_lib.structures.batches`, one task each in the
flows); :func:`build_structure_shards` runs them all in this process.

Every ingested sequence gets a row: with its structure's masked 3Di letters when one joins (by UniProt
accession, or chain name ``<file stem>_<chain>``), else ``#`` for every residue (SaProt's convention).
A structure whose modelled sequence differs from the database sequence is quarantined (or aligned).

Structure files are accounted for one by one: ``files_in = files_encoded + files_quarantined +
files_without_usable_chain``. Files over ``max_file_bytes`` / ``max_atoms`` are quarantined
(``structure_too_large``) before parsing; unreadable ones (empty, binary, truncated, no CA atom) as
``unreadable_structure``, each with the reason naming the file. ``backend: foldseek`` without a usable
binary is an error; so is ``auto`` with a configured binary (``foldseek_binary`` or ``$PLM_FOLDSEEK``)
that is missing. Only ``auto`` with nothing configured falls back to mini3di when foldseek is not on PATH.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_path, duckdb_connect, sha256_file, sql_path, sql_str, write_json_atomic
from pipeline_lib.sequences.config import ShardsConfig
from pipeline_lib.structures.batches import (
    BatchResult,
    FileTally,
    merge_batches,
    plan_batches,
    run_batch,
    with_plddt_policy,
)
from pipeline_lib.structures.config import StructuresConfig
from pipeline_lib.structures.saprot import saprot_rows
from pipeline_lib.structures.threedi import encode_structures, resolve_backend
from pipeline_lib.tokenizer import SAPROT_ALPHABET

__all__ = ["StructureStageResult", "FileTally", "collect_structures", "build_structure_shards", "backend_version",
           "write_structure_shards", "ingested_accessions", "threedi_of_structure", "check_saprot_coverage"]

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


@dataclass
class StructureStageResult:
    manifest: dict[str, Any]
    quarantine: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def backend_version(cfg: StructuresConfig) -> tuple[str, str]:
    """(backend name, its version) as used for this config; :class:`ToolError` when foldseek is required
    (``backend: foldseek``, or ``auto`` with a binary configured) but missing or broken."""
    from pipeline_lib.tools.foldseek import Foldseek, find_foldseek

    if cfg.backend == "auto" and (cfg.foldseek_binary or os.environ.get("PLM_FOLDSEEK")):
        find_foldseek(cfg.foldseek_binary)  # configured but missing: an error, never a silent fallback
    backend = resolve_backend(cfg.backend, cfg.foldseek_binary)
    if backend == "foldseek":
        return backend, Foldseek(binary=cfg.foldseek_binary).version()
    return backend, importlib.metadata.version("mini3di")


def collect_structures(cfg: StructuresConfig, *, accessions: list[str], download_dir: Path,
                       workers: int | None = None) -> BatchResult:
    """Encode every configured source in this process, batch after batch (:mod:`.batches`); the first
    source that has a structure for a key wins. ``workers``: encoding processes (default ``cfg.workers``).

    Each batch reports its files through a :class:`Progress` labelled ``structures <kind>`` (``structures
    <kind> <i>`` when there are several sources, `` batch NNNNN`` when a source has several batches).
    """
    backend = backend_version(cfg)[0]
    return merge_batches(run_batch(b, cfg, backend=backend, download_dir=download_dir,
                                   workers=cfg.workers if workers is None else workers)
                         for b in plan_batches(cfg, accessions=accessions))


def ingested_accessions(sequences: Path) -> list[str]:
    """The distinct UniProt accessions of the ingested sequences (what an ``afdb`` source fetches by default)."""
    accessions = pq.read_table(sequences, columns=["accession"]).column(0).to_pylist()
    return sorted(set(a for a in accessions if a))


def _split_batches(sequences: Path, clusters: Path, splits: Path, split: str, levels: list[str]):
    cl = ", ".join(f"c.cluster_{lv}" for lv in levels)
    con = duckdb_connect()
    try:
        reader = con.sql(f"""SELECT s.id, s.accession, s.seq_hash, s.sequence, {cl}
            FROM read_parquet({sql_path(sequences)}) s JOIN read_parquet({sql_path(clusters)}) c USING (id)
            JOIN read_parquet({sql_path(splits)}) p USING (id) WHERE p.split = {sql_str(split)}
            ORDER BY s.seq_hash""").to_arrow_reader(8192)
        for batch in reader:
            yield batch.to_pylist()
    finally:
        con.close()


def _write_split(tables: Iterator[pa.Table], split_dir: Path, shards_cfg: ShardsConfig) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    pending: list[pa.Table] = []
    rows = 0

    def flush() -> None:
        nonlocal pending, rows
        if not pending:
            return
        table = pa.concat_tables(pending)
        final = split_dir / f"part-{len(files):05d}.parquet"
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp, compression="zstd", row_group_size=shards_cfg.row_group_rows)
        tokens = int(pa.compute.sum(pa.compute.list_value_length(table.column("sa_tokens"))).as_py() or 0)
        files.append({"path": f"{split_dir.name}/{final.name}", "rows": table.num_rows, "tokens": tokens,
                      "bytes": final.stat().st_size, "sha256": sha256_file(final)})
        pending, rows = [], 0

    split_dir.mkdir(parents=True, exist_ok=True)
    for table in tables:
        while table.num_rows:
            take = min(table.num_rows, shards_cfg.rows_per_shard - rows)
            pending.append(table.slice(0, take))
            rows += take
            table = table.slice(take)
            if rows >= shards_cfg.rows_per_shard:
                flush()
    flush()
    return files


def build_structure_shards(sequences: Path, clusters: Path, splits: Path, out_dir: Path, cfg: StructuresConfig, *,
                           levels: list[str], shards_cfg: ShardsConfig, download_dir: Path) -> StructureStageResult:
    """The whole stage in this process: every batch, merged, joined with the sequences and written."""
    backend_version(cfg)  # before any work: a missing foldseek fails fast
    found = collect_structures(cfg, accessions=ingested_accessions(sequences), download_dir=download_dir)
    return write_structure_shards(found, sequences, clusters, splits, out_dir, cfg, levels=levels,
                                  shards_cfg=shards_cfg)


def _describe(src: Any) -> str:
    where = getattr(src, "path", None) or getattr(src, "paths", None) or getattr(src, "corpus", None) or ""
    return f"{src.kind} {where}".strip()


def _warn_low_coverage(with_structure: int, rows: int, coverage: dict[str, float | None],
                       cfg: StructuresConfig) -> None:
    share = with_structure / rows if rows else 0.0
    if share < cfg.min_coverage:
        shown = ", ".join(f"{k} {v:.1%}" for k, v in coverage.items() if v is not None)
        log.warning("LOW STRUCTURE COVERAGE: %d of %d rows (%.2f%%) have a structure (%s), below "
                    "structures.min_coverage %.0f%%; SaProt reads '#' for every residue of the others. Sources: %s",
                    with_structure, rows, 100 * share, shown, 100 * cfg.min_coverage,
                    "; ".join(_describe(s) for s in cfg.sources))


def check_saprot_coverage(manifest: dict[str, Any], split: str = "train") -> None:
    """Refuse SaProt training on structure shards whose ``split`` has no row with a structure: every 3Di token
    would be '#' (no structure signal at all). Names the sources and what they matched."""
    info = manifest.get("splits", {}).get(split, {})
    if "rows_with_structure" not in info or info["rows_with_structure"] > 0:
        return
    total = {k: v.get("rows_with_structure", 0) for k, v in manifest["splits"].items()}
    raise DataValidationError(
        f"SaProt training on the {split!r} split, where none of the {info.get('rows', 0)} rows has a structure: "
        "every 3Di token would be '#'. The structure sources "
        f"({'; '.join(manifest.get('structure_sources', [])) or 'none'}) gave {manifest.get('structures', 0)} "
        f"structures, matching rows by split: {total}. Structures join sequences by UniProt accession (AlphaFold "
        "DB names) or by chain name; check that the sources hold this data's proteins")


def _quarantined_files(found: BatchResult) -> list[dict[str, Any]]:
    """Structure files that cannot be used, kept with the reason."""
    return [{"stage": "structures", "source_file": f, "source_record": None, "id": None, "reason": reason,
             "detail": why, "raw": None}
            for reason, failures in (("structure_too_large", found.tally.too_large),
                                     ("unreadable_structure", [*found.encode.failures, *found.source.failures]))
            for f, why in failures]


def write_structure_shards(found: BatchResult, sequences: Path, clusters: Path, splits: Path, out_dir: Path,
                           cfg: StructuresConfig, *, levels: list[str],
                           shards_cfg: ShardsConfig) -> StructureStageResult:
    """Join the merged batches' structures with the sequences; SaProt shards split like the sequence shards.
    No structure from any source is an error: SaProt would train on '#' tokens only, and say nothing."""
    backend, version = backend_version(cfg)
    records, tally, enc_stats, src_stats = found.records, found.tally, found.encode, found.source
    if not records:
        where = "; ".join(_describe(s) for s in cfg.sources)
        raise DataValidationError(
            f"the structure sources gave no structure ({where}): {tally.files_in} files read, "
            f"{len(tally.too_large)} too large, refused {dict(src_stats.refused)}, skipped {dict(src_stats.skipped)}"
            f", AlphaFold DB {dict(src_stats.afdb)}; check the paths and patterns (the log lists what a folder "
            "held), or disable the structures stage")
    schema = schemas.structure_shard_schema(levels)
    quarantine = _quarantined_files(found)
    manifest: dict[str, Any] = {
        "schema_version": schemas.SCHEMA_VERSION, "kind": "structure", "columns": schema.names,
        "vocabulary": {"name": SAPROT_ALPHABET.name, "tokens": list(SAPROT_ALPHABET.tokens)},
        "sequence_vocabulary": "esm2", "tokens_include_special": True, "cluster_levels": levels,
        "plddt_threshold": cfg.plddt_threshold, "threedi_backend": {"name": backend, "version": version},
        "splits": {},
    }
    with_structure: dict[str, int] = dict.fromkeys(SPLITS, 0)

    def tables(split: str) -> Iterator[pa.Table]:
        for rows in _split_batches(sequences, clusters, splits, split, levels):
            table, bad = saprot_rows(rows, records, levels=levels, on_mismatch=cfg.on_mismatch,
                                     min_identity=cfg.align_min_identity)
            quarantine.extend(bad)
            with_structure[split] += sum(1 for s in table.column("structure_source").to_pylist() if s)
            yield table

    for split in SPLITS:
        files = _write_split(tables(split), out_dir / split, shards_cfg)
        manifest["splits"][split] = {"files": files, "rows": sum(f["rows"] for f in files),
                                     "tokens": sum(f["tokens"] for f in files),
                                     "rows_with_structure": with_structure[split]}
    coverage = {split: with_structure[split] / v["rows"] if v["rows"] else None
                for split, v in manifest["splits"].items()}
    manifest["coverage"] = coverage
    manifest["structure_sources"] = [_describe(s) for s in cfg.sources]
    manifest["structures"] = len(records)
    write_json_atomic(out_dir / "manifest.json", manifest)
    total = sum(v["rows"] for v in manifest["splits"].values())
    _warn_low_coverage(sum(with_structure.values()), total, coverage, cfg)
    stats = {"structures": len(records), "rows_with_structure": sum(with_structure.values()), "coverage": coverage,
             "rows": sum(v["rows"] for v in manifest["splits"].values()), "quarantined": len(quarantine),
             "files_in": tally.files_in, "files_encoded": len(tally.encoded),
             "files_quarantined": len(tally.too_large) + len(enc_stats.failures),
             "files_without_usable_chain": enc_stats.files - len(enc_stats.failures) - len(tally.encoded),
             "chains_encoded": enc_stats.chains, "residues_encoded": enc_stats.residues,
             "chains_skipped": dict(enc_stats.skipped), "failures": len(enc_stats.failures),
             "archive_refused": dict(src_stats.refused), "afdb": dict(src_stats.afdb), "backend": backend}
    log.info("structure shards: %s", stats)
    return StructureStageResult(manifest, quarantine, stats)


def threedi_of_structure(path: str, chain: str | None, cfg: StructuresConfig) -> str:
    """The masked, lower-case 3Di string of one chain of one structure file (SaProt scoring of a DMS assay)."""
    from pipeline_lib.structures.saprot import mask_threedi

    chains = with_plddt_policy(encode_structures([path], backend=cfg.backend, foldseek_binary=cfg.foldseek_binary,
                                                 altloc=cfg.altloc, on_error="raise"), "file", cfg.plddt_in_bfactor)
    for ch in chains:
        if chain is None or ch.name.rsplit("_", 1)[-1] == chain:
            return mask_threedi(ch.threedi, ch.plddt, cfg.plddt_threshold)
    raise DataValidationError(f"no chain {chain!r} with a 3Di string", path=path)
