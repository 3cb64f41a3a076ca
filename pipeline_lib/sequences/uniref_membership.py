"""UniProt's own cluster membership: which UniRef50 cluster every UniRef90 cluster belongs to, streamed from
``uniref50.xml.gz`` (layout in ../shared/docs/DOMAIN.md) into a Parquet table.

    stats = read_membership("uniref50.xml.gz", "membership.parquet")      # columns child, parent
    stats.entries, stats.pairs, stats.parent_level, stats.release

Each ``<entry id="UniRef50_X">`` lists its representative and members; each member carries its UniRef90 cluster
as a property (``<property type="UniRef90 ID" value="UniRef90_Y"/>``), repeated by every protein of that cluster,
so the pairs are de-duplicated per entry. The file is scanned as bytes, 16 MiB at a time (gzip or plain, memory
flat however large): the entry tags and the properties are found by pattern and ``bytes.find``, not built into a
tree, so a 20 GB file costs little more than its decompression (bench/membership_import.py). A UniRef90 file
(``<UniRef90 ...>`` root) gives UniRef100 -> UniRef90
pairs the same way (``child_property="UniRef100 ID"``). Every entry must name at least one child (the
representative's own property does): an entry without one stops the import, naming it, since a change of layout
would otherwise import nothing silently.
"""
from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_path
from pipeline_lib.progress import Progress

__all__ = ["MembershipStats", "read_membership", "MEMBERSHIP_SCHEMA"]

log = logging.getLogger(__name__)
MEMBERSHIP_SCHEMA = pa.schema([("child", pa.string()), ("parent", pa.string())])
_CHUNK = 16 << 20
_BATCH = 1 << 20
_ROOT = re.compile(rb"<(UniRef(?:50|90|100))\b([^>]*)>")
_VERSION = re.compile(rb'\bversion="([^"]+)"')


@dataclass
class MembershipStats:
    entries: int = 0
    pairs: int = 0
    parent_level: str = ""
    release: str | None = None
    bytes_read: int = 0


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return cast(IO[bytes], gzip.open(path, "rb")) if magic == b"\x1f\x8b" else open(path, "rb")


_ENTRY = re.compile(rb'<entry\s[^>]*?\bid="([^"]+)"[^>]*>')


def _property_patterns(child_property: str) -> tuple[re.Pattern[bytes], bytes, re.Pattern[bytes]]:
    prop = re.escape(child_property.encode())
    fast = re.compile(rb'type="' + prop + rb'" value="([^"]*)"')  # how UniProt writes it
    named = b'"' + child_property.encode() + b'"'
    general = re.compile(rb'<property\s+type="' + prop + rb'"\s+value="([^"]+)"'
                         rb'|<property\s+value="([^"]+)"\s+type="' + prop + rb'"')
    return fast, named, general


def _segments(data: bytes, fast: re.Pattern[bytes], named: bytes,
              general: re.Pattern[bytes]) -> list[tuple[bytes | None, list[bytes]]]:
    """``data`` cut at its entry tags: ``(entry id or None for the text before the first tag, child ids)``. The
    children are found as UniProt writes them (``type`` then ``value``, one space); when that finds fewer than the
    property's name occurs, the chunk is read again with a general pattern (other attribute order or spacing)."""
    parts = _ENTRY.split(data)
    segs: list[tuple[bytes | None, bytes]] = [(None, parts[0])]
    segs += [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
    out = [(eid, fast.findall(seg)) for eid, seg in segs]
    if sum(len(kids) for _, kids in out) != data.count(named):
        out = [(eid, [a or b for a, b in general.findall(seg)]) for eid, seg in segs]
    return out


def read_membership(path: str | Path, out: str | Path, *, child_property: str = "UniRef90 ID") -> MembershipStats:
    """Write ``out`` (Parquet: ``child``, ``parent``) from the UniRef XML at ``path``; see the module docstring."""
    path, out = Path(path), Path(out)
    stats = MembershipStats()
    fast, named, general = _property_patterns(child_property)
    entry: bytes | None = None
    children: set[bytes] = set()
    batch_child: list[str] = []
    batch_parent: list[str] = []

    def handle(data: bytes) -> None:
        nonlocal entry, children
        for eid, kids in _segments(data, fast, named, general):
            if eid is not None:
                close_entry()
                entry, children = eid, set(kids)
            elif kids and entry is None:
                raise DataValidationError(f"a {child_property!r} property before any <entry>", path=str(path))
            else:
                children.update(kids)

    def close_entry() -> None:
        if entry is None:
            return
        if not children:
            raise DataValidationError(f"entry {entry.decode(errors='replace')} names no {child_property!r} "
                                      "property (not a UniRef XML entry as UniProt writes it?)", path=str(path))
        parent = entry.decode("ascii", "replace")
        for child in sorted(children):
            batch_child.append(child.decode("ascii", "replace"))
            batch_parent.append(parent)
        stats.entries += 1
        stats.pairs += len(children)

    try:
        with _open(path) as stream, atomic_path(out) as tmp, pq.ParquetWriter(tmp, MEMBERSHIP_SCHEMA,
                                                                                compression="zstd") as writer:
            carry = b""
            with Progress(f"membership {path.name}", unit="B") as prog:
                while chunk := stream.read(_CHUNK):
                    stats.bytes_read += len(chunk)
                    prog.update(len(chunk))
                    data = carry + chunk
                    cut = data.rfind(b"\n") + 1 or len(data)  # every tag ends before a line end
                    data, carry = data[:cut], data[cut:]
                    if not stats.parent_level and (root := _ROOT.search(data)):
                        stats.parent_level = root.group(1).decode()
                        version = _VERSION.search(root.group(2))
                        stats.release = version.group(1).decode() if version else None
                    handle(data)
                    if len(batch_child) >= _BATCH:
                        writer.write_table(pa.table({"child": batch_child, "parent": batch_parent},
                                                    schema=MEMBERSHIP_SCHEMA))
                        batch_child.clear()
                        batch_parent.clear()
                if carry.strip():
                    handle(carry)
                close_entry()
                writer.write_table(pa.table({"child": batch_child, "parent": batch_parent}, schema=MEMBERSHIP_SCHEMA))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataValidationError(f"cannot read the membership file: {exc}", path=str(path)) from exc
    if stats.entries == 0:
        raise DataValidationError("no <entry> in the membership file (not a UniRef XML file?)", path=str(path))
    log.info("membership %s: %d %s entries, %d %s members (release %s)", path.name, stats.entries,
             stats.parent_level or "UniRef", stats.pairs, child_property.split()[0], stats.release)
    return stats
