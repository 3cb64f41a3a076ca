"""Prefect task of the structures stage (3Di + SaProt token shards)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import Config
from pipeline_lib.lineage import ArtifactRecord, artifact_for
from pipeline_lib.structures.stage import backend_version, build_structure_shards
from tasks.common import Produced, RunContext, StageOutput, lineage_task, retry_transient, run_stage

__all__ = ["structures"]


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


@lineage_task(name="structures", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def structures(ctx: RunContext, cfg: Config, ingested: StageOutput, clustered: StageOutput,
               splitted: StageOutput) -> StageOutput:
    seqs = ingested.outputs["sequences.parquet"]
    clusters, splits = clustered.outputs["clusters.parquet"], splitted.outputs["splits.parquet"]
    levels = [lv.name for lv in cfg.cluster.levels]
    backend, version = backend_version(cfg.structures)
    # workers / threads change speed, not results
    params = cfg.structures.model_dump(mode="json", exclude={"workers", "threads"}) | {
        "backend_resolved": backend, "backend_version": version, "shards": cfg.shards.model_dump(mode="json")}

    def compute(tmp: Path):
        res = build_structure_shards(Path(seqs.path), Path(clusters.path), Path(splits.path), tmp / "shards",
                                     cfg.structures, levels=levels, shards_cfg=cfg.shards,
                                     download_dir=Path(ctx.workdir) / "downloads")
        pq.write_table(pa.Table.from_pylist(res.quarantine, schema=schemas.QUARANTINE), tmp / "quarantine.parquet")
        produced = [Produced("shards/manifest.json", "structure_manifest",
                             meta={"backend": backend, "backend_version": version,
                                   "plddt_threshold": cfg.structures.plddt_threshold})]
        for split, info in res.manifest["splits"].items():
            produced += [Produced(f"shards/{f['path']}", "structure_shard", f["rows"], meta={"split": split})
                         for f in info["files"]]
        produced.append(Produced("quarantine.parquet", "quarantine", len(res.quarantine)))
        return produced, res.stats, {backend: version}

    return run_stage(ctx, "structures", params, [seqs, clusters, splits, *_source_inputs(cfg)], compute)
