"""Parse A3M / A2M / Stockholm alignments into :class:`Msa` (query first, insertions removed) and compute Neff.

    msa = read_a3m("query.a3m")                 # or import_alignment("family.sto")
    msa.depth, msa.query_length, msa.neff       # rows, match columns, Neff at 80% identity
    msa.array()                                 # (depth, query_length) uint8 ASCII codes

A3M (HHblits, ``mmseqs result2msa --msa-format-mode 6``): the first record is the query; upper-case
letters and ``-`` are match columns, lower-case letters (and ``.``, ``*``) are insertions relative to the
query and are removed, as the ESM examples do before tokenizing. A2M / aligned FASTA reads with the same rule
and also drops the columns where the query has a gap, so the query is gap-free as in A3M. Stockholm
(:mod:`pipeline_lib.msa.stockholm`: insert columns from ``#=GC RF`` or the raw text) does the same; its query is
the first row, or the row ``query_id`` names.
Every error is a :class:`DataValidationError` naming the file and the record (0-based index and header).
"""
from __future__ import annotations

import functools
import gzip
import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.stockholm import is_stockholm, stockholm_records
from pipeline_lib.sequences.nucleotide import nucleotide_residues
from pipeline_lib.tokenizer import ESM_TOKENS

__all__ = ["Msa", "HeaderStats", "parse_a3m", "read_a3m", "import_alignment", "alignment_format",
           "remove_insertions",
           "parse_mmseqs_header", "sequence_weights", "compute_neff", "ALIGNED_LETTERS"]

# residue letters of the ESM alphabet plus the gap; '.' is an ESM token but in A3M/A2M it marks insert gaps
ALIGNED_LETTERS = "".join(t for t in ESM_TOKENS if len(t) == 1 and t != ".")
_DELETE_INSERTIONS = str.maketrans("", "", string.ascii_lowercase + ".*\x00")
_DELETE_ALLOWED = str.maketrans("", "", ALIGNED_LETTERS)
NEFF_IDENTITY = 0.8

Format = Literal["a3m", "a2m", "stockholm"]
_SUFFIX_FORMATS: dict[str, Format] = {".a3m": "a3m", ".a2m": "a2m", ".fasta": "a2m", ".fa": "a2m",
                                      ".afa": "a2m", ".sto": "stockholm", ".sth": "stockholm", ".stk": "stockholm",
                                      ".stockholm": "stockholm"}


@dataclass(frozen=True, slots=True)
class HeaderStats:
    """Alignment statistics from an mmseqs ``result2msa`` header (``target bits fident evalue qstart qend
    qlen tstart tend tlen``, tab separated, 0-based starts)."""

    target: str
    bits: float
    identity: float
    evalue: float
    coverage: float


def parse_mmseqs_header(header: str) -> HeaderStats | None:
    """Statistics of one mmseqs-style A3M header, or None when the header is not in that format."""
    parts = header.split("\t")
    if len(parts) != 10:
        return None
    try:
        bits, ident, evalue = float(parts[1]), float(parts[2]), float(parts[3])
        qstart, qend, qlen, _tstart, _tend, _tlen = (int(x) for x in parts[4:])
    except ValueError:
        return None
    coverage = (qend - qstart + 1) / qlen if qlen > 0 else math.nan
    return HeaderStats(parts[0], bits, ident, evalue, coverage)


