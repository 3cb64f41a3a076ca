"""Streaming FASTA reader and UniProt/UniRef header parser, per record or columnar per chunk.

    for rec in read_fasta("uniref50.fasta.gz"):
        rec.header, rec.sequence, rec.index

    for chunk in read_chunks("uniref50.fasta.gz"):      # ~4 MiB of whole records at a time
        layout = record_layout(chunk, first=...)         # record boundaries as NumPy offsets
        headers = layout.slices(layout.head_start, layout.head_end)   # pa.BinaryArray, one per record

Decompresses in 4 MiB blocks on a background thread (ISA-L's ``igzip`` when the ``isal`` package is
installed, else the standard ``gzip`` module: same bytes, ~3x faster), so memory stays flat whatever the file
size. Blocks are cut at record boundaries (a ``>`` at the start of a line), never inside a record. Every
record comes out, good or bad: judging a record is the ingest stage's job, so nothing is lost here. Text
before the first ``>`` comes out as a record with ``header=None``. CRLF is tolerated. A truncated or corrupt
gzip stream raises :class:`DataValidationError` naming the file, never a silent short read.
"""
from __future__ import annotations

import gzip
import os
import queue
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pyarrow as pa

from pipeline_lib.errors import DataValidationError
from pipeline_lib.sequences.fasta_headers import Header, parse_header  # noqa: F401  (re-exported: the header half)

_igzip: Any = None
_isal_error: Any = zlib.error
try:  # optional: ISA-L decompresses gzip ~3x faster than zlib, byte for byte the same output
    from isal import igzip as _isal_igzip
    from isal.isal_zlib import error as _isal_zlib_error

    _igzip, _isal_error = _isal_igzip, _isal_zlib_error
except ImportError:  # pragma: no cover - depends on the environment
    pass

__all__ = ["FastaRecord", "Header", "RecordLayout", "read_fasta", "read_chunks", "record_layout", "decode_header",
           "parse_header", "open_maybe_gzip", "DECOMPRESSOR", "named_record"]

BLOCK = 1 << 22  # 4 MiB reads
MAX_RECORD_BYTES = 64 << 20  # one record at most; titin, the longest protein, is 35 kB
DECOMPRESSOR = "isal.igzip" if _igzip is not None else "gzip"
WHITESPACE = b" \t\r\x0b\x0c"  # removed from residue lines (with the line breaks)


@dataclass(frozen=True, slots=True)
class FastaRecord:
    header: str | None       # text after '>' (None: sequence lines before any header)
    sequence: str            # residue lines joined, whitespace removed, case as in the file
    index: int               # 0-based record number within the file


# --- bytes in ------------------------------------------------------------------------------------------

