"""The MMseqs2 command chain that turns a query DB into one A3M per query (ColabFold's recipe), as argv lists.

    for argv in msa_commands(qdb, target, work, cfg, threads=2): MMseqs().run(*argv[1:])

Pure functions: every flag comes from :class:`MsaConfig`, nothing runs here, so the chain can be
checked and recorded in lineage exactly as it is executed. The chain (``colabfold/mmseqs/search.py``):

1. ``search`` queries against ``target.search_db`` (``-a`` for backtraces);
2. when ``cfg.expand.enabled``: ``mvdb``/``lndb`` the last search profile, ``expandaln`` the hits to
   cluster members through ``target.aln_db``, ``align`` the profile against the members;
3. ``filterresult``; 4. ``result2msa --msa-format-mode 6`` (A3M); 5. ``unpackdb`` (one file per query key).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.config import MsaConfig

__all__ = ["TargetDb", "msa_commands", "target_commands", "is_mmseqs_db", "A3M_DIR"]

A3M_DIR = "a3m_raw"  # unpackdb output folder inside the work dir: <key>.a3m


def is_mmseqs_db(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an mmseqs database prefix (``<path>.dbtype`` exists)."""
    return Path(f"{path}.dbtype").is_file()


@dataclass(frozen=True)
class TargetDb:
    """A prepared target. ``search_db`` is searched; ``seq_db`` holds every target's residues (the same DB
    unless expandable); ``aln_db`` aligns each ``search_db`` entry to its cluster members (ColabFold's
    ``<db>_aln``; keys of ``search_db`` and ``seq_db`` must agree), None when not expandable."""

    search_db: Path
    seq_db: Path
    aln_db: Path | None = None

    @property
    def expandable(self) -> bool:
        return self.aln_db is not None

    @classmethod
    def from_db(cls, db: str | os.PathLike[str], *, expand: bool) -> TargetDb:
        """Wrap an existing DB; with ``expand``, ColabFold's layout ``<db>``, ``<db>_seq``, ``<db>_aln``."""
        db = Path(db)
        if not expand:
            return cls(db, db)
        seq, aln = Path(f"{db}_seq"), Path(f"{db}_aln")
        missing = [str(p) for p in (seq, aln) if not is_mmseqs_db(p)]
        if missing:
            raise DataValidationError(f"target DB is not expandable (msa.expand.enabled): missing {missing}; "
                                      "expected ColabFold's <db>, <db>_seq and <db>_aln", path=str(db))
        return cls(db, seq, aln)

    def fingerprint(self) -> list[list[object]]:
        """Path, size and mtime of each DB index: changes when a DB is rebuilt (for batch cache keys)."""
        out: list[list[object]] = []
        for p in (self.search_db, self.seq_db, self.aln_db):
            if p is not None:
                idx = Path(f"{p}.index")
                st = idx.stat() if idx.exists() else None
                out.append([str(Path(p).resolve()), st.st_size if st else None, st.st_mtime_ns if st else None])
        return out


# Workflows (search, linclust) run at verbosity 3, which names each module as it starts: the tool adapter's
# heartbeat reports that step during long runs. Single modules stay at 1 (errors only).
WORKFLOW_V = ["-v", "3"]


def _s(x: object) -> str:
    return str(int(x)) if isinstance(x, bool) else str(x)


def target_commands(fasta: Path, db: Path, work: Path, cfg: MsaConfig, threads: int) -> list[list[str]]:
    """createdb of a target FASTA; with expand, also linclust + createsubdb + align to build an expandable
    target (representatives ``<db>_rep`` searched, members in ``<db>``, alignments in ``<db>_aln``)."""
    t, v = ["--threads", str(threads)], ["-v", "1"]
    cmds = [["mmseqs", "createdb", str(fasta), str(db), *v]]
    if cfg.expand.enabled:
        e = cfg.expand
        clu = f"{db}_clu"
        cmds += [
            ["mmseqs", "linclust", str(db), clu, str(work / "tmp_linclust"), "--min-seq-id",
             _s(e.cluster_min_seq_id), "-c", _s(e.cluster_coverage), *t, *WORKFLOW_V],
            ["mmseqs", "createsubdb", clu, str(db), f"{db}_rep", *v],
            ["mmseqs", "align", str(db), str(db), clu, f"{db}_aln", "-a", "-e", "inf", *t, *v],
        ]
    return cmds


