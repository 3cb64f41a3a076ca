"""Read a Stockholm alignment (HMMER's ``hmmalign`` / ``jackhmmer -A``, Pfam, Rfam layout) as A3M-style records.

    records = stockholm_records(text, source="family.sto")   # [(header, match-column row), ...]

Insert columns are found in the raw text, before anything turns ``.`` into ``-``: the columns the
``#=GC RF`` line marks with ``.`` / ``-`` / ``~`` when the file has one (HMMER writes it), else the columns
where any sequence has a lower-case letter or a ``.`` (HMMER's and Pfam's convention: match columns hold
upper-case letters and ``-`` only). Insert columns are dropped, as A3M drops lower-case insertions. The
rows are the first alignment of the file (up to ``//``); ``#=GS <name> DE`` lines become descriptions.
Errors name the file and line: no ``# STOCKHOLM`` header, a line that is not ``name sequence``, rows of
different lengths, a missing ``//`` (a cut file).
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline_lib.errors import DataValidationError

__all__ = ["stockholm_records", "is_stockholm"]

log = logging.getLogger(__name__)
_RF_INSERT = frozenset(".-~_")


def is_stockholm(head: bytes) -> bool:
    """Whether a file starting with ``head`` is Stockholm (its first non-blank line is ``# STOCKHOLM ...``)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"# STOCKHOLM")


def _parse(text: str, source: str) -> tuple[dict[str, list[str]], dict[str, str], list[str]]:
    """Sequence parts by name (in file order), descriptions, RF parts of the first alignment."""
    seqs: dict[str, list[str]] = {}
    desc: dict[str, str] = {}
    rf: list[str] = []
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if start is None or not lines[start].lstrip("\ufeff").startswith("# STOCKHOLM"):
        raise DataValidationError("not a Stockholm alignment: the first line is not '# STOCKHOLM 1.0'", path=source)
    for lineno, raw in enumerate(lines[start + 1:], start + 2):
        line = raw.strip()
        if not line:
            continue
        if line == "//":
            if any(ln.strip() for ln in lines[lineno:]):
                log.warning("%s: more than one alignment in the file; the first (up to line %d) is read", source,
                            lineno)
            return seqs, desc, rf
        if line.startswith("#=GC"):
            parts = line.split(maxsplit=2)
            if len(parts) == 3 and parts[1] == "RF":
                rf.append(parts[2])
            continue
        if line.startswith("#=GS"):
            parts = line.split(maxsplit=3)
            if len(parts) == 4 and parts[2] == "DE":
                desc[parts[1]] = parts[3]
            continue
        if line.startswith("#"):
            continue  # #=GF, #=GR and comments
        parts = line.split()
        if len(parts) != 2:
            raise DataValidationError(f"line {lineno}: expected 'name aligned-sequence', got {len(parts)} fields",
                                      path=source)
        seqs.setdefault(parts[0], []).append(parts[1])
    raise DataValidationError("no '//' line ends the alignment: the file is cut or not Stockholm", path=source)


def stockholm_records(text: str, *, source: str) -> list[tuple[str, str]]:
    """``(header, row)`` pairs with insert columns removed (see the module docstring); rows keep ``-``."""
    seqs, desc, rf_parts = _parse(text, source)
    if not seqs:
        return []
    names = list(seqs)
    rows = ["".join(seqs[n]) for n in names]
    width = len(rows[0])
    for name, row in zip(names, rows, strict=True):
        if len(row) != width:
            raise DataValidationError(f"ragged Stockholm alignment: {len(row)} columns, the first sequence has "
                                      f"{width}", path=source, record=name)
    grid = np.frombuffer("".join(rows).encode("ascii", "replace"), dtype=np.uint8).reshape(len(rows), width)
    rf = "".join(rf_parts)
    if rf and len(rf) != width:
        raise DataValidationError(f"the #=GC RF line has {len(rf)} columns, the sequences {width}", path=source)
    if rf:
        insert = np.array([c in _RF_INSERT for c in rf], dtype=bool)
    else:
        lower = (grid >= ord("a")) & (grid <= ord("z"))
        insert = (lower | (grid == ord("."))).any(axis=0)
    match = grid[:, ~insert]
    match = np.where(match == ord("."), ord("-"), match)  # a '.' in an RF match column is a deletion
    upper = (match >= ord("a")) & (match <= ord("z"))
    match = np.where(upper, match - 32, match).astype(np.uint8)
    headers = [n + (f" {desc[n]}" if n in desc else "") for n in names]
    return [(h, r.tobytes().decode("ascii", "replace")) for h, r in zip(headers, match, strict=True)]
