"""Incremental clustering: a new release's level computed from the previous release's with ``mmseqs
clusterupdate``, so that a refresh with ~1 % new sequences does not re-cluster the other 99 %.

    prev = find_previous_level(workdir / "stages" / "cluster_level", level)      # None: cluster from scratch
    res = cluster_level_incremental(seqs, level, out_dir, tmp_dir, mm, previous=members_of_level_above,
                                    old_level=prev)

A level clustered this way keeps its MMseqs2 databases in ``<level dir>/db/`` (``seqs*``: the level's input, one
entry per sequence with its ``seq_hash`` as header; ``clusters*``: the clustering), which is what the next
release's update reads. Sequences are matched across releases by ``seq_hash``, so a sequence whose id changed is
the same sequence and one whose residues changed is a removed one plus a new one. ``clusterupdate`` keeps every
cluster whose representative is still there (same representative, so the same cluster id and the same split),
drops deleted members, searches new sequences (and members of clusters whose representative was deleted)
against the kept representatives and clusters the ones without a hit among themselves.
"""
from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import duckdb_connect, sql_path, sql_str
from pipeline_lib.sequences.cluster import LevelResult, representatives, rows_of, write_fasta_from_parquet
from pipeline_lib.sequences.config import ClusterLevel
from pipeline_lib.stage_cache import read_marker
from pipeline_lib.tools.mmseqs import MMseqs

__all__ = ["DB_DIR", "cluster_level_incremental", "find_previous_level", "level_params", "agreement"]

log = logging.getLogger(__name__)

DB_DIR = "db"


def _has_databases(level_dir: Path) -> bool:
    db = level_dir / DB_DIR
    return all((db / f"{name}.dbtype").is_file() for name in ("seqs", "seqs_h", "clusters"))


def level_params(level: ClusterLevel) -> dict[str, Any]:
    """A level's parameters as the cache key and the search for an earlier clustering see them: everything that
    changes the clusters (not ``memory_limit``, which only changes how mmseqs splits its work)."""
    return level.model_dump(mode="json", exclude={"memory_limit"})


def find_previous_level(stage_root: Path, level: ClusterLevel) -> tuple[Path, dict[str, Any]] | None:
    """The newest finished incremental level with ``level``'s parameters under ``stage_root`` (the
    ``stages/cluster_level`` directory of a workdir) that still has its databases, with its marker; None if none.

    Found from the stage directories' markers, not from lineage, so that a copied or restored workdir (or one
    whose lineage database was replaced) still refreshes incrementally."""
    wanted = level_params(level)
    found: list[tuple[datetime, Path, dict[str, Any]]] = []
    for d in sorted(stage_root.glob("*/")) if stage_root.is_dir() else []:
        marker = read_marker(d)
        params = (marker or {}).get("params", {})
        if marker and params.get("incremental") and params.get("level") == wanted and _has_databases(d):
            found.append((datetime.fromisoformat(marker["finished_at"]), d, marker))
    if not found:
        return None
    _, d, marker = max(found, key=lambda f: f[0])
    return d, marker


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _check_unique_hashes(sequences: Path) -> None:
    con = duckdb_connect()
    try:
        dupes = con.execute(f"SELECT seq_hash FROM read_parquet({sql_path(sequences)}) GROUP BY seq_hash "
                            "HAVING count(*) > 1 LIMIT 3").fetchall()
    finally:
        con.close()
    if dupes:  # ingest dedupes, so only a hand-made table gets here
        raise DataValidationError(f"incremental clustering matches sequences by seq_hash, which repeats "
                                  f"(e.g. {[d[0] for d in dupes]}): deduplicate the sequences first",
                                  path=str(sequences))


def _tsv_to_members(tsv: Path, sequences: Path, out: Path, expected: int) -> int:
    """mmseqs' ``<rep seq_hash>\\t<member seq_hash>`` lines as ``members.parquet`` of row ordinals, sorted by
    member; every line must name rows of ``sequences``, and there must be ``expected`` of them."""
    con = duckdb_connect()
    try:
        try:
            con.execute(f"""CREATE TEMP TABLE t AS SELECT * FROM read_csv({sql_path(tsv)}, delim='\t', header=false,
                columns={{'rep': 'VARCHAR', 'member': 'VARCHAR'}})""")
        except duckdb.Error as exc:
            raise DataValidationError(f"mmseqs cluster table is not two columns: {str(exc).splitlines()[0]}",
                                      path=str(tsv)) from exc
        con.execute(f"""CREATE TEMP TABLE s AS SELECT seq_hash, file_row_number AS ord
            FROM read_parquet({sql_path(sequences)}, file_row_number=true)""")
        con.execute("""CREATE TEMP TABLE m AS SELECT r.ord AS rep, x.ord AS member FROM t
            JOIN s x ON x.seq_hash = t.member JOIN s r ON r.seq_hash = t.rep""")
        lines, mapped = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("t", "m"))
        if lines != mapped or mapped != expected:
            raise DataValidationError(f"mmseqs clustering names {lines:,} sequences, {mapped:,} of them in the "
                                      f"sequence table; {expected:,} were clustered", path=str(tsv))
        con.execute(f"COPY (SELECT rep, member FROM m ORDER BY member) TO {sql_str(out)} "
                    "(FORMAT parquet, COMPRESSION zstd)")
        return con.execute("SELECT count(DISTINCT rep) FROM m").fetchone()[0]
    finally:
        con.close()


