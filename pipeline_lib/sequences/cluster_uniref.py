"""A cluster level taken from UniProt's own membership instead of computed: every UniRef90 entry of the FASTA
joins its UniRef50 cluster (ESM-2's UR50/D: a UniRef50 cluster drawn uniformly, then one of its UniRef90 members).

    res = uniref_level(seqs, level, out_dir, tmp_dir, previous=None)     # out_dir/members.parquet, missing.parquet

Like an MMseqs2 level it writes ``members.parquet`` (``rep``, ``member``: row ordinals) over the rows that
represent a cluster in the previous level (every row for the first level), so MMseqs2 levels can sit on top of
it. A cluster's representative is the row of the UniRef90 entry named like the UniRef50 cluster (UniRef50_X ->
UniRef90_X), else its first row. Rows the membership does not list follow ``level.on_missing``: their own
cluster (``singleton``), the same plus a row in ``missing.parquet`` that the split stage quarantines
(``quarantine``), or an error. Membership entries absent from the FASTA are counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import duckdb_connect, sql_path, sql_str
from pipeline_lib.sequences.cluster import representatives, rows_of
from pipeline_lib.sequences.config import ClusterLevel
from pipeline_lib.sequences.uniref_membership import read_membership

__all__ = ["UnirefLevelResult", "uniref_level"]

log = logging.getLogger(__name__)


@dataclass
class UnirefLevelResult:
    members: int                 # rows this level grouped
    clusters: int
    missing: int                 # rows the membership does not list
    not_in_fasta: int            # membership children with no row in the sequences
    membership: dict[str, Any]   # entries, pairs, parent level, release of the membership file


def _child_prefix(prop: str) -> str:
    """``"UniRef90 ID"`` -> ``"UniRef90_"``: how the sequences' own ids start."""
    return prop.split()[0] + "_"


def uniref_level(sequences: Path, level: ClusterLevel, out_dir: Path, tmp_dir: Path,
                 previous: Path | None = None) -> UnirefLevelResult:
    """Group the rows of ``sequences`` (the previous level's representatives) by ``level.membership``."""
    from pipeline_lib.sequences.ingest import DUCKDB_MEMORY_LIMIT

    assert level.membership is not None
    tmp_dir.mkdir(parents=True, exist_ok=True)
    membership = tmp_dir / "membership.parquet"
    stats = read_membership(level.membership, membership, child_property=level.membership_property)
    n = rows_of(sequences)
    con = duckdb_connect()
    try:
        con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'; SET temp_directory={sql_str(tmp_dir / '_duckdb')}")
        con.execute(f"""CREATE TEMP TABLE seqs AS SELECT id, file_row_number AS ord
                        FROM read_parquet({sql_path(sequences)}, file_row_number=true)""")
        con.execute(f"CREATE TEMP TABLE m AS SELECT DISTINCT child, parent FROM read_parquet({sql_path(membership)})")
        twice = con.execute("SELECT child, list(parent ORDER BY parent)[:2] FROM m GROUP BY child "
                            "HAVING count(*) > 1 LIMIT 3").fetchall()
        if twice:
            raise DataValidationError(f"members listed under two clusters, e.g. {twice}", path=level.membership)
        if previous is not None:
            keep = pa.table({"ord": np.flatnonzero(representatives(previous, n)).astype(np.int64)})
            con.register("keep", keep)
            con.execute("CREATE TEMP TABLE input AS SELECT s.* FROM seqs s JOIN keep USING (ord)")
        else:
            con.execute("CREATE TEMP TABLE input AS SELECT * FROM seqs")
        con.execute("""CREATE TEMP TABLE joined AS
            SELECT i.ord, i.id, m.parent FROM input i LEFT JOIN m ON m.child = i.id""")
        rows, missing = con.execute("SELECT count(*), count(*) FILTER (WHERE parent IS NULL) FROM joined").fetchone()
        if rows == 0:
            raise DataValidationError("no sequences to cluster", path=str(sequences))
        examples = [r[0] for r in con.execute("SELECT id FROM joined WHERE parent IS NULL ORDER BY ord LIMIT 3")
                    .fetchall()]
        if missing and level.on_missing == "error":
            raise DataValidationError(f"{missing} of {rows} sequences are not in the membership, e.g. {examples} "
                                      f"(cluster level {level.name}: on_missing error)", path=level.membership)
        prefix = _child_prefix(level.membership_property)
        con.execute(f"""CREATE TEMP TABLE grouped AS
            SELECT ord, id, coalesce(parent, 'self:' || id) AS grp,
                   parent IS NOT NULL AND id = {sql_str(prefix)} || split_part(parent, '_', 2) AS named
            FROM joined""")
        con.execute("""CREATE TEMP TABLE reps AS
            SELECT grp, coalesce(min(ord) FILTER (WHERE named), min(ord)) AS rep FROM grouped GROUP BY grp""")
        con.execute(f"""COPY (SELECT r.rep, g.ord AS member FROM grouped g JOIN reps r USING (grp) ORDER BY member)
                        TO {sql_str(out_dir / 'members.parquet')} (FORMAT parquet, COMPRESSION zstd)""")
        con.execute(f"""COPY (SELECT id, ord FROM joined WHERE parent IS NULL ORDER BY ord)
                        TO {sql_str(out_dir / 'missing.parquet')} (FORMAT parquet, COMPRESSION zstd)""")
        clusters = con.execute("SELECT count(*) FROM reps").fetchone()[0]
        not_in_fasta = con.execute("SELECT count(*) FROM m ANTI JOIN seqs ON seqs.id = m.child").fetchone()[0]
    finally:
        con.close()
    if missing:
        log.warning("cluster %s: %d of %d sequences are not in the membership (%s), e.g. %s", level.name, missing,
                    rows, level.on_missing, examples)
    log.info("cluster %s (UniProt membership %s, release %s): %d sequences in %d clusters; %d listed members "
             "not in the sequences", level.name, Path(level.membership).name, stats.release, rows, clusters,
             not_in_fasta)
    return UnirefLevelResult(rows, clusters, missing, not_in_fasta,
                             {"entries": stats.entries, "pairs": stats.pairs, "parent_level": stats.parent_level,
                              "release": stats.release})
