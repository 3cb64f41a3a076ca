"""Prefect tasks of the structures stage (3Di + SaProt token shards): one task per batch of structure inputs,
then the stage that merges them in order and writes the shards."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import Config
from pipeline_lib.io import sha256_file, stable_hash
from pipeline_lib.lineage import ArtifactRecord, artifact_for
from pipeline_lib.structures.batches import (
    StructureBatch,
    merge_batches,
    plan_batches,
    read_batch,
    run_batch,
    write_batch,
)
from pipeline_lib.structures.stage import backend_version, ingested_accessions, write_structure_shards
from tasks.common import Produced, RunContext, StageOutput, lineage_task, retry_transient, run_stage

__all__ = ["structure_batches", "structures_batch", "structures"]

# change speed or how the work is cut, not results
SPEED_ONLY = {"workers", "threads", "batch_size", "task_batch_size"}
# what a batch's output depends on besides its source and units
BATCH_SETTINGS = {"backend", "foldseek_binary", "altloc", "plddt_in_bfactor", "plddt_threshold", "max_file_bytes",
                  "max_atoms"}


def _source_inputs(cfg: Config) -> list[ArtifactRecord]:
    """Local structure inputs are hashed so the stage reruns when they change."""
    arts = []
    for src in cfg.structures.sources:
        if src.kind == "directory":
            arts.append(artifact_for(src.path, "structure_directory"))
        elif src.kind == "archive":
            arts += [artifact_for(p, "structure_archive") for p in src.paths]
        elif src.kind == "embedded":
            from pipeline_lib.sources.embedded import embedded_structures

            arts += [artifact_for(f.path, "structure_file", meta={"package": f.package, "version": f.package_version})
                     for f in embedded_structures(src.corpus)]
    return arts


def structure_batches(cfg: Config, ingested: StageOutput) -> list[StructureBatch]:
    """The structure inputs as batches of work units, in source order (planned in the flow's process)."""
    backend_version(cfg.structures)  # a required but missing foldseek fails here, before any batch
    return plan_batches(cfg.structures, accessions=ingested_accessions(ingested.path("sequences.parquet")))


def _batch_key_parts(batch: StructureBatch) -> tuple[dict, list[ArtifactRecord]]:
    """What identifies a batch's input: file units by content, archives as artifacts, accessions by name."""
    kind = batch.source.kind
    if kind in ("directory", "embedded"):
        return {"units_sha256": stable_hash([[u, sha256_file(u)] for u in batch.units])}, []
    if kind == "archive":
        return {}, [artifact_for(p, "structure_archive") for p in batch.units]
    return {"units_sha256": stable_hash(list(batch.units))}, []


@lineage_task(name="structures_batch", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def structures_batch(ctx: RunContext, cfg: Config, batch: StructureBatch, workers: int = 1) -> StageOutput:
    """One batch: parse + 3Di + file tally, cached in its own stage directory (a failed batch re-runs alone).

    ``workers`` encoding processes; 1 inside a daemonic worker (Dask, Ray), which cannot start a pool.
    """
    s = cfg.structures
    backend, version = backend_version(s)
    identity, inputs = _batch_key_parts(batch)
    params = {"source": batch.source.model_dump(mode="json"), "units": len(batch.units), **identity,
              "first_unit": batch.units[0], "settings": s.model_dump(mode="json", include=BATCH_SETTINGS),
              "backend_resolved": backend, "backend_version": version}
    if multiprocessing.current_process().daemon:
        workers = 1

    def compute(tmp: Path):
        res = run_batch(batch, s, backend=backend, download_dir=Path(ctx.workdir) / "downloads", workers=workers)
        stats = write_batch(res, tmp)
        return [Produced("chains.parquet", "structure_chains", len(res.records), meta={"label": batch.label}),
                Produced("tally.parquet", "structure_tally")], stats, {backend: version}

    return run_stage(ctx, "structures_batch", params, inputs, compute)


@lineage_task(name="structures", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def structures(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
               splitted: StageOutput, batches: list[StageOutput]) -> StageOutput:
    """Merge the batches in order (first source wins), join with the sequences, write the SaProt shards."""
    seqs = ingested.outputs["sequences.parquet"]
    clusters, splits = clustered.outputs["clusters.parquet"], splitted.outputs["splits.parquet"]
    levels = [lv.name for lv in cfg.cluster.levels]
    backend, version = backend_version(cfg.structures)
    params = cfg.structures.model_dump(mode="json", exclude=SPEED_ONLY) | {
        "backend_resolved": backend, "backend_version": version, "shards": cfg.shards.model_dump(mode="json")}
    batch_arts = [b.outputs[name] for b in batches for name in ("chains.parquet", "tally.parquet")]

    def compute(tmp: Path):
        found = merge_batches(read_batch(Path(b.directory), b.stats) for b in batches)
        res = write_structure_shards(found, Path(seqs.path), Path(clusters.path), Path(splits.path), tmp / "shards",
                                     cfg.structures, levels=levels, shards_cfg=cfg.shards)
        pq.write_table(pa.Table.from_pylist(res.quarantine, schema=schemas.QUARANTINE), tmp / "quarantine.parquet")
        produced = [Produced("shards/manifest.json", "structure_manifest",
                             meta={"backend": backend, "backend_version": version,
                                   "plddt_threshold": cfg.structures.plddt_threshold})]
        for split, info in res.manifest["splits"].items():
            produced += [Produced(f"shards/{f['path']}", "structure_shard", f["rows"], meta={"split": split})
                         for f in info["files"]]
        produced.append(Produced("quarantine.parquet", "quarantine", len(res.quarantine)))
        return produced, res.stats, {backend: version}

    return run_stage(ctx, "structures", params, [seqs, clusters, splits, *batch_arts, *_source_inputs(cfg)], compute)
