"""Leakage audit of the splits: how close is each held-out sequence to the training data?

    res = audit_splits(seqs, splits, out_dir, tmp_dir, AuditConfig(), seed=0)
    res.per_split["valid"]["share_ge_50"]      # share of (sampled) valid sequences with a train hit >= 50 %
    res.per_split["test"]["max_identity"]      # the closest held-out / train pair

Each held-out split (at most ``max_queries`` of it, a seeded sample) is searched with MMseqs2 against the train
split (``easy-search``, hits covering ``coverage`` of the query); a query's nearest training neighbour is its
best hit by identity, 0 when it has none. ``audit.parquet`` keeps one row per query (split, id, nearest train id,
identity); the shares at 30/50/70/90 % identity and the maximum go to the stage's stats and lineage metrics.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import duckdb_connect, sql_path
from pipeline_lib.sequences.config import AuditConfig
from pipeline_lib.sequences.search import build_target_db, merged_lines, search_chunk
from pipeline_lib.sequences.split import _rows_at
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["AuditPlan", "AuditResult", "audit_splits", "audit_metrics", "plan_audit", "search_options",
           "summarize_audit", "THRESHOLDS", "AUDIT_SCHEMA"]

log = logging.getLogger(__name__)
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
HELD_OUT = ("valid", "test")
AUDIT_SCHEMA = pa.schema([("split", pa.string()), ("id", pa.string()), ("nearest_train_id", pa.string()),
                          ("identity", pa.float64())])


@dataclass
class AuditResult:
    per_split: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)


def audit_metrics(per_split: dict[str, Any]) -> list[tuple[str, float]]:
    """``(audit/<split>/<name>, value)`` for lineage, from :attr:`AuditResult.per_split` (or the stage's stats,
    which hold it, so a cached audit records the same metrics)."""
    return [(f"audit/{split}/{k}", float(v)) for split in HELD_OUT if isinstance(per_split.get(split), dict)
            for k, v in per_split[split].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _split_rows(sequences: Path, splits: Path, wanted: tuple[str, ...]) -> tuple[int, dict[str, np.ndarray]]:
    """Row count of ``sequences`` and the sorted row ordinals of each ``wanted`` split, one NumPy array per split
    (no Python object per row: the train split of UniRef50 is 70 M ordinals, 560 MB)."""
    con = duckdb_connect()
    try:
        n = con.execute(f"SELECT count(*) FROM read_parquet({sql_path(sequences)})").fetchone()[0]
        out = {}
        for split in wanted:
            out[split] = np.asarray(con.execute(f"""SELECT q.ord FROM read_parquet({sql_path(splits)}) s
                JOIN (SELECT id, file_row_number AS ord FROM read_parquet({sql_path(sequences)}, file_row_number=true))
                q USING (id) WHERE s.split = ? ORDER BY q.ord""", [split]).fetchnumpy()["ord"], dtype=np.int64)
    finally:
        con.close()
    return n, out


@dataclass
class AuditPlan:
    """Who is searched: the train rows (the target) and each held-out split's queried rows (a seeded sample)."""

    rows: int                                   # rows of the sequences table
    train: np.ndarray
    held_out: dict[str, int]                    # split -> its size
    queries: dict[str, np.ndarray]              # split -> the rows searched, sorted

    @property
    def asked(self) -> np.ndarray:
        """Every queried row, sorted (the order the query chunks cut)."""
        parts = [q for q in self.queries.values() if len(q)]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def plan_audit(sequences: Path, splits: Path, cfg: AuditConfig, *, seed: int, with_train: bool = True) -> AuditPlan:
    """The audit's rows; ``with_train=False`` leaves the train rows out (a query chunk does not need them)."""
    n, by_split = _split_rows(sequences, splits, ("train", *HELD_OUT) if with_train else HELD_OUT)
    rng = np.random.default_rng([seed, 0xA0D17])
    queries: dict[str, np.ndarray] = {}
    for split in HELD_OUT:
        rows = by_split.get(split, np.zeros(0, dtype=np.int64))
        queries[split] = np.sort(rng.choice(rows, cfg.max_queries, replace=False)) if len(rows) > cfg.max_queries \
            else rows
    return AuditPlan(n, by_split.get("train", np.zeros(0, dtype=np.int64)),
                     {s: len(by_split.get(s, [])) for s in HELD_OUT}, queries)