def open_maybe_gzip(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading, transparently gunzipping (detected by magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":  # opened by path, so closing the reader closes the file too
        return cast(BinaryIO, _igzip.open(path, "rb") if _igzip is not None else gzip.open(path, "rb"))
    return open(path, "rb")


def _read_blocks(path: Path, block: int, out: queue.Queue, stop: threading.Event) -> None:
    """Producer thread: decompressed blocks, then ``None`` (end) or the exception that stopped it."""
    item: bytes | BaseException | None = None
    try:
        with open_maybe_gzip(path) as fh:
            while not stop.is_set() and (data := fh.read(block)):
                while not stop.is_set():
                    try:
                        out.put(data, timeout=0.1)
                        break
                    except queue.Full:
                        continue
    except BaseException as exc:  # handed to the consumer, which raises it
        item = exc
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _blocks(path: Path, block: int) -> Iterator[bytes]:
    """Decompressed blocks of ``path``; decompression runs on a thread (zlib and ISA-L release the GIL)."""
    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    worker = threading.Thread(target=_read_blocks, args=(path, block, out, stop), daemon=True,
                              name=f"gunzip {path.name}")
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                if isinstance(item, (EOFError, zlib.error, _isal_error, gzip.BadGzipFile)):
                    raise DataValidationError(f"corrupt or truncated gzip stream ({item})", path=str(path)) from item
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


_COMMENT = re.compile(rb"(?m)^;[^\n]*(?:\n|$)")
BOM = b"\xef\xbb\xbf"


def _clean(piece: bytes, first: bool) -> bytes:
    """A piece without a UTF-8 byte-order mark at the start of the file and without Pearson comment lines
    (starting with ``;``), which are no part of any record."""
    if first and piece.startswith(BOM):
        piece = piece[len(BOM):]
    if piece.startswith(b";") or b"\n;" in piece:
        piece = _COMMENT.sub(b"", piece)
    return piece


def read_chunks(path: str | os.PathLike[str], block: int | None = None) -> Iterator[bytes]:
    """Decompressed text of ``path`` in pieces of whole records (each ends right before a line-start ``>``),
    without a leading byte-order mark and without ``;`` comment lines.

    Pieces are about ``block`` bytes (default :data:`BLOCK`); every piece but the first starts with ``>``; a
    record longer than a block makes a longer piece.
    """
    for i, piece in enumerate(_pieces(path, block)):
        piece = _clean(piece, i == 0)
        if piece:
            yield piece


def _pieces(path: str | os.PathLike[str], block: int | None = None) -> Iterator[bytes]:
    pending: list[bytes | memoryview] = []  # the unfinished piece, as blocks (joined once: no quadratic copying)
    size = 0
    for data in _blocks(Path(path), block or BLOCK):
        cut = data.rfind(b"\n>") + 1
        if cut == 0 and not (data[:1] == b">" and pending and pending[-1][-1:] == b"\n"):
            pending.append(data)
            size += len(data)
            if size > MAX_RECORD_BYTES:  # else memory grows with the file: binary input, CR-only line ends
                raise DataValidationError(f"no record boundary ('\\n>') in {size} bytes, more than any protein "
                                          "record: not a FASTA file, or CR-only line ends?", path=str(path))
            continue
        view = memoryview(data)
        pending.append(view[:cut])
        piece = b"".join(pending)
        if piece:
            yield piece
        pending = [view[cut:]]
        size = len(pending[0])
    piece = b"".join(pending)
    if piece:
        yield piece


# --- records, one at a time ------------------------------------------------------------------------------

def read_fasta(path: str | os.PathLike[str]) -> Iterator[FastaRecord]:
    """Yield every record of a FASTA file (plain or gzip) in file order.

    A corrupt stream raises :class:`DataValidationError` naming the file and the record it broke in.
    """
    index = 0
    first = True
    for chunk in named_record(read_chunks(path), lambda: index):  # noqa: B023 (the index when a read fails)
        pieces = chunk.split(b"\n>")
        if first and not chunk.startswith(b">"):  # text before the first header
            pre = pieces.pop(0).translate(None, WHITESPACE + b"\n")
            if pre:
                yield FastaRecord(None, pre.decode("latin-1"), index)
                index += 1
        elif pieces:
            pieces[0] = pieces[0][1:]
        first = False
        for piece in pieces:
            head, _, body = piece.partition(b"\n")
            yield FastaRecord(decode_header(head), body.translate(None, WHITESPACE + b"\n").decode("latin-1"), index)
            index += 1


def named_record(chunks: Iterator[bytes], record: Callable[[], int]) -> Iterator[bytes]:
    """``chunks``, adding ``record()`` (the record being read) to a :class:`DataValidationError` without one."""
    try:
        yield from chunks
    except DataValidationError as exc:
        if exc.record is not None:
            raise
        raise DataValidationError(exc.reason, path=exc.path, record=record()) from exc


def decode_header(line: bytes) -> str:
    """A header line (without '>' and newline) as text: undecodable bytes become U+FFFD, then stripped."""
    return line.rstrip(b"\r").decode("utf-8", "replace").strip()


# --- records, a chunk at a time (columnar) -------------------------------------------------------------------

@dataclass(frozen=True)
class RecordLayout:
    """Where the records of one chunk lie in ``text``: the chunk with every line break removed.

    Record ``i`` has header ``text[head_start[i]:head_end[i]]`` and residues ``text[head_end[i]:body_end[i]]``
    (still holding any whitespace but ``\\n``). ``preamble`` is the text before the first ``>`` (first chunk only).
    """
    text: bytes
    head_start: np.ndarray   # int64 [n]
    head_end: np.ndarray     # int64 [n]
    body_end: np.ndarray     # int64 [n]
    preamble: bytes

    def __len__(self) -> int:
        return len(self.head_start)

    def slices(self, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
        """``text[starts[i]:ends[i]]`` as one binary array (ranges ascending, not overlapping): one copy."""
        n = len(starts)
        offsets = np.empty(2 * n + 1, dtype=np.int64)
        offsets[0] = 0
        offsets[1::2], offsets[2::2] = starts, ends
        large = len(self.text) >= 2**31 - 1
        whole = pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), 2 * n,
                                      [None, pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                       pa.py_buffer(self.text)])
        return whole.take(np.arange(1, 2 * n, 2))


def record_layout(chunk: bytes, *, first: bool) -> RecordLayout:
    """Find the records of a chunk from :func:`read_chunks` with whole-array operations (no per-line loop)."""
    if b"\r" in chunk and chunk.count(b"\r") == chunk.count(b"\r\n"):
        chunk = chunk.replace(b"\r\n", b"\n")  # plain CRLF: the same records as stripping each line's '\r'
    raw = np.frombuffer(chunk, dtype=np.uint8)
    nl = np.flatnonzero(raw == 10)
    follow = nl + 1
    if len(nl) and follow[-1] == len(raw):
        follow = follow[:-1]
    before = np.flatnonzero(raw[follow] == 62) + 1  # line breaks before each record's '>'
    if chunk[:1] == b">":
        before = np.concatenate(([0], before))
    elif not first:
        raise ValueError("a chunk after the first must start with '>'")
    # with the chunk's edges as line breaks: record i's '>' follows break before[i], its header ends at the next
    breaks = np.concatenate(([-1], nl, [len(chunk)]))
    starts, ends = breaks[before] + 1, breaks[before + 1]
    text = chunk.replace(b"\n", b"")
    head_start = starts + 1 - before
    head_end = ends - before
    body_end = np.append(head_start[1:] - 1, len(text)).astype(np.int64)
    preamble = text[: head_start[0] - 1] if len(head_start) else text
    return RecordLayout(text, head_start.astype(np.int64), head_end.astype(np.int64), body_end,
                        preamble if first and chunk[:1] != b">" else b"")