def cluster_level_incremental(sequences: Path, level: ClusterLevel, out_dir: Path, tmp_dir: Path, mm: MMseqs,
                              previous: Path | None = None, old_level: Path | None = None) -> LevelResult:
    """Like :func:`pipeline_lib.sequences.cluster.cluster_level` (same ``members.parquet``), keeping the
    level's databases in ``out_dir/db`` for the next release. With ``old_level`` (a level directory of an
    earlier release, see :func:`find_previous_level`) the clustering is that one updated by ``mmseqs
    clusterupdate``; without it, or when no sequence is shared with it, it is clustered from scratch."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / DB_DIR
    db.mkdir(parents=True, exist_ok=True)
    _check_unique_hashes(sequences)
    n = rows_of(sequences)
    fasta = tmp_dir / "level_input.fasta"
    written = write_fasta_from_parquet(sequences, fasta, keep=representatives(previous, n) if previous else None,
                                       header="seq_hash")
    if written == 0:
        raise DataValidationError("no sequences to cluster", path=str(sequences))
    mm_log = tmp_dir / "mmseqs.log"
    knobs: dict[str, Any] = {"min_seq_id": level.min_seq_id, "coverage": level.coverage, "cov_mode": level.cov_mode,
             "cluster_mode": level.cluster_mode}
    refresh: dict[str, Any] | None = None
    if old_level is not None:
        old = old_level / DB_DIR
        mm.createdb(fasta, tmp_dir / "new", log_file=mm_log)
        diff = mm.diffseqdbs(old / "seqs", tmp_dir / "new", tmp_dir / "diff", log_file=mm_log)
        refresh = {"previous": str(old_level), **{k: _count_lines(p) for k, p in diff.items()}}
        if refresh["kept"] == 0:  # clusterupdate refuses this case; nothing to carry over anyway
            log.warning("cluster %s: no sequence in common with %s; clustering from scratch", level.name, old_level)
            refresh = None
        else:
            (tmp_dir / "update").mkdir()
            command = mm.clusterupdate(old / "seqs", tmp_dir / "new", old / "clusters", db / "seqs",
                                       db / "clusters", tmp_dir / "update", log_file=mm_log, **knobs)
    if refresh is None:
        mm.createdb(fasta, db / "seqs", log_file=mm_log)
        command = mm.cluster_db(db / "seqs", db / "clusters", tmp_dir / "cluster", method=level.method,
                                log_file=mm_log, **knobs)
    tsv = tmp_dir / "clusters.tsv"
    mm.createtsv(db / "seqs", db / "clusters", tsv, log_file=mm_log)
    clusters = _tsv_to_members(tsv, sequences, out_dir / "members.parquet", written)
    for scratch in ("update", "cluster"):
        shutil.rmtree(tmp_dir / scratch, ignore_errors=True)
    if refresh:
        log.info("cluster %s (min_seq_id %.2f), updated from %s: %d kept, %d removed, %d added; %d sequences in "
                 "%d clusters", level.name, level.min_seq_id, old_level, refresh["kept"], refresh["removed"],
                 refresh["added"], written, clusters)
    else:
        log.info("cluster %s (min_seq_id %.2f): %d sequences in %d clusters", level.name, level.min_seq_id,
                 written, clusters)
    return LevelResult(written, clusters, ["mmseqs", *command], mm.version(), refresh=refresh)


def agreement(a: Path, b: Path, column: str) -> dict[str, float]:
    """How far two clusterings of the same ids agree (``clusters.parquet`` files, ``column`` e.g.
    ``cluster_c50``): the adjusted Rand index and pair precision/recall of ``b`` against ``a`` (pairs of ids
    together in both / together in b / together in a), over the ids the two share. DuckDB, out of core."""
    con = duckdb_connect()
    try:
        col = '"' + column.replace('"', '""') + '"'
        con.execute(f"""CREATE TEMP TABLE j AS SELECT x.{col} AS ca, y.{col} AS cb
            FROM read_parquet({sql_path(a)}) x JOIN read_parquet({sql_path(b)}) y USING (id)""")
        pairs = "sum(n * (n - 1) / 2)::DOUBLE"
        both = con.execute(f"SELECT {pairs} FROM (SELECT count(*) AS n FROM j GROUP BY ca, cb)").fetchone()[0]
        in_a = con.execute(f"SELECT {pairs} FROM (SELECT count(*) AS n FROM j GROUP BY ca)").fetchone()[0]
        in_b = con.execute(f"SELECT {pairs} FROM (SELECT count(*) AS n FROM j GROUP BY cb)").fetchone()[0]
        ids = con.execute("SELECT count(*) FROM j").fetchone()[0]
    finally:
        con.close()
    both, in_a, in_b = both or 0.0, in_a or 0.0, in_b or 0.0
    total = ids * (ids - 1) / 2
    expected = in_a * in_b / total if total else 0.0
    top = (in_a + in_b) / 2
    ari = 1.0 if top == expected else (both - expected) / (top - expected)
    return {"ids": ids, "adjusted_rand": ari, "pair_precision": both / in_b if in_b else 1.0,
            "pair_recall": both / in_a if in_a else 1.0}