@dataclass(frozen=True)
class Msa:
    """One alignment: ``rows[0]`` is the query; every row has ``query_length`` match columns."""

    query_id: str
    rows: tuple[str, ...]
    headers: tuple[str, ...]
    source: str = ""

    @property
    def depth(self) -> int:
        return len(self.rows)

    @property
    def query_length(self) -> int:
        return len(self.rows[0])

    @property
    def query(self) -> str:
        return self.rows[0]

    def array(self) -> np.ndarray:
        """ASCII codes, shape (depth, query_length), uint8."""
        return np.frombuffer("".join(self.rows).encode("ascii"), dtype=np.uint8).reshape(
            self.depth, self.query_length)

    @functools.cached_property
    def neff(self) -> float:
        """Effective number of sequences at 80% identity (see :func:`compute_neff`), computed once."""
        return compute_neff(self.array())

    def header_stats(self) -> list[HeaderStats | None]:
        return [parse_mmseqs_header(h) for h in self.headers]

    def take(self, indices: np.ndarray | list[int]) -> Msa:
        """A new Msa with the rows at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return Msa(self.query_id, tuple(self.rows[i] for i in idx), tuple(self.headers[i] for i in idx),
                   self.source)

    def to_a3m(self) -> str:
        return "".join(f">{h}\n{r}\n" for h, r in zip(self.headers, self.rows, strict=False))


def remove_insertions(seq: str) -> str:
    """Drop A3M/A2M insertions: lower-case letters, ``.`` and ``*``."""
    return seq.translate(_DELETE_INSERTIONS)


# HH-suite's annotation rows (hhsuite user guide, "A3M format"): secondary structure, solvent accessibility and
# the consensus are no sequences of the alignment, and none of them is its query
HHSUITE_ROWS = frozenset({"ss_dssp", "ss_pred", "ss_conf", "sa_dssp", "Consensus"})


def _records(text: str, source: str) -> list[tuple[str, str]]:
    """(header, raw sequence) pairs; '#' comment lines before the first record and HH-suite's annotation rows
    (``>ss_pred``, ``>ss_conf``, ``>ss_dssp``, ``>sa_dssp``, ``>Consensus``) are skipped."""
    records: list[tuple[str, list[str]]] = []
    skipping = False
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip().replace("\x00", "")
        if not line:
            continue
        if line.startswith(">"):
            skipping = line[1:].split(maxsplit=1)[0] in HHSUITE_ROWS if line[1:].split() else False
            if not skipping:
                records.append((line[1:], []))
        elif skipping:
            continue
        elif records:
            records[-1][1].append(line)
        elif not line.startswith("#"):
            raise DataValidationError(f"line {lineno}: sequence data before the first '>' header",
                                      path=source)
    return [(h, "".join(parts)) for h, parts in records]


def _build(records: list[tuple[str, str]], source: str, query_id: str | None) -> Msa:
    if not records:
        raise DataValidationError("no '>' records: no query sequence", path=source)
    rows, headers = [], []
    length = -1
    for i, (header, raw) in enumerate(records):
        row = remove_insertions(raw)
        bad = row.translate(_DELETE_ALLOWED)
        if bad:
            raise DataValidationError(
                f"characters outside the alphabet {sorted(set(bad))!r} (allowed: {ALIGNED_LETTERS} and "
                f"lower-case insertions)", path=source, record=f"{i} ({header[:60]!r})")
        if i == 0:
            if not row.strip("-"):
                raise DataValidationError("no query sequence (first record has no residues)",
                                          path=source, record=f"0 ({header[:60]!r})")
            length = len(row)
        elif len(row) != length:
            raise DataValidationError(
                f"ragged alignment: {len(row)} match columns after removing insertions, query has {length}",
                path=source, record=f"{i} ({header[:60]!r})")
        rows.append(row)
        headers.append(header)
    residues = "".join(r.replace("-", "") for r in rows)
    nucleotide = nucleotide_residues(residues)  # the MSA table holds protein alignments
    if nucleotide is not None:
        raise DataValidationError(f"a nucleotide alignment: {nucleotide} of {len(residues)} residues are A, C, G, "
                                  "T, U or N; MSAs here are of proteins", path=source)
    qid = query_id or (headers[0].split()[0] if headers[0].split() else Path(source).stem)
    return Msa(qid, tuple(rows), tuple(headers), source)


def _without_query_gaps(records: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop the match columns where the query (first row) has a gap, so that the query is gap-free as in A3M."""
    if not records:
        return records
    rows = [remove_insertions(r) for _, r in records]
    keep = np.frombuffer(rows[0].encode("ascii", "replace"), dtype=np.uint8) != ord("-")
    if keep.all():
        return records
    out = []
    for (header, raw), row in zip(records, rows, strict=True):
        codes = np.frombuffer(row.encode("ascii", "replace"), dtype=np.uint8)
        out.append((header, codes[keep].tobytes().decode("ascii") if len(codes) == len(keep) else raw))
    return out  # a ragged row stays as it was: _build names it


def _query_first(records: list[tuple[str, str]], query_id: str | None) -> list[tuple[str, str]]:
    """With ``query_id`` naming a row other than the first (Stockholm has no query convention), move it first."""
    if query_id is None:
        return records
    at = next((i for i, (h, _) in enumerate(records) if h.split(maxsplit=1)[:1] == [query_id]), 0)
    return [records[at], *records[:at], *records[at + 1:]]


