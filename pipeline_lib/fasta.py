"""Streaming FASTA reader and UniProt/UniRef header parser.

    for rec in read_fasta("uniref50.fasta.gz"):
        rec.header, rec.sequence, rec.index

Reads plain or gzip input in large blocks (memory stays flat whatever the file size), tolerates CRLF,
and yields every record, good or bad: judging a record is the ingest stage's job, so nothing is lost
here. Text before the first ``>`` comes out as a record with ``header=None``. A truncated or corrupt
gzip stream raises :class:`DataValidationError` naming the file, never a silent short read.
"""
from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline_lib.errors import DataValidationError

__all__ = ["FastaRecord", "Header", "read_fasta", "parse_header", "open_maybe_gzip"]

BLOCK = 1 << 22  # 4 MiB reads

_UNIPROT_ID = re.compile(r"^(?P<db>sp|tr)\|(?P<acc>[A-Za-z0-9_.-]+)\|(?P<name>\S+)$")
# a field starts at " KEY=" where KEY is an upper/lower-case word, e.g. " OS=", " n=", " TaxID="
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\ufffd]")
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z]*)=")
_UNIREF_ID = re.compile(r"^(?P<db>UniRef(?:50|90|100))_(?P<acc>\S+)$")


@dataclass(frozen=True, slots=True)
class FastaRecord:
    header: str | None       # text after '>' (None: sequence lines before any header)
    sequence: str            # residue lines joined, whitespace removed, case as in the file
    index: int               # 0-based record number within the file


@dataclass(frozen=True, slots=True)
class Header:
    id: str
    accession: str
    description: str
    db: str | None = None
    n_members: int | None = None
    tax: str | None = None
    taxid: int | None = None
    rep_id: str | None = None
    gene: str | None = None
    pe: int | None = None
    sv: int | None = None


def open_maybe_gzip(path: str | os.PathLike[str]):
    """Open ``path`` for binary reading, transparently gunzipping (detected by magic bytes)."""
    fh = open(path, "rb")
    magic = fh.read(2)
    fh.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh, mode="rb")
    return fh


def _blocks(path: Path) -> Iterator[bytes]:
    try:
        with open_maybe_gzip(path) as fh:
            while block := fh.read(BLOCK):
                yield block
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataValidationError(f"corrupt or truncated gzip stream ({exc})", path=str(path)) from exc


def _lines(path: Path) -> Iterator[bytes]:
    rest = b""
    for block in _blocks(path):
        block = rest + block
        lines = block.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


_WS = b" \t\r\x0b\x0c"


def read_fasta(path: str | os.PathLike[str]) -> Iterator[FastaRecord]:
    """Yield every record of a FASTA file (plain or gzip) in file order."""
    path = Path(path)
    header: str | None = None
    chunks: list[bytes] = []
    index = 0
    started = False
    for line in _lines(path):
        if line.startswith(b">"):
            if started:
                yield FastaRecord(header, _join(chunks), index)
                index += 1
            header = line[1:].rstrip(b"\r").decode("utf-8", "replace").strip()
            chunks = []
            started = True
        else:
            stripped = line.translate(None, _WS)
            if stripped:
                chunks.append(stripped)
                started = True
    if started:
        yield FastaRecord(header, _join(chunks), index)


def _join(chunks: list[bytes]) -> str:
    # latin-1 keeps one char per byte, so binary garbage stays visible to the validator
    return b"".join(chunks).decode("latin-1")


def _fields(rest: str) -> tuple[str, dict[str, str]]:
    """Split ``desc KEY=value KEY=value`` into the description and a field dict (values may hold spaces)."""
    matches = list(_FIELD.finditer(rest))
    if not matches:
        return rest.strip(), {}
    desc = rest[: matches[0].start()].strip()
    fields: dict[str, str] = {}
    for m, nxt in zip(matches, [*matches[1:], None]):
        fields.setdefault(m.group(1), rest[m.end(): nxt.start() if nxt else len(rest)].strip())
    return desc, fields


def _int(fields: dict[str, str], key: str, ident: str) -> int | None:
    if key not in fields:
        return None
    try:
        return int(fields[key])
    except ValueError:
        raise ValueError(f"{ident}: field {key}= is not an integer: {fields[key]!r}") from None


def parse_header(header: str) -> Header:
    """Parse a FASTA header (without '>') into id, accession and UniProtKB / UniRef fields.

    Raises ``ValueError`` with the reason when the header is malformed (empty id, control characters,
    a UniProtKB id that is not ``db|accession|name``, a numeric field that is not a number).
    """
    if not header or not header.strip():
        raise ValueError("empty header")
    if _CONTROL.search(header):
        raise ValueError("header has control or non-UTF-8 bytes")
    ident, _, rest = header.strip().partition(" ")
    ident = ident.strip()
    m = _UNIPROT_ID.match(ident)
    if ident.startswith(("sp|", "tr|")) and not m:
        raise ValueError(f"UniProtKB id {ident!r} is not db|accession|name")
    if m:
        desc, f = _fields(rest)
        return Header(ident, m["acc"], desc, db=m["db"], tax=f.get("OS"), taxid=_int(f, "OX", ident),
                      gene=f.get("GN"), pe=_int(f, "PE", ident), sv=_int(f, "SV", ident))
    m = _UNIREF_ID.match(ident)
    if m:
        desc, f = _fields(rest)
        return Header(ident, m["acc"], desc, db=m["db"], n_members=_int(f, "n", ident), tax=f.get("Tax"),
                      taxid=_int(f, "TaxID", ident), rep_id=f.get("RepID"))
    return Header(ident, ident, rest.strip())
