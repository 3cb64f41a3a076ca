"""FASTA header parsing: UniProtKB / UniRef fields, one header at a time or a whole column at once.

    parse_header("sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens OX=9606 GN=HBA1 PE=1 SV=2")
    rows, fields = parse_headers(pa.array([b"UniRef50_Q9K794 AgrB n=2 Tax=Bacillus TaxID=1386 RepID=AGRB"]))

:func:`parse_header` is the definition. :func:`parse_headers` gives the same answer for the usual header
shapes with Arrow compute kernels (RE2 + string kernels, no per-header Python) and leaves the rest to it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Header", "parse_header", "parse_headers", "HEADER_FIELDS"]

_UNIPROT_ID = re.compile(r"^(?P<db>sp|tr)\|(?P<acc>[A-Za-z0-9_.-]+)\|(?P<name>\S+)$")
# a field starts at " KEY=" where KEY is an upper/lower-case word, e.g. " OS=", " n=", " TaxID="
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufffd]")  # C0/C1 controls (not tab), line breaks
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z]*)=")
_UNIREF_ID = re.compile(r"^(?P<db>UniRef(?:50|90|100))_(?P<acc>\S+)$")


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


HEADER_FIELDS = pa.schema([
    ("id", pa.string()), ("accession", pa.string()), ("description", pa.string()), ("db", pa.string()),
    ("n_members", pa.int32()), ("tax", pa.string()), ("taxid", pa.int64()), ("rep_id", pa.string()),
    ("gene", pa.string()), ("pe", pa.int8()), ("sv", pa.int16()),
])


def _fields(rest: str) -> tuple[str, dict[str, str]]:
    """Split ``desc KEY=value KEY=value`` into the description and a field dict (values may hold spaces)."""
    matches = list(_FIELD.finditer(rest))
    if not matches:
        return rest.strip(), {}
    desc = rest[: matches[0].start()].strip()
    fields: dict[str, str] = {}
    for m, nxt in zip(matches, [*matches[1:], None], strict=False):
        fields.setdefault(m.group(1), rest[m.end(): nxt.start() if nxt else len(rest)].strip())
    return desc, fields


# the largest value each numeric field's Parquet column holds (schemas.SEQUENCES: int32, int64, int8, int16)
_INT_MAX = {"n": 2**31 - 1, "TaxID": 2**63 - 1, "OX": 2**63 - 1, "PE": 2**7 - 1, "SV": 2**15 - 1}


def _int(fields: dict[str, str], key: str, ident: str) -> int | None:
    if key not in fields:
        return None
    text = fields[key]
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _INT_MAX[key]:
        raise ValueError(f"{ident}: field {key}= is not an integer in 0..{_INT_MAX[key]}: {text[:40]!r}")
    return int(text)


def parse_header(header: str) -> Header:
    """Parse a FASTA header (without '>') into id, accession and UniProtKB / UniRef fields.

    Raises ``ValueError`` with the reason when the header is malformed (empty id, control characters,
    a UniProtKB id that is not ``db|accession|name``, a numeric field that is not a number).
    """
    if not header or not header.strip():
        raise ValueError("empty header")
    if "\x01" in header:  # NCBI nr merged deflines: the first gives id and fields, the others are description
        first, *others = header.split("\x01")
        if _CONTROL.search(first) or not first.strip() or any(_CONTROL.search(o) for o in others):
            raise ValueError("header has control or non-UTF-8 bytes")
        h = parse_header(first)
        return replace(h, description=" >".join([h.description, *(o.strip() for o in others)]).strip())
    if _CONTROL.search(header):
        raise ValueError("header has control or non-UTF-8 bytes")
    ident, *more = header.split(None, 1)  # the id ends at the first whitespace of any kind (tab, NBSP...)
    rest = more[0] if more else ""
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


# --- a column at once --------------------------------------------------------------------------------------
# A header the fast patterns accept is printable ASCII with no blank at either end, and every '=' in it ends
# a " KEY" (KEY = letters) that _FIELD would find: so splitting on '=' and cutting " KEY" off each piece gives
# _fields' answer. Numbers must be plain digits short enough for their column. Anything else (and every
# malformed header) is left to parse_header; tests check that both agree on fuzzed headers.
_TXT, _TOK = "[ -<>-~]", "[!-<>-~]"  # printable ASCII but '=' (text), the same without ' ' (a word)
_REST = rf"(?: (?:{_TXT}*{_TOK}|(?:{_TXT}* )?[A-Za-z]+=(?:{_TXT}* [A-Za-z]+=)*(?:{_TXT}*{_TOK})?))?$"
_UNIPROT_ID_FAST = rf"^(?:sp|tr)\|[A-Za-z0-9_.-]+\|{_TOK}+"
_UNIREF_ID_FAST = rf"^UniRef(?:50|90|100)_{_TOK}+"
_PLAIN_FAST = r"^[!-~](?:[ -~]*[!-~])?$"  # any other id, then free text (no fields parsed)
_NOT_PLAIN = r"^(?:sp\||tr\||UniRef(?:50|90|100)_)"
_UNIPROT_KEYS = {"OS": "tax", "OX": "taxid", "GN": "gene", "PE": "pe", "SV": "sv"}
_UNIREF_KEYS = {"n": "n_members", "Tax": "tax", "TaxID": "taxid", "RepID": "rep_id"}
_DIGITS = {"n_members": 9, "taxid": 18, "pe": 2, "sv": 4}  # fit int32 / int64 / int8 / int16


def _usual(id_pattern: str, keys: list[str]) -> str:
    """The header with exactly ``keys``, in this order (the layout UniProt writes): checked by one DFA pass."""
    return id_pattern + f" {_TXT}*" + "".join(f" {k}={_TXT}*" for k in keys[:-1]) + f" {keys[-1]}=(?:{_TXT}*{_TOK})?$"


Group = tuple[np.ndarray, np.ndarray, dict[str, pa.Array]]  # rows, rows whose numbers fit, their columns


def _np(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _split_first_word(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``text.partition(" ")`` for every row -> (word, rest.strip())."""
    head = pc.split_pattern(text, " ", max_splits=1)
    flat, offs = head.flatten(), _np(head.offsets)
    rest = flat.take(np.minimum(offs[:-1] + 1, len(flat) - 1))
    rest = pc.if_else(pa.array(np.diff(offs) > 1), pc.ascii_trim(rest, " "), "") if len(flat) else rest
    return flat.take(offs[:-1]), rest


