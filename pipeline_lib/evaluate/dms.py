"""Read deep-mutational-scan substitution files (ProteinGym layout or mapped columns) and check them.

    assay = read_dms("BLAT_ECOLX_Stiffler_2015.csv")                          # ProteinGym columns
    assay = read_dms(DmsFileConfig(path="x.tsv", mutant_column="variant", score_column="fitness",
                                   sequence_column=None, wild_type="MKV...", offset=23), on_bad_row="skip")
    assay.wild_type, assay.mutations[0], assay.scores, assay.skip_counts

ProteinGym files have ``mutant`` (``A24G`` or ``A24G:L30P``, 1-based, ':'-joined), ``mutated_sequence``,
``DMS_score`` and ``DMS_score_bin``. The wild type is the given ``wild_type``, the ``wild_type_column``
value, or else derived from every row's mutated sequence with its mutations reverted (the majority wins).
Every row is then checked against it: the stated wild-type residue of each mutation, the mutated sequence
(the named substitutions and nothing else), positions in range, residue letters, the score.

A bad row raises :class:`DataValidationError` naming the file and the row (``record``: 1-based data row,
the header not counted), the first one in file order, with the count of the others; with
``on_bad_row="skip"`` bad rows are left out and listed in ``assay.skipped`` with a reason code.
Residue numbers in mutants are ``offset`` + the 1-based position in the wild type.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import DmsFileConfig
from pipeline_lib.evaluate.model import AMINO_ACIDS

__all__ = ["Mutation", "SkippedRow", "DmsAssay", "read_dms", "parse_mutant", "BadRowPolicy"]

BadRowPolicy = Literal["raise", "skip"]
_MUTATION = re.compile(r"^([^\d\s:])(-?\d+)([^\d\s:])$")
_WT_NAMES = frozenset({"_wt", "wt", "wildtype", "wild_type"})
_SEQ_LETTERS = frozenset(AMINO_ACIDS + "X")
_AA = frozenset(AMINO_ACIDS)


@dataclass(frozen=True)
class Mutation:
    """One substitution: wild-type letter, 0-based index into the wild type, mutant letter."""

    wt: str
    index: int
    mt: str

    def label(self, offset: int = 0) -> str:
        return f"{self.wt}{self.index + 1 + offset}{self.mt}"


@dataclass(frozen=True)
class SkippedRow:
    row: int
    mutant: str
    reason: str   # malformed_mutant | unknown_residue | position_out_of_range | wild_type_mismatch |
    detail: str   # sequence_mismatch | length_mismatch | bad_score | bad_label


@dataclass
class DmsAssay:
    """A checked assay: one entry per kept row, in file order."""

    name: str
    path: str
    wild_type: str
    offset: int
    mutants: list[str]
    mutations: list[tuple[Mutation, ...]]
    scores: np.ndarray                  # float64 [N]
    binary: np.ndarray | None           # int8 [N] (0/1) when the file has labels
    rows: np.ndarray                    # int64 [N], 1-based data row of each variant
    threedi: str | None = None
    structure: str | None = None
    chain: str | None = None
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.mutants)

    @property
    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))


class _Bad(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def parse_mutant(text: str, offset: int = 0) -> tuple[Mutation, ...]:
    """``"A24G:L30P"`` -> (Mutation('A', 23 - offset, 'G'), ...); ``_wt``/``WT`` -> (). Raises ValueError."""
    text = text.strip()
    if text.lower() in _WT_NAMES:
        return ()
    out: list[Mutation] = []
    for part in text.split(":"):
        m = _MUTATION.match(part.strip())
        if m is None:
            raise _Bad("malformed_mutant", f"mutant {text!r}: {part!r} is not like A24G (letter, number, letter)")
        wt, num, mt = m.group(1), int(m.group(2)), m.group(3)
        for letter in (wt, mt):
            if letter not in _AA:
                raise _Bad("unknown_residue", f"mutant {text!r}: {letter!r} is not one of the 20 amino acids "
                                              "(stop codons, gaps and indels are not supported)")
        out.append(Mutation(wt, num - offset - 1, mt))
    if len({mu.index for mu in out}) != len(out):
        raise _Bad("malformed_mutant", f"mutant {text!r} names the same residue twice")
    return tuple(out)


def _open_rows(path: Path, delimiter: str | None) -> tuple[list[str], list[list[str]]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataValidationError(f"cannot read DMS file: {exc.strerror or exc}", path=str(path)) from None
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise DataValidationError("empty DMS file (no header, no rows)", path=str(path))
    name = path.name.lower().removesuffix(".gz")
    sep = delimiter or ("\t" if name.endswith(".tsv") else ",")
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=sep) if any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    if len(rows) < 2:
        raise DataValidationError("DMS file has a header but no data rows", path=str(path))
    return header, rows[1:]


def _column(header: list[str], name: str | None, path: Path, what: str, required: bool) -> int | None:
    if name is None:
        return None
    if name in header:
        return header.index(name)
    if required:
        raise DataValidationError(f"no {what} column {name!r}; columns are {header}", path=str(path))
    return None


def _clean_seq(text: str, what: str) -> str:
    seq = text.strip().upper()
    bad = sorted(set(seq) - _SEQ_LETTERS)
    if not seq or bad:
        raise _Bad("unknown_residue", f"{what} is empty" if not seq else
                   f"{what} has letters outside the 20 amino acids and X: {''.join(bad)!r}")
    return seq


def _majority(values: list[str | None]) -> str | None:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _derive(seq: str, muts: tuple[Mutation, ...], offset: int) -> str:
    """The wild type implied by one row: its mutated sequence with the named substitutions reverted."""
    s = list(seq)
    for mu in muts:
        if not 0 <= mu.index < len(s):
            raise _Bad("position_out_of_range", f"residue {mu.index + 1 + offset} is outside the "
                                                f"mutated sequence (residues {1 + offset}..{len(s) + offset})")
        s[mu.index] = mu.wt
    return "".join(s)


def _check(wt: str, seq: str | None, muts: tuple[Mutation, ...], offset: int, mutant: str) -> None:
    for mu in muts:
        num = mu.index + 1 + offset
        if not 0 <= mu.index < len(wt):
            raise _Bad("position_out_of_range", f"mutant {mutant!r}: residue {num} is outside the wild type "
                                                f"(residues {1 + offset}..{len(wt) + offset})")
        if wt[mu.index] != mu.wt:
            raise _Bad("wild_type_mismatch", f"mutant {mutant!r} states {mu.wt} at residue {num} but the "
                                             f"wild type has {wt[mu.index]} there")
    if seq is None:
        return
    if len(seq) != len(wt):
        raise _Bad("length_mismatch", f"mutated sequence has {len(seq)} residues, the wild type {len(wt)}")
    expected = list(wt)
    for mu in muts:
        expected[mu.index] = mu.mt
    for i, (a, b) in enumerate(zip(seq, expected, strict=False)):
        if a != b:
            named = any(mu.index == i for mu in muts)
            why = (f"mutant {mutant!r} says {b}" if named else
                   f"the wild type has {wt[i]} and mutant {mutant!r} names no change there")
            raise _Bad("sequence_mismatch", f"mutated sequence has {a} at residue {i + 1 + offset}, but {why}")


def _number(text: str, what: str, binary: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if math.isnan(v) or math.isinf(v) or (binary and v not in (0.0, 1.0)):
        raise _Bad("bad_label" if binary else "bad_score",
                   f"{what} {text.strip()!r} is not {'0 or 1' if binary else 'a finite number'}")
    return v


def read_dms(spec: DmsFileConfig | str | os.PathLike[str], *, on_bad_row: BadRowPolicy = "raise") -> DmsAssay:
    """Read and check one substitution file. See the module docstring for the rules."""
    cfg = spec if isinstance(spec, DmsFileConfig) else DmsFileConfig(path=str(spec))
    path = Path(cfg.path)
    header, rows = _open_rows(path, cfg.delimiter)
    c_mut = _column(header, cfg.mutant_column, path, "mutant", True)
    c_score = _column(header, cfg.score_column, path, "score", True)
    assert c_mut is not None and c_score is not None  # required columns: _column raised otherwise
    c_bin = _column(header, cfg.binary_column, path, "binary label", False)
    c_seq = _column(header, cfg.sequence_column, path, "sequence", False)
    c_wt = _column(header, cfg.wild_type_column, path, "wild-type sequence", True)
    if c_seq is None and cfg.wild_type is None and c_wt is None:
        raise DataValidationError(f"cannot determine the wild type: no sequence column {cfg.sequence_column!r} "
                                  f"(columns are {header}) and no wild_type or wild_type_column given",
                                  path=str(path))
    bad: dict[int, _Bad] = {}
    parsed: list[tuple[int, str, tuple[Mutation, ...], float, int | None, str | None, str | None]] = []
    for n, row in enumerate(rows, start=1):
        cells = row + [""] * (len(header) - len(row))
        mutant = cells[c_mut].strip()
        try:
            muts = parse_mutant(mutant, cfg.offset)
            score = _number(cells[c_score], cfg.score_column)
            label = int(_number(cells[c_bin], cfg.binary_column or "", binary=True)) if c_bin is not None else None
            seq = _clean_seq(cells[c_seq], "mutated sequence") if c_seq is not None else None
            row_wt = _clean_seq(cells[c_wt], "wild-type sequence") if c_wt is not None else None
            parsed.append((n, mutant, muts, score, label, seq, row_wt))
        except _Bad as exc:
            bad[n] = exc
    if cfg.wild_type is not None:
        try:
            wt = _clean_seq(cfg.wild_type, "configured wild_type")
        except _Bad as exc:
            raise DataValidationError(exc.detail, path=str(path)) from None
    else:
        derived: list[str | None] = []
        for n, _mutant, muts, _s, _l, seq, row_wt in parsed:
            try:
                derived.append(row_wt if row_wt is not None else _derive(seq or "", muts, cfg.offset))
            except _Bad as exc:
                bad[n] = exc
                derived.append(None)
        wt = _majority(derived) or ""
    kept = []
    for n, mutant, muts, score, label, seq, row_wt in parsed:
        if n in bad:
            continue
        try:
            if row_wt is not None and row_wt != wt:
                raise _Bad("wild_type_mismatch", f"wild-type column differs from the wild type ({wt[:20]}...)")
            _check(wt, seq, muts, cfg.offset, mutant)
            kept.append((n, mutant, muts, score, label))
        except _Bad as exc:
            bad[n] = exc
    skipped = [SkippedRow(n, rows[n - 1][c_mut].strip() if c_mut < len(rows[n - 1]) else "", e.reason, e.detail)
               for n, e in sorted(bad.items())]
    if skipped and on_bad_row == "raise":
        first = skipped[0]
        more = f" ({len(skipped) - 1} more bad rows)" if len(skipped) > 1 else ""
        raise DataValidationError(f"{first.reason}: {first.detail}{more}", path=str(path), record=first.row)
    if cfg.threedi is not None and len(cfg.threedi) != len(wt):
        raise DataValidationError(f"3Di string has {len(cfg.threedi)} letters, the wild type {len(wt)} residues",
                                  path=str(path))
    if not kept:
        counts = dict(Counter(s.reason for s in skipped))
        raise DataValidationError(f"no usable rows ({len(skipped)} bad: {counts})", path=str(path))
    return DmsAssay(
        name=cfg.name or Path(path.name.removesuffix(".gz")).stem, path=str(path), wild_type=wt, offset=cfg.offset,
        mutants=[k[1] for k in kept], mutations=[k[2] for k in kept],
        scores=np.asarray([k[3] for k in kept], dtype=np.float64),
        binary=np.asarray([k[4] for k in kept], dtype=np.int8) if c_bin is not None else None,
        rows=np.asarray([k[0] for k in kept], dtype=np.int64),
        threedi=cfg.threedi, structure=cfg.structure, chain=cfg.chain, skipped=skipped)
