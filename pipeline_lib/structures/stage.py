"""The structures stage: structure sources -> 3Di -> pLDDT-masked SaProt token shards, split like the
sequence shards.

    result = build_structure_shards(sequences, clusters, splits, out_dir, cfg.structures,
                                    levels=["c90", "c50"], shards_cfg=cfg.shards, download_dir=workdir / "downloads")

Every ingested sequence gets a row: with its structure's masked 3Di letters when one joins (by UniProt
accession, or chain name ``<file stem>_<chain>``), else ``#`` for every residue (SaProt's convention).
A structure whose modelled sequence differs from the database sequence is quarantined (or aligned).
"""
from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import ShardsConfig
from pipeline_lib.io import atomic_path, sha256_file, write_json_atomic
from pipeline_lib.structures.config import StructuresConfig
from pipeline_lib.structures.parse import StructureBlob
from pipeline_lib.structures.saprot import StructureRecord, parse_afdb_name, saprot_rows, structure_records
from pipeline_lib.structures.sources import SourceStats, afdb_models, iter_archive, iter_directory, iter_foldcomp
from pipeline_lib.structures.threedi import EncodeStats, encode_structures, resolve_backend
from pipeline_lib.tokenizer import SAPROT_ALPHABET

__all__ = ["StructureStageResult", "collect_structures", "build_structure_shards", "backend_version",
           "threedi_of_structure"]

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


@dataclass
class StructureStageResult:
    manifest: dict[str, Any]
    quarantine: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def backend_version(cfg: StructuresConfig) -> tuple[str, str]:
    """(backend name, its version) as used for this config."""
    backend = resolve_backend(cfg.backend, cfg.foldseek_binary)
    if backend == "foldseek":
        from pipeline_lib.tools.foldseek import Foldseek

        return backend, Foldseek(binary=cfg.foldseek_binary).version()
    return backend, importlib.metadata.version("mini3di")


def _inputs(src, accessions: list[str], download_dir: Path, stats: SourceStats) -> Iterator[Path | StructureBlob]:
    if src.kind == "directory":
        yield from iter_directory(src.path, recursive=src.recursive, patterns=src.patterns)
    elif src.kind == "archive":
        for path in src.paths:
            yield from iter_archive(path, stats=stats, max_member_bytes=src.max_member_bytes)
    elif src.kind == "afdb":
        yield from (m.path for m in afdb_models(src.accessions or accessions, download_dir / "afdb", src, stats=stats))
    elif src.kind == "foldcomp":
        yield from iter_foldcomp(src.path, src.ids)
    else:
        from pipeline_lib.sources.embedded import embedded_structures

        yield from (f.path for f in embedded_structures(src.corpus))


def _source_version(src) -> str | None:
    if src.kind == "embedded":
        return f"pyjess {importlib.metadata.version('pyjess')}"
    if src.kind == "foldcomp":
        return Path(src.path).name
    return None  # afdb: the model version comes from each file name


def _with_plddt_policy(chains, src, policy: str):
    """Drop the per-residue values of chains whose B-factor column is not pLDDT (no masking for them)."""
    predicted_source = src.kind in ("afdb", "foldcomp")
    for ch in chains:
        is_plddt = policy == "always" or (policy == "auto" and (predicted_source or parse_afdb_name(ch.name)))
        yield ch if is_plddt else ch._replace(plddt=None)


def collect_structures(cfg: StructuresConfig, *, accessions: list[str], download_dir: Path,
                       source_stats: SourceStats, encode_stats: EncodeStats) -> dict[str, StructureRecord]:
    """Encode every configured source; the first source that has a structure for a key wins."""
    records: dict[str, StructureRecord] = {}
    for src in cfg.sources:
        chains = encode_structures(_inputs(src, accessions, download_dir, source_stats), backend=cfg.backend,
                                   threads=cfg.threads, workers=cfg.workers, batch_size=cfg.batch_size,
                                   foldseek_binary=cfg.foldseek_binary, altloc=cfg.altloc, stats=encode_stats)
        chains = _with_plddt_policy(chains, src, cfg.plddt_in_bfactor)
        found = structure_records(chains, source=src.kind, version=_source_version(src), threshold=cfg.plddt_threshold)
        for key, rec in found.items():
            records.setdefault(key, rec)
        log.info("structures from %s: %d chains", src.kind, len(found))
    return records


