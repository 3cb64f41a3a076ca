"""Structure-aware (SaProt) token rows: pLDDT-masked 3Di strings joined to the ingested sequences.

    records = structure_records(encode_structures(paths, "mini3di"), source="afdb")
    table, quarantine = saprot_rows(sequences, records, levels=["c90", "c50"])

- 3Di letters are lower case; residues with pLDDT < ``threshold`` (70) become ``#``; a sequence without
  structure gets ``#`` at every position (SaProt, westlake-repl/SaProt ``utils/foldseek_util.py``).
- Structures join sequences by UniProt accession: AlphaFold DB names ``AF-<ACC>-F<n>-model_v<N>`` carry it;
  other chains join by their chain name. A sequence record's key is its ``accession`` (else its ``id``
  without a ``UniRef50_``-style prefix).
- When the modelled sequence differs from the database sequence the record is quarantined with the reason,
  or (``on_mismatch="align"``) the 3Di string is carried over by a global alignment; database residues
  without an aligned model residue get ``#``.

Rows follow :func:`pipeline_lib.schemas.structure_shard_schema`; quarantine records follow
:data:`pipeline_lib.schemas.QUARANTINE`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipeline_lib import schemas
from pipeline_lib.structures.threedi import EncodedChain
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET

__all__ = ["AfdbName", "StructureRecord", "parse_afdb_name", "mask_threedi", "no_structure",
           "structure_records", "global_align", "saprot_rows", "MASK"]

MASK = "#"
_AFDB_NAME = re.compile(r"^AF-(?P<acc>[A-Za-z0-9]+(?:-\d+)?)-F(?P<frag>\d+)-model_v(?P<ver>\d+)")
_UNIREF_PREFIX = re.compile(r"^UniRef\d+_")
MAX_ALIGN_CELLS = 50_000_000  # beyond this a mismatch is quarantined rather than aligned (memory)


@dataclass(frozen=True)
class AfdbName:
    accession: str
    fragment: int
    version: str  # "v4", "v6", ...


@dataclass(frozen=True)
class StructureRecord:
    """One structure ready to join: masked lower-case 3Di string, same length as ``aa``."""

    key: str
    name: str
    aa: str
    threedi: str
    mean_plddt: float | None
    source: str
    version: str | None
    file: str | None = None  # the structure file (or archive member) the chain came from


def parse_afdb_name(name: str) -> AfdbName | None:
    """``AF-P69905-F1-model_v4_A`` -> AfdbName("P69905", 1, "v4"); None for other names."""
    m = _AFDB_NAME.match(name.replace("\\", "/").rsplit("/", 1)[-1])
    return AfdbName(m["acc"], int(m["frag"]), f"v{m['ver']}") if m else None


def mask_threedi(threedi: str, plddt: np.ndarray | None, threshold: float = 70.0) -> str:
    """Lower-case ``threedi``; positions with ``plddt < threshold`` become ``#`` (no pLDDT: no masking)."""
    low = threedi.lower()
    if plddt is None:
        return low
    if len(plddt) != len(threedi):
        raise ValueError(f"pLDDT has {len(plddt)} values for a 3Di string of {len(threedi)}")
    chars = np.frombuffer(low.encode("ascii"), dtype=np.uint8).copy()
    chars[np.asarray(plddt) < threshold] = ord(MASK)
    return chars.tobytes().decode("ascii")


def no_structure(length: int) -> str:
    """The 3Di string of a sequence without structure: ``#`` at every position."""
    return MASK * length


def structure_records(chains: Iterable[EncodedChain], *, source: str, version: str | None = None,
                      threshold: float = 70.0) -> dict[str, StructureRecord]:
    """Masked structures keyed by UniProt accession (AFDB names; fragment F1 only) or chain name."""
    out: dict[str, StructureRecord] = {}
    for ch in chains:
        afdb = parse_afdb_name(ch.name)
        if afdb is not None and afdb.fragment != 1:
            continue  # long proteins are split in overlapping fragments; F1 alone is not the sequence
        key = afdb.accession if afdb else ch.name
        mean = float(np.mean(ch.plddt)) if ch.plddt is not None and len(ch.plddt) else None
        rec = StructureRecord(key, ch.name, ch.aa, mask_threedi(ch.threedi, ch.plddt, threshold), mean, source,
                              version or (afdb.version if afdb else None), ch.source or None)
        out.setdefault(key, rec)
    return out


