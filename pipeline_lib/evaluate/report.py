"""Evaluation results as metric rows, a metrics table, and a text table comparing checkpoints.

    rows = collect_rows(perplexity=ppl_results, dms=assay_results, contacts=contact_result)
    table = rows_to_table(rows, checkpoint="step-10000")          # pyarrow, METRICS_SCHEMA
    print(render_comparison({"step-5000": rows_a, "step-10000": rows_b}))

Metric names: ``perplexity`` / ``pseudo_perplexity`` (subset: split, n: scored positions);
``dms_spearman`` / ``dms_auc`` / ``dms_skipped_rows`` (subset: assay, n: variants) and their means over
assays (subset ``mean``, n: assays); ``contact_precision@L`` / ``@L/2`` / ``@L/5`` (subset: short, medium,
long; n: test structures).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # only the result types: importing this module does not import torch
    from pipeline_lib.evaluate.contacts import ContactResult
    from pipeline_lib.evaluate.perplexity import PerplexityResult
    from pipeline_lib.evaluate.variants import AssayResult

__all__ = ["MetricRow", "METRICS_SCHEMA", "perplexity_rows", "dms_rows", "contact_rows", "collect_rows",
           "rows_to_table", "render_comparison"]

METRICS_SCHEMA = pa.schema([
    pa.field("checkpoint", pa.string()),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("subset", pa.string(), nullable=False),   # split, assay, contact range, or "mean"
    pa.field("value", pa.float64()),
    pa.field("n", pa.int64(), nullable=False),
])


@dataclass(frozen=True)
class MetricRow:
    metric: str
    subset: str
    value: float
    n: int


def perplexity_rows(results: Sequence[PerplexityResult]) -> list[MetricRow]:
    return [MetricRow(r.metric, r.split, r.value, r.n_tokens) for r in results]


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def dms_rows(results: Sequence[AssayResult]) -> list[MetricRow]:
    rows: list[MetricRow] = []
    for r in results:
        rows.append(MetricRow("dms_spearman", r.name, r.spearman, r.n))
        if r.auc is not None:
            rows.append(MetricRow("dms_auc", r.name, r.auc, r.n))
        rows.append(MetricRow("dms_skipped_rows", r.name, float(r.n_skipped), r.n))
    if results:
        rows.append(MetricRow("dms_spearman", "mean", _mean([r.spearman for r in results]), len(results)))
        aucs = [r.auc for r in results if r.auc is not None]
        if aucs:
            rows.append(MetricRow("dms_auc", "mean", _mean(aucs), len(aucs)))
    return rows


def contact_rows(result: ContactResult) -> list[MetricRow]:
    return [MetricRow(f"contact_precision@{frac}", rng, value, result.n_test)
            for rng, by_frac in result.mean.items() for frac, value in by_frac.items()]


def collect_rows(*, perplexity: Sequence[PerplexityResult] = (), dms: Sequence[AssayResult] = (),
                 contacts: ContactResult | None = None) -> list[MetricRow]:
    """Every result as metric rows, in the order perplexity, DMS, contacts."""
    return perplexity_rows(perplexity) + dms_rows(dms) + (contact_rows(contacts) if contacts else [])


def rows_to_table(rows: Sequence[MetricRow], checkpoint: str | None = None) -> pa.Table:
    """Rows as a pyarrow table of :data:`METRICS_SCHEMA` (for Parquet or DuckDB)."""
    records = [{"checkpoint": checkpoint, **asdict(r)} for r in rows]
    return pa.Table.from_pylist(records, schema=METRICS_SCHEMA)


def render_comparison(results: Mapping[str, Sequence[MetricRow]], *, digits: int = 3) -> str:
    """Markdown table: one row per (metric, subset) in first-seen order, one column per checkpoint."""
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], float] = {}
    for ckpt, rows in results.items():
        for r in rows:
            if (r.metric, r.subset) not in keys:
                keys.append((r.metric, r.subset))
            cells[(r.metric, r.subset, ckpt)] = r.value
    header = ["metric", "subset", *results.keys()]
    body = [[m, s, *(f"{cells[(m, s, c)]:.{digits}f}" if (m, s, c) in cells else "-" for c in results)]
            for m, s in keys]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    line = lambda cols: "| " + " | ".join(str(x).ljust(w) for x, w in zip(cols, widths, strict=False)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])
