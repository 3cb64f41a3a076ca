"""Foldseek adapter: 3Di and amino-acid strings of structure files from the ``foldseek`` binary, by argv.

    fs = Foldseek(threads=4)                       # $PLM_FOLDSEEK, else foldseek on PATH
    for name, aa, threedi in fs.structures_to_3di(["1tim.pdb.gz", "AF-P69905-F1-model_v4.cif"], "work/db"):
        ...

Runs the commands Foldseek documents for extracting 3Di strings:
``createdb <inputs> db --chain-name-mode 1 --threads N``, ``lndb db_h db_ss_h``,
``convert2fasta db_ss ss.fasta`` and ``convert2fasta db aa.fasta``, then reads both FASTA files
(same entries, same order). Foldseek is not on PyPI; install it from its releases or bioconda.

A missing binary, a non-zero exit or a signal raises :class:`ToolError` with the command, exit code and
stderr tail; output that is absent or malformed although foldseek exited 0 (unpaired entries, letters
outside the 3Di alphabet) raises :class:`DataValidationError` naming the file and the entry.
"""
from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from pipeline_lib.errors import DataValidationError, ToolError
from pipeline_lib.tools.base import BinaryTool

__all__ = ["Foldseek", "find_foldseek", "read_fasta_entries", "read_foldseek_fasta", "THREEDI_LETTERS"]

THREEDI_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWY")  # Foldseek's 20 3Di states (upper case)


def find_foldseek(configured: str | os.PathLike[str] | None = None) -> str:
    """Locate foldseek: the configured path, then $PLM_FOLDSEEK, then PATH."""
    for candidate in (configured, os.environ.get("PLM_FOLDSEEK")):
        if candidate:
            found = shutil.which(str(candidate))
            if found:
                return found
            raise ToolError(f"foldseek binary not found or not executable: {candidate}")
    found = shutil.which("foldseek")
    if found:
        return found
    raise ToolError("foldseek binary not found: install it (GitHub releases or bioconda), put it on PATH, "
                    "or set structures.foldseek_binary / $PLM_FOLDSEEK")


@functools.lru_cache(maxsize=8)
def _version_of(binary: str) -> str:
    return Foldseek(binary=binary).run("version", capture_stdout=True).strip()


def read_fasta_entries(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(name, sequence) per entry of a FASTA file; the name is the header's first word."""
    entries: list[tuple[str, str]] = []
    name: str | None = None
    parts: list[str] = []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if name is not None:
                    entries.append((name, "".join(parts)))
                words = line[1:].split()
                name, parts = (words[0] if words else ""), []
            elif line:
                if name is None:
                    raise DataValidationError("sequence line before the first header", path=str(path))
                parts.append(line.strip())
    if name is not None:
        entries.append((name, "".join(parts)))
    return entries


def read_foldseek_fasta(aa_fasta: str | os.PathLike[str],
                        ss_fasta: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Pair ``convert2fasta`` outputs of ``db`` and ``db_ss``: (name, amino acids, 3Di), upper case.

    Foldseek writes residues under its ``--mask-bfactor-threshold`` in lower case; case is dropped here.
    """
    aa, ss = read_fasta_entries(aa_fasta), read_fasta_entries(ss_fasta)
    if len(aa) != len(ss):
        raise DataValidationError(f"{len(aa)} amino-acid entries but {len(ss)} 3Di entries", path=str(ss_fasta))
    out = []
    for (name_a, seq_a), (name_s, seq_s) in zip(aa, ss, strict=False):
        if name_a != name_s or len(seq_a) != len(seq_s):
            raise DataValidationError(f"entry {name_a!r} ({len(seq_a)} residues) does not pair with 3Di entry "
                                      f"{name_s!r} ({len(seq_s)} residues)", path=str(ss_fasta))
        bad = set(seq_s.upper()) - THREEDI_LETTERS
        if bad:
            raise DataValidationError(f"entry {name_a!r}: letters {''.join(sorted(bad))!r} outside the 3Di alphabet",
                                      path=str(ss_fasta))
        if not seq_a.isalpha():
            raise DataValidationError(f"entry {name_a!r}: non-letters in its amino acids", path=str(aa_fasta))
        out.append((name_a, seq_a.upper(), seq_s.upper()))
    return out


class Foldseek(BinaryTool):
    name = "foldseek"

    def __init__(self, *, binary: str | os.PathLike[str] | None = None, threads: int = 1) -> None:
        super().__init__(binary=find_foldseek(binary) if binary else None, threads=threads)

    def _find_default(self) -> str:
        return find_foldseek()

    def version(self) -> str:
        return _version_of(self.binary)

    def createdb(self, inputs: Iterable[str | os.PathLike[str]], db: str | os.PathLike[str], *,
                 extra: list[str] | None = None, log_file: str | os.PathLike[str] | None = None) -> list[str]:
        """``foldseek createdb <inputs> <db> --chain-name-mode 1``; returns the argv (minus the binary)."""
        args = ["createdb", *map(str, inputs), str(db), "--chain-name-mode", "1",
                "--threads", str(self.threads), "-v", "1", *(extra or [])]
        self.run(*args, log_file=log_file)
        return args

    def structures_to_3di(self, inputs: Iterable[str | os.PathLike[str]], db: str | os.PathLike[str], *,
                          log_file: str | os.PathLike[str] | None = None) -> list[tuple[str, str, str]]:
        """(chain name, amino acids, 3Di) for every chain Foldseek keeps; writes ``db*`` and two FASTA files."""
        db = Path(db)
        db.parent.mkdir(parents=True, exist_ok=True)
        self.createdb(inputs, db, log_file=log_file)
        self.run("lndb", f"{db}_h", f"{db}_ss_h", "-v", "1", log_file=log_file)
        aa_fasta, ss_fasta = db.with_name(db.name + "_aa.fasta"), db.with_name(db.name + "_ss.fasta")
        for source, fasta in ((f"{db}_ss", ss_fasta), (str(db), aa_fasta)):
            self.run("convert2fasta", source, fasta, "-v", "1", log_file=log_file)
            if not fasta.is_file():  # exit 0 without output: say which command, not a bare FileNotFoundError
                raise ToolError(f"foldseek exited 0 but wrote no {fasta}",
                                argv=[self.binary, "convert2fasta", source, str(fasta)])
        return read_foldseek_fasta(aa_fasta, ss_fasta)