def _keyed(parts: pa.Array, keys: list[str], uniprot: bool) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Columns of headers split on '=' whose pieces name ``keys`` in order: piece i is "value_(i-1) key_i"."""
    piece = [pc.list_element(parts, i) for i in range(len(keys) + 1)]
    head = pc.utf8_slice_codeunits(piece[0], 0, -len(keys[0]) - 1) if keys else piece[0]
    ident, desc = _split_first_word(head)
    ids = pc.split_pattern(ident, "|") if uniprot else pc.split_pattern(ident, "_", max_splits=1)
    cols = {"id": ident, "accession": pc.list_element(ids, 1), "description": desc, "db": pc.list_element(ids, 0)}
    ok = np.ones(len(parts), dtype=bool)
    for key, name in (_UNIPROT_KEYS if uniprot else _UNIREF_KEYS).items():
        if key not in keys:
            continue
        p = keys.index(key) + 1  # the first KEY= wins, as in _fields; its value opens piece p
        value = piece[p] if p == len(keys) else pc.utf8_slice_codeunits(piece[p], 0, -len(keys[p]) - 1)
        value = pc.ascii_trim(value, " ")
        if name in _DIGITS:
            good = pc.and_(pc.utf8_is_digit(value), pc.less_equal(pc.binary_length(value), _DIGITS[name]))
            ok &= _np(good)
            value = pc.if_else(good, value, pa.scalar(None, value.type))
        cols[name] = value
    return ok, cols


def _with_fields(h: pa.Array, uniprot: bool) -> list[Group]:
    """Parse UniProtKB (``uniprot``) or UniRef headers, in groups of rows that name the same keys in order."""
    n = len(h)
    parts = pc.split_pattern(h, "=")  # "id desc K1", "v1 K2", ..., "vN"
    flat, offs = parts.flatten(), _np(parts.offsets)
    last = np.zeros(len(flat), dtype=bool)
    last[offs[1:] - 1] = True
    words = pc.list_element(pc.split_pattern(flat.filter(pa.array(~last)), " ", max_splits=1, reverse=True), 1)
    keyed_offs = (offs - np.arange(n + 1)).astype(np.int32)  # every piece but a row's last ends with " KEY"
    signature = pc.binary_join(pa.ListArray.from_arrays(pa.array(keyed_offs), words), ",").dictionary_encode()
    index, names = _np(signature.indices), signature.dictionary.to_pylist()
    groups = []
    for g, sig in enumerate(names):
        rows = np.flatnonzero(index == g) if len(names) > 1 else np.arange(n)
        ok, cols = _keyed(parts.take(rows) if len(names) > 1 else parts, sig.split(",") if sig else [], uniprot)
        groups.append((rows, ok, cols))
    return groups


def _usual_fields(h: pa.Array, keys: list[str], uniprot: bool) -> list[Group]:
    ok, cols = _keyed(pc.split_pattern(h, "="), keys, uniprot)
    return [(np.arange(len(h)), ok, cols)]


def _plain(h: pa.Array) -> list[Group]:
    ident, desc = _split_first_word(h)
    return [(np.arange(len(h)), np.ones(len(h), dtype=bool), {"id": ident, "accession": ident, "description": desc})]


def _table(cols: dict[str, pa.Array], n: int) -> pa.Table:
    return pa.table([cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in HEADER_FIELDS],
                    schema=HEADER_FIELDS)


_UNIREF_USUAL, _UNIPROT_USUAL, _UNIPROT_NO_GENE = ["n", "Tax", "TaxID", "RepID"], ["OS", "OX", "GN", "PE", "SV"], \
    ["OS", "OX", "PE", "SV"]
_SHAPES = (  # (pattern, parser), tried in order on the headers not parsed yet
    (_usual(_UNIREF_ID_FAST, _UNIREF_USUAL), lambda h: _usual_fields(h, _UNIREF_USUAL, False)),
    (_usual(_UNIPROT_ID_FAST, _UNIPROT_USUAL), lambda h: _usual_fields(h, _UNIPROT_USUAL, True)),
    (_usual(_UNIPROT_ID_FAST, _UNIPROT_NO_GENE), lambda h: _usual_fields(h, _UNIPROT_NO_GENE, True)),
    (_UNIREF_ID_FAST + _REST, lambda h: _with_fields(h, False)),
    (_UNIPROT_ID_FAST + _REST, lambda h: _with_fields(h, True)),
    (_PLAIN_FAST, _plain),
)


def parse_headers(headers: pa.Array) -> tuple[np.ndarray, pa.Table]:
    """Parse a column of raw header lines (binary, the bytes after '>') the way :func:`parse_header` would.

    Returns the positions of the headers it parsed (ascending) and their fields (:data:`HEADER_FIELDS`), row
    for row. The headers left out have an uncommon shape or are malformed: :func:`parse_header` decides those.
    """
    todo = np.arange(len(headers))
    found: list[tuple[np.ndarray, pa.Table]] = []
    for pattern, parse in _SHAPES:
        if not len(todo):
            break
        h = headers.take(todo) if len(todo) < len(headers) else headers
        hit = _np(pc.match_substring_regex(h, pattern))
        if parse is _plain:
            hit &= ~_np(pc.match_substring_regex(h, _NOT_PLAIN))
        if not hit.any():
            continue
        at = np.flatnonzero(hit)
        parsed = np.zeros(len(todo), dtype=bool)
        text = (h.filter(pa.array(hit)) if len(at) < len(h) else h).view(pa.string())  # printable ASCII: UTF-8
        for rows, ok, cols in parse(text):
            table = _table(cols, len(rows))
            found.append((todo[at[rows[ok]]], table.filter(pa.array(ok)) if not ok.all() else table))
            parsed[at[rows[ok]]] = True
        todo = todo[~parsed]
    if not found:
        return np.empty(0, dtype=np.int64), HEADER_FIELDS.empty_table()
    if len(found) == 1:
        return found[0]
    idx = np.concatenate([i for i, _ in found])
    order = np.argsort(idx, kind="stable")
    return idx[order], pa.concat_tables([t for _, t in found]).take(order)