def msa_commands(qdb: Path, target: TargetDb, work: Path, cfg: MsaConfig, threads: int) -> list[list[str]]:
    """The search-to-A3M chain for one query DB; intermediates go under ``work``."""
    s, t, v = cfg.search, ["--threads", str(threads)], ["-v", "1"]
    res, tmp = work / "res", work / "tmp"
    cmds = [["mmseqs", "search", str(qdb), str(target.search_db), str(res), str(tmp), "--num-iterations",
             _s(s.num_iterations), "-a", "-e", _s(s.evalue), "--max-seqs", _s(s.max_seqs), "-s",
             f"{s.sensitivity:.1f}", "--prefilter-mode", _s(s.prefilter_mode), *t, *WORKFLOW_V]]
    result = res
    if cfg.expand.enabled:
        cmds += _expand_commands(qdb, target, work, cfg, threads)
        result = work / "res_exp_realign"
    f, r = cfg.filterresult, cfg.result2msa
    cmds += [
        ["mmseqs", "filterresult", str(qdb), str(target.seq_db), str(result), str(work / "res_filt"),
         "--qid", f.qid, "--qsc", _s(f.qsc), "--diff", _s(f.diff), "--max-seq-id", _s(f.max_seq_id),
         "--filter-min-enable", _s(f.filter_min_enable), *t, *v],
        ["mmseqs", "result2msa", str(qdb), str(target.seq_db), str(work / "res_filt"), str(work / "msa"),
         "--msa-format-mode", "6", "--filter-msa", _s(r.filter_msa), "--filter-min-enable",
         _s(r.filter_min_enable), "--diff", _s(r.diff), "--qid", r.qid, "--qsc", _s(r.qsc),
         "--max-seq-id", _s(r.max_seq_id), *t, *v],
        ["mmseqs", "unpackdb", str(work / "msa"), str(work / A3M_DIR), "--unpack-name-mode", "0",
         "--unpack-suffix", ".a3m", *v],
    ]
    return cmds


def _expand_commands(qdb: Path, target: TargetDb, work: Path, cfg: MsaConfig, threads: int) -> list[list[str]]:
    if target.aln_db is None:
        raise DataValidationError("msa.expand.enabled but the target has no <db>_aln alignments",
                                  path=str(target.search_db))
    e, t, v = cfg.expand, ["--threads", str(threads)], ["-v", "1"]
    cmds: list[list[str]] = []
    align_query = qdb
    if cfg.search.num_iterations > 1:
        # realign with the profile of the last search iteration, as ColabFold does (tmp/latest/profile_1)
        profile = work / "tmp" / "latest" / f"profile_{cfg.search.num_iterations - 2}"
        align_query = work / "prof_res"
        cmds += [["mmseqs", "mvdb", str(profile), str(align_query), *v],
                 ["mmseqs", "lndb", f"{qdb}_h", f"{align_query}_h", *v]]
    cmds += [
        ["mmseqs", "expandaln", str(qdb), str(target.seq_db), str(work / "res"), str(target.aln_db),
         str(work / "res_exp"), "--expansion-mode", _s(e.expansion_mode), "-e", _s(e.evalue),
         "--expand-filter-clusters", _s(e.filter_clusters), "--max-seq-id", _s(e.max_seq_id), *t, *v],
        ["mmseqs", "align", str(align_query), str(target.seq_db), str(work / "res_exp"),
         str(work / "res_exp_realign"), "-e", _s(e.align_evalue), "--max-accept", _s(e.max_accept),
         "--alt-ali", _s(e.alt_ali), "-a", *t, *v],
    ]
    return cmds