def search_options(cfg: AuditConfig) -> list[str]:
    """The audit's easy-search options: hits covering ``coverage`` of the held-out query, identity as a fraction."""
    return ["-s", str(cfg.sensitivity), "-c", str(cfg.coverage), "--cov-mode", "2",
            "--format-output", "query,target,fident"]


def best_hits(lines: Iterable[str]) -> dict[int, tuple[float, int]]:
    """Each query row's nearest train row: highest identity, then lowest row."""
    best: dict[int, tuple[float, int]] = {}
    for line in lines:
        q, t, fident = line.rstrip("\n").split("\t")
        qi, ti, value = int(q), int(t), float(fident)
        if value > best.get(qi, (-1.0, -1))[0] or (value == best[qi][0] and ti < best[qi][1]):
            best[qi] = (value, ti)
    return best


def audit_splits(sequences: Path, splits: Path, out_dir: Path, tmp_dir: Path, cfg: AuditConfig, *, seed: int,
                 threads: int = 1, binary: str | None = None) -> AuditResult:
    """Search valid and test against train in one go (the pipeline runs :func:`plan_audit`, the query chunks of
    :mod:`pipeline_lib.sequences.search` as tasks, then :func:`summarize_audit`)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_audit(sequences, splits, cfg, seed=seed)
    hits: list[Path] = []
    command: list[str] = []
    if len(plan.train) and len(plan.asked):
        mm = MMseqs(binary=binary, threads=threads)
        db, _ = build_target_db(sequences, plan.train, tmp_dir / "target", mm)
        command = search_chunk(sequences, plan.asked, db, tmp_dir / "hits.tsv", tmp_dir / "search", mm,
                               search_options(cfg))
        hits.append(tmp_dir / "hits.tsv")
    result = summarize_audit(sequences, plan, hits, out_dir, cfg, splits=splits)
    result.command = command
    return result


def summarize_audit(sequences: Path, plan: AuditPlan, hit_files: list[Path], out_dir: Path, cfg: AuditConfig, *,
                    splits: Path) -> AuditResult:
    """``out_dir/audit.parquet`` and the per-split shares from the chunks' hits; raise past ``cfg.max_identity``."""
    result = AuditResult()
    best = best_hits(merged_lines(hit_files))
    asked = plan.asked
    wanted = set(asked.tolist()) | {t for _, t in best.values()}  # only these ids are looked up
    names = {row: values[0] for row, values in _rows_at(sequences, ["id"], list(wanted)).items()}
    records = []
    for split in HELD_OUT:
        rows = plan.queries[split]
        ident = np.asarray([best.get(int(r), (0.0, -1))[0] for r in rows], dtype=np.float64)
        stats: dict[str, Any] = {"queries": len(rows), "held_out": plan.held_out[split],
                                 **{f"share_ge_{round(100 * t)}": float((ident >= t).mean()) if len(rows) else 0.0
                                    for t in THRESHOLDS},
                                 "max_identity": float(ident.max()) if len(rows) else 0.0}
        if len(rows) and ident.max() > 0:
            worst = int(rows[int(np.argmax(ident))])
            stats["closest"] = {"id": names[worst], "train_id": names[best[worst][1]], "identity": best[worst][0]}
        result.per_split[split] = stats
        records += [{"split": split, "id": names[int(r)],
                     "nearest_train_id": names[best[int(r)][1]] if int(r) in best else None,
                     "identity": float(v)} for r, v in zip(rows, ident, strict=True)]
    pq.write_table(pa.Table.from_pylist(records, schema=AUDIT_SCHEMA), out_dir / "audit.parquet")
    for split, s in result.per_split.items():
        log.info("leakage audit %s: %d of %d sequences searched; nearest train hit >= 30/50/70/90 %%: %s; max %.3f",
                 split, s["queries"], s["held_out"],
                 " / ".join(f"{100 * s[f'share_ge_{round(100 * t)}']:.1f} %" for t in THRESHOLDS), s["max_identity"])
    if cfg.max_identity is not None:
        over = [(split, s["closest"]) for split, s in result.per_split.items()
                if s["max_identity"] >= cfg.max_identity and "closest" in s]
        if over:
            split, c = over[0]
            raise DataValidationError(
                f"leakage audit: {split} sequence {c['id']} is {c['identity']:.3f} identical to training sequence "
                f"{c['train_id']}, at or above split.audit.max_identity {cfg.max_identity} (all splits: "
                f"{ {k: round(v['max_identity'], 3) for k, v in result.per_split.items()} }); split by a coarser "
                "cluster level, or decontaminate", path=str(splits))
    return result
