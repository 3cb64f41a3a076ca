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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import duckdb_connect, sql_path
from pipeline_lib.sequences.cluster import write_fasta_from_parquet
from pipeline_lib.sequences.config import AuditConfig
from pipeline_lib.sequences.split import _rows_at
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["AuditResult", "audit_splits", "audit_metrics", "THRESHOLDS", "AUDIT_SCHEMA"]

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


def _split_rows(sequences: Path, splits: Path) -> tuple[int, dict[str, np.ndarray]]:
    """Row count of ``sequences`` and the row ordinals of each split."""
    con = duckdb_connect()
    try:
        rows = con.execute(f"""SELECT s.split, q.ord FROM read_parquet({sql_path(splits)}) s
            JOIN (SELECT id, file_row_number AS ord FROM read_parquet({sql_path(sequences)}, file_row_number=true)) q
            USING (id) ORDER BY q.ord""").fetchall()
        n = con.execute(f"SELECT count(*) FROM read_parquet({sql_path(sequences)})").fetchone()[0]
    finally:
        con.close()
    out: dict[str, list[int]] = {}
    for split, ord_ in rows:
        out.setdefault(split, []).append(ord_)
    return n, {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def audit_splits(sequences: Path, splits: Path, out_dir: Path, tmp_dir: Path, cfg: AuditConfig, *, seed: int,
                 threads: int = 1, binary: str | None = None) -> AuditResult:
    """Search valid and test against train; write ``out_dir/audit.parquet``; raise past ``cfg.max_identity``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    n, by_split = _split_rows(sequences, splits)
    train = by_split.get("train", np.zeros(0, dtype=np.int64))
    rng = np.random.default_rng([seed, 0xA0D17])
    queries: dict[str, np.ndarray] = {}
    for split in HELD_OUT:
        rows = by_split.get(split, np.zeros(0, dtype=np.int64))
        queries[split] = np.sort(rng.choice(rows, cfg.max_queries, replace=False)) if len(rows) > cfg.max_queries \
            else rows
    result = AuditResult()
    best: dict[int, tuple[float, int]] = {}
    asked = np.concatenate(list(queries.values())) if queries else np.zeros(0, dtype=np.int64)
    if len(train) and len(asked):
        keep_train, keep_query = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        keep_train[train], keep_query[asked] = True, True
        write_fasta_from_parquet(sequences, tmp_dir / "train.fasta", keep=keep_train)
        write_fasta_from_parquet(sequences, tmp_dir / "queries.fasta", keep=keep_query)
        mm = MMseqs(binary=binary, threads=threads)
        hits = tmp_dir / "hits.m8"
        args = ["easy-search", str(tmp_dir / "queries.fasta"), str(tmp_dir / "train.fasta"), str(hits),
                str(tmp_dir / "search_tmp"), "-s", str(cfg.sensitivity), "-c", str(cfg.coverage), "--cov-mode", "2",
                "--format-output", "query,target,fident", "--threads", str(threads), "-v", "1"]
        mm.run(*args, log_file=tmp_dir / "mmseqs.log")
        result.command = ["mmseqs", *args]
        with open(hits) as fh:
            for line in fh:
                q, t, fident = line.rstrip("\n").split("\t")
                qi, value = int(q), float(fident)
                if value > best.get(qi, (-1.0, -1))[0] or (value == best[qi][0] and int(t) < best[qi][1]):
                    best[qi] = (value, int(t))
    wanted = set(asked.tolist()) | {t for _, t in best.values()}  # only these ids are looked up
    names = {row: values[0] for row, values in _rows_at(sequences, ["id"], list(wanted)).items()}
    records = []
    for split in HELD_OUT:
        rows = queries[split]
        ident = np.asarray([best.get(int(r), (0.0, -1))[0] for r in rows], dtype=np.float64)
        stats: dict[str, Any] = {"queries": len(rows), "held_out": len(by_split.get(split, [])),
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
