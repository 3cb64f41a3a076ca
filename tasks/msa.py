"""Prefect tasks of the MSA stage: the target database, one task per query batch, then the shards."""
from __future__ import annotations

from pathlib import Path

from pipeline_lib.config import Config
from pipeline_lib.lineage import StepRecord, artifact_for, utcnow
from pipeline_lib.msa.build import (
    BatchResult,
    Query,
    build_msa_batch,
    iter_query_batches,
    prepare_target,
    write_target_fasta,
)
from pipeline_lib.msa.stage import select_queries, write_msa_outputs
from tasks.artifacts import progress_artifacts
from tasks.common import Produced, RunContext, StageOutput, lineage_task, logger, retry_transient, run_stage

__all__ = ["msa_queries", "msa_target", "msa_batch", "msa"]


def msa_queries(cfg: Config, ingested: StageOutput, clustered: StageOutput, splitted: StageOutput) -> list[list[Query]]:
    queries = select_queries(ingested.path("sequences.parquet"), clustered.path("clusters.parquet"),
                             splitted.path("splits.parquet"), level=cfg.split_level,
                             splits_wanted=list(cfg.msa.query_splits), limit=cfg.msa.max_queries)
    return list(iter_query_batches(queries, cfg.msa))


@lineage_task(name="msa_target")
def msa_target(ctx: RunContext, cfg: Config, ingested: StageOutput) -> StageOutput:
    """The mmseqs target database: the configured one, or one built from the ingested sequences."""
    seqs = ingested.outputs["sequences.parquet"]
    source = cfg.msa.target_db
    params = cfg.msa.model_dump(mode="json", include={"target_db", "expand"})

    def compute(tmp: Path):
        fasta = source
        if fasta is None:
            fasta = tmp / "target.fasta"
            write_target_fasta(Path(seqs.path), fasta)
        target = prepare_target(fasta, tmp / "db", cfg.msa)
        return [Produced("db", "mmseqs_db", meta={"search_db": Path(target.search_db).name})], \
            {"target": str(source or "ingested sequences")}, {}

    return run_stage(ctx, "msa_target", params, [seqs] if source is None else [artifact_for(source, "msa_target")],
                     compute)


@lineage_task(name="msa_batch", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def msa_batch(ctx: RunContext, cfg: Config, queries: list[Query], target: StageOutput, index: int) -> BatchResult:
    """One batch of queries: a failed batch is retried alone; a finished one is reused (its marker)."""
    started = utcnow()
    out = Path(ctx.workdir) / "stages" / "msa_batches" / f"batch-{index:05d}"
    db_dir = Path(target.outputs["db"].path)
    search_db = db_dir / target.outputs["db"].meta["search_db"]
    from pipeline_lib.msa.build import TargetDb

    with progress_artifacts():  # the batch's mmseqs commands as a progress bar "msa-batch-NNNNN"
        result = build_msa_batch(queries, TargetDb.from_db(search_db, expand=cfg.msa.expand.enabled), out, cfg.msa)
    ctx.store.record_step(StepRecord(
        ctx.run_id, "msa_batch", {"index": index, "queries": len(queries), "commands": result.commands}, result.key,
        "cached" if result.reused else "completed", started, utcnow(), inputs=[target.outputs["db"]],
        outputs=[artifact_for(out / "a3m", "a3m_batch", rows=len(result.query_ids))],
        tool_versions={"mmseqs": result.mmseqs_version},
        stats={"depths": result.depths, "seconds": result.seconds}))
    logger().info("msa batch %d: %d queries, %s", index, len(queries), "reused" if result.reused else
                  f"built in {result.seconds:.1f}s")
    return result


@lineage_task(name="msa")
def msa(ctx: RunContext, cfg: Config, batches: list[BatchResult], splitted: StageOutput) -> StageOutput:
    """MSA table (full depth) and MSA token shards (subsampled), by the queries' split."""
    splits = splitted.outputs["splits.parquet"]
    inputs = [artifact_for(b.batch_dir / "a3m", "a3m_batch") for b in batches] + [splits]
    params = cfg.msa.model_dump(mode="json", include={"subsample", "rows_per_shard", "row_group_rows"})

    def compute(tmp: Path):
        manifest, stats = write_msa_outputs(batches, Path(splits.path), tmp, cfg.msa,
                                            provenance={"run_id": ctx.run_id})
        produced = [Produced("msas.parquet", "msa", stats["msas"]), Produced("shards/manifest.json", "msa_manifest")]
        for split, info in manifest["splits"].items():
            produced += [Produced(f"shards/{f['path']}", "msa_shard", f["rows"], meta={"split": split})
                         for f in info["files"]]
        return produced, stats, {"mmseqs": batches[0].mmseqs_version if batches else ""}

    return run_stage(ctx, "msa", params, inputs, compute)