def _split_batches(sequences: Path, clusters: Path, splits: Path, split: str, levels: list[str]):
    cl = ", ".join(f"c.cluster_{lv}" for lv in levels)
    con = duckdb.connect()
    try:
        reader = con.sql(f"""SELECT s.id, s.accession, s.seq_hash, s.sequence, {cl}
            FROM read_parquet('{sequences}') s JOIN read_parquet('{clusters}') c USING (id)
            JOIN read_parquet('{splits}') p USING (id) WHERE p.split = '{split}' ORDER BY s.seq_hash""").to_arrow_reader(8192)
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
    accessions = pq.read_table(sequences, columns=["accession"]).column(0).to_pylist()
    src_stats, enc_stats = SourceStats(), EncodeStats()
    records = collect_structures(cfg, accessions=sorted(set(a for a in accessions if a)), download_dir=download_dir,
                                 source_stats=src_stats, encode_stats=enc_stats)
    backend, version = backend_version(cfg)
    schema = schemas.structure_shard_schema(levels)
    quarantine: list[dict[str, Any]] = [  # unreadable structure files: kept with the reason
        {"stage": "structures", "source_file": f, "source_record": None, "id": None, "reason": "unreadable_structure",
         "detail": why, "raw": None} for f, why in [*enc_stats.failures, *src_stats.failures]]
    manifest: dict[str, Any] = {
        "schema_version": schemas.SCHEMA_VERSION, "kind": "structure", "columns": schema.names,
        "vocabulary": {"name": SAPROT_ALPHABET.name, "tokens": list(SAPROT_ALPHABET.tokens)},
        "sequence_vocabulary": "esm2", "tokens_include_special": True, "cluster_levels": levels,
        "plddt_threshold": cfg.plddt_threshold, "threedi_backend": {"name": backend, "version": version},
        "splits": {},
    }
    with_structure = 0

    def tables(split: str) -> Iterator[pa.Table]:
        nonlocal with_structure
        for rows in _split_batches(sequences, clusters, splits, split, levels):
            table, bad = saprot_rows(rows, records, levels=levels, on_mismatch=cfg.on_mismatch,
                                     min_identity=cfg.align_min_identity)
            quarantine.extend(bad)
            with_structure += sum(1 for s in table.column("structure_source").to_pylist() if s)
            yield table

    for split in SPLITS:
        files = _write_split(tables(split), out_dir / split, shards_cfg)
        manifest["splits"][split] = {"files": files, "rows": sum(f["rows"] for f in files),
                                     "tokens": sum(f["tokens"] for f in files)}
    write_json_atomic(out_dir / "manifest.json", manifest)
    stats = {"structures": len(records), "rows_with_structure": with_structure,
             "rows": sum(v["rows"] for v in manifest["splits"].values()), "quarantined": len(quarantine),
             "chains_encoded": enc_stats.chains, "residues_encoded": enc_stats.residues,
             "chains_skipped": dict(enc_stats.skipped), "failures": len(enc_stats.failures),
             "archive_refused": dict(src_stats.refused), "afdb": dict(src_stats.afdb), "backend": backend}
    log.info("structure shards: %s", stats)
    return StructureStageResult(manifest, quarantine, stats)


def threedi_of_structure(path: str, chain: str | None, cfg: StructuresConfig) -> str:
    """The masked, lower-case 3Di string of one chain of one structure file (SaProt scoring of a DMS assay)."""
    from pipeline_lib.errors import DataValidationError
    from pipeline_lib.structures.saprot import mask_threedi

    src = type("Src", (), {"kind": "file"})()
    chains = _with_plddt_policy(encode_structures([path], backend=cfg.backend, foldseek_binary=cfg.foldseek_binary,
                                                  altloc=cfg.altloc, on_error="raise"), src, cfg.plddt_in_bfactor)
    for ch in chains:
        if chain is None or ch.name.rsplit("_", 1)[-1] == chain:
            return mask_threedi(ch.threedi, ch.plddt, cfg.plddt_threshold)
    raise DataValidationError(f"no chain {chain!r} with a 3Di string", path=path)
