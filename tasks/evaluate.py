"""Prefect task of the evaluate stage: metrics of one checkpoint, tied to it and the data in lineage."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline_lib.config import Config
from pipeline_lib.evaluate.report import render_comparison, rows_to_table
from pipeline_lib.evaluate.stage import evaluate_checkpoint, resolve_checkpoint
from pipeline_lib.evaluate.variants import variant_table
from pipeline_lib.lineage import ArtifactRecord, artifact_for
from tasks.common import Produced, RunContext, StageOutput, lineage_task, logger, run_stage

__all__ = ["evaluate", "contact_structures"]


def contact_structures(cfg: Config) -> list[str]:
    """Default contact-evaluation structures: the local structure files the structures stage reads."""
    out: list[str] = []
    for src in cfg.structures.sources if cfg.structures.enabled else []:
        if src.kind == "embedded":
            from pipeline_lib.sources.embedded import embedded_structures

            out += [str(f.path) for f in embedded_structures(src.corpus)]
        elif src.kind == "directory":
            out += [str(Path(src.path) / p) for p in ("*.pdb", "*.cif")]
    return out


@lineage_task(name="evaluate")
def evaluate(ctx: RunContext, cfg: Config, checkpoint: ArtifactRecord, shards: StageOutput | None,
             label: str | None = None) -> StageOutput:
    """Stage: perplexity on held-out shards, contacts, DMS; metrics go to lineage as ``eval/...``."""
    manifest = next((a for a in shards.outputs.values() if a.kind in ("manifest", "structure_manifest")), None) \
        if shards else None
    shards_dir = Path(manifest.path).parent if manifest else None
    structures = contact_structures(cfg)
    extra = [artifact_for(f, "dms_assay") for f in (d.path for d in cfg.evaluate.dms.files)]
    inputs = [checkpoint, *([manifest] if manifest else []), *extra]
    params = cfg.evaluate.model_dump(mode="json", exclude={"enabled"}) | {"contact_structures": structures}
    step = checkpoint.meta.get("step")
    label = label or (f"step-{step}" if step is not None else Path(checkpoint.path).name)

    def compute(tmp: Path):
        hf_dir = resolve_checkpoint(Path(checkpoint.path), tmp / "hf_export")
        result = evaluate_checkpoint(hf_dir, shards_dir, cfg.evaluate, structures, cfg.structures)
        rows = result.rows
        pq.write_table(rows_to_table(rows, checkpoint=label), tmp / "metrics.parquet")
        table = render_comparison({label: rows})
        (tmp / "metrics.md").write_text(table + "\n")
        logger().info("evaluation of %s:\n%s", label, table)
        produced = [Produced("metrics.parquet", "eval_metrics", len(rows), meta={"checkpoint": label}),
                    Produced("metrics.md", "eval_table")]
        if result.dms:  # per-variant scores beside the metrics, so predictions can be inspected
            variants = variant_table(result.dms)
            pq.write_table(variants, tmp / "dms_scores.parquet")
            produced.append(Produced("dms_scores.parquet", "dms_scores", variants.num_rows,
                                     meta={"checkpoint": label}))
        return produced, {"metrics": len(rows), "checkpoint": label}, {}

    out = run_stage(ctx, "evaluate", params, inputs, compute)
    rows = pq.read_table(out.path("metrics.parquet")).to_pylist()
    ctx.store.record_metrics(ctx.run_id, None, [(f"eval/{r['metric']}/{r['subset']}", step or 0, r["value"])
                                                 for r in rows if r["value"] is not None])
    return out