def parse_a3m(text: str, *, source: str = "<string>", query_id: str | None = None,
              drop_query_gaps: bool = False) -> Msa:
    """Parse A3M (or A2M) text. ``query_id`` defaults to the query header's first word, else the file stem.
    ``drop_query_gaps`` removes the columns where the query has a gap (A2M / aligned FASTA)."""
    if not text.strip():
        raise DataValidationError("empty file: no alignment records", path=source)
    records = _records(text, source)
    return _build(_without_query_gaps(records) if drop_query_gaps else records, source, query_id)


def _read_text(p: Path) -> str:
    try:
        with open(p, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        return (gzip.decompress(p.read_bytes()) if gz else p.read_bytes()).decode()  # .a3m.gz as ColabFold writes
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise DataValidationError(f"cannot read alignment: {exc}", path=str(p)) from exc


def read_a3m(path: str | Path, *, query_id: str | None = None, drop_query_gaps: bool = False) -> Msa:
    p = Path(path)
    return parse_a3m(_read_text(p), source=str(p), query_id=query_id, drop_query_gaps=drop_query_gaps)


def alignment_format(path: str | Path) -> Format:
    """``stockholm`` for a ``# STOCKHOLM`` header whatever the suffix, else by suffix (``.gz`` looked through);
    unknown suffixes are A3M."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(p, "rb") as gz:
                head = gz.read(64)
    except (OSError, EOFError, gzip.BadGzipFile):
        head = b""
    if is_stockholm(head):
        return "stockholm"
    name = p.name.lower().removesuffix(".gz")
    return _SUFFIX_FORMATS.get(Path(name).suffix, "a3m")


def import_alignment(path: str | Path, fmt: Format | None = None, *, query_id: str | None = None) -> Msa:
    """Read an A3M, A2M / aligned FASTA or Stockholm file (plain or gzipped); the format from ``fmt``, a
    ``# STOCKHOLM`` header, or the suffix. A2M and Stockholm drop the columns where the query has a gap."""
    p = Path(path)
    fmt = fmt or alignment_format(p)
    if fmt == "a3m":
        return read_a3m(p, query_id=query_id)
    if fmt == "a2m":
        return read_a3m(p, query_id=query_id, drop_query_gaps=True)
    if not p.is_file() or p.stat().st_size == 0:
        raise DataValidationError("empty or missing file: no alignment records", path=str(p))
    records = _query_first(stockholm_records(_read_text(p), source=str(p)), query_id)
    return _build(_without_query_gaps(records), str(p), query_id)


def _onehot(codes: np.ndarray) -> np.ndarray:
    """(n, L) symbol codes -> (n, L * K) float32 one-hot over the K symbols present."""
    symbols, inverse = np.unique(codes, return_inverse=True)
    n, length = codes.shape
    k = len(symbols)
    out = np.zeros((n, length * k), dtype=np.float32)
    cols = np.arange(length)[None, :] * k + inverse.reshape(n, length)
    out[np.arange(n)[:, None], cols] = 1.0
    return out


def sequence_weights(codes: np.ndarray, threshold: float = NEFF_IDENTITY, max_cells: int = 1 << 24) -> np.ndarray:
    """1 / (number of rows with identity >= ``threshold``, itself included), shape (depth,).

    Identity is the fraction of the L columns where two rows agree, gaps included (1 - normalised
    Hamming distance, as in EVcouplings). Match counts are one-hot matrix products (one GEMM when the
    MSA is small), blocked over rows and columns so no temporary exceeds ``max_cells`` float32 cells.
    """
    n, length = codes.shape
    if n == 0 or length == 0:
        return np.ones(n, dtype=np.float64)
    need = math.ceil(threshold * length - 1e-6) - 0.5  # identity >= threshold <=> matches >= need
    symbols = max(1, len(np.unique(codes)))
    row_block = max(1, min(n, max_cells // n))
    col_block = max(1, min(length, max_cells // (n * symbols)))
    neighbours = np.empty(n, dtype=np.int64)
    for r0 in range(0, n, row_block):
        rows = slice(r0, min(n, r0 + row_block))
        matches = np.zeros((rows.stop - r0, n), dtype=np.float32)
        for c0 in range(0, length, col_block):
            onehot = _onehot(codes[:, c0:c0 + col_block])
            matches += onehot[rows] @ onehot.T
        neighbours[rows] = (matches >= need).sum(axis=1)
    return 1.0 / neighbours


def compute_neff(codes: np.ndarray, threshold: float = NEFF_IDENTITY) -> float:
    """Neff = sum of :func:`sequence_weights`; 1 <= Neff <= depth."""
    return float(sequence_weights(codes, threshold).sum())