def global_align(a: str, b: str, *, match: int = 2, mismatch: int = -1, gap: int = -2) -> list[tuple[int, int]]:
    """Needleman-Wunsch (linear gaps) of ``a`` and ``b``; returns aligned index pairs (i, j), in order.

    Each row is computed with NumPy; horizontal gaps via a running maximum (linear gap cost).
    """
    n, m = len(a), len(b)
    av = np.frombuffer(a.encode("ascii", "replace"), dtype=np.uint8)
    bv = np.frombuffer(b.encode("ascii", "replace"), dtype=np.uint8)
    idx = np.arange(m + 1, dtype=np.int64)
    H = np.empty((n + 1, m + 1), dtype=np.int64)
    H[0] = gap * idx
    for i in range(1, n + 1):
        s = np.where(bv == av[i - 1], match, mismatch)
        row = np.empty(m + 1, dtype=np.int64)
        row[0] = gap * i
        row[1:] = np.maximum(H[i - 1, :-1] + s, H[i - 1, 1:] + gap)
        H[i] = np.maximum.accumulate(row - gap * idx) + gap * idx
    pairs: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 and j > 0:
        if H[i, j] == H[i - 1, j - 1] + (match if a[i - 1] == b[j - 1] else mismatch):
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif H[i, j] == H[i - 1, j] + gap:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def _record_key(rec: Mapping[str, Any]) -> str:
    return rec.get("accession") or _UNIREF_PREFIX.sub("", rec["id"])


def _project(seq: str, st: StructureRecord, min_identity: float) -> tuple[str | None, str]:
    """3Di for ``seq`` from a structure of a different sequence, or (None, why not)."""
    if len(seq) * len(st.aa) > MAX_ALIGN_CELLS:
        return None, f"too long to align ({len(seq)} x {len(st.aa)} residues)"
    pairs = global_align(st.aa, seq)
    identity = sum(st.aa[i] == seq[j] for i, j in pairs) / max(len(seq), 1)
    if identity < min_identity:
        return None, f"alignment identity {identity:.3f} < {min_identity}"
    out = [MASK] * len(seq)
    for i, j in pairs:
        out[j] = st.threedi[i]
    return "".join(out), f"aligned, identity {identity:.3f}"


def _quarantine(rec: Mapping[str, Any], st: StructureRecord, reason: str, detail: str) -> dict[str, Any]:
    """The structure file is the source (the record's own file and line go into the detail)."""
    seq_from = rec.get("source_file")
    record = rec.get("source_record")
    where = f" (sequence from {seq_from}" + (f", record {record}" if record is not None else "")
    return {"stage": "structures", "source_file": st.file or seq_from, "source_record": None,
            "id": rec["id"], "reason": reason, "detail": f"{st.name}: {detail}" + (where + ")" if seq_from else ""),
            "raw": st.aa[:200]}


def _row(rec: Mapping[str, Any], levels: list[str], threedi: str, st: StructureRecord | None) -> dict[str, Any]:
    seq = rec["sequence"]
    row = {"id": rec["id"], "seq_hash": rec["seq_hash"], "length": len(seq),
           "tokens": ESM_ALPHABET.encode_array(seq).tobytes(), "aa_seq": seq, "threedi_seq": threedi,
           "sa_tokens": SAPROT_ALPHABET.encode_pairs(seq, threedi),
           "mean_plddt": st.mean_plddt if st else None, "structure_source": st.source if st else None,
           "structure_version": st.version if st else None}
    row.update({f"cluster_{lv}": rec[f"cluster_{lv}"] for lv in levels})
    return row


def saprot_rows(sequences: Iterable[Mapping[str, Any]], structures: Mapping[str, StructureRecord], *,
                levels: list[str], on_mismatch: Literal["quarantine", "align"] = "quarantine",
                min_identity: float = 0.9) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Rows of :func:`structure_shard_schema` for ``sequences`` (dicts with id, seq_hash, sequence,
    optional accession and ``cluster_<level>``), plus quarantine records for structure mismatches."""
    rows, quarantined = [], []
    for rec in sequences:
        seq = rec["sequence"]
        st = structures.get(_record_key(rec))
        if st is None:
            rows.append(_row(rec, levels, no_structure(len(seq)), None))
            continue
        if st.aa == seq:
            rows.append(_row(rec, levels, st.threedi, st))
            continue
        detail = f"modelled sequence ({len(st.aa)} residues) differs from the database sequence ({len(seq)})"
        if on_mismatch == "align":
            threedi, why = _project(seq, st, min_identity)
            if threedi is not None:
                rows.append(_row(rec, levels, threedi, st))
                continue
            quarantined.append(_quarantine(rec, st, "structure_alignment_failed", f"{detail}; {why}"))
        else:
            quarantined.append(_quarantine(rec, st, "structure_sequence_mismatch", detail))
    return pa.Table.from_pylist(rows, schema=schemas.structure_shard_schema(levels)), quarantined
