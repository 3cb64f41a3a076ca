"""Is a structure file whole? The checks gemmi cannot make: it reads a file cut between two records or rows
without complaint. Used by :mod:`pipeline_lib.structures.parse`, which raises what these raise.

- PDB: the last ATOM/HETATM record cut in the middle; a wwPDB file (first record ``HEADER``) without ``END``.
- mmCIF: the atom table cut inside a row (:func:`cut_atom_row`, from gemmi's value-count error), or, as the file's
  last category, lacking a chain ``_struct_asym`` lists or ending before a residue the file lists as modelled.
"""
from __future__ import annotations

import contextlib
import re

import gemmi

from pipeline_lib.errors import DataValidationError

__all__ = ["check_pdb_complete", "check_cif_complete", "cut_atom_row"]

_PDB_COORD_END = 66  # an ATOM/HETATM record is complete up to the B-factor at column 66
_END_RECORD = re.compile(rb"^END\s*$", re.M)


def check_pdb_complete(name: str, data: bytes) -> None:
    """gemmi reads a truncated PDB file without complaint: catch a record cut in the middle, and a wwPDB
    file (first record ``HEADER``) that lost its mandatory ``END`` record."""
    last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    if last[:6] in (b"ATOM  ", b"HETATM") and len(last.rstrip(b"\r")) < _PDB_COORD_END and not data.endswith(b"\n"):
        raise DataValidationError("truncated file: the last ATOM/HETATM record is incomplete", path=name)
    if data.lstrip()[:6] == b"HEADER" and not _END_RECORD.search(data):
        raise DataValidationError("truncated file: it starts with a HEADER record but has no END record", path=name)


def check_cif_complete(name: str, data: bytes, block: gemmi.cif.Block) -> None:
    """A file cut between two complete ``_atom_site`` rows is valid CIF, and valid files end in every layout
    (PyMOL leaves the atom table open, others close it with ``#``). The atom records are cut when the atom table
    is the last category and lacks a chain the file lists (``_struct_asym``: every one has atoms) or ends before a
    residue the file lists as modelled (``_pdbx_poly_seq_scheme`` rows with a monomer, ``_ma_qa_metric_local``
    rows of a ModelCIF model). A file that lists neither cannot be told from a complete one."""
    items = list(block)
    last = items[-1] if items else None
    if last is None or last.loop is None or not last.loop.tags[0].lower().startswith("_atom_site."):
        return  # the atom table is followed by another category: it ended where its writer ended it
    declared_chains = set(block.find_values("_struct_asym.id"))
    expected = _declared_modelled_ends(block)
    if not expected and not declared_chains:
        return  # nothing in the file says how far its atom table goes
    seen: dict[str, int] = {}
    for asym, seq in block.find("_atom_site.", ["label_asym_id", "label_seq_id"]):
        with contextlib.suppress(ValueError):
            seen[asym] = max(seen.get(asym, 0), int(seq))
        seen.setdefault(asym, 0)
    for asym in sorted(declared_chains - set(seen)):
        raise DataValidationError(f"truncated file: the _atom_site table (the file's last category) has no atom of "
                                  f"chain {asym}, which _struct_asym lists", path=name)
    for asym, end in expected.items():
        if seen.get(asym, 0) < end:
            raise DataValidationError(
                f"truncated file: the _atom_site table (the file's last category) ends before residue {end} of "
                f"chain {asym}, which the file lists as modelled", path=name)


def _declared_modelled_ends(block: gemmi.cif.Block) -> dict[str, int]:
    """label_asym_id -> the last label_seq_id the file declares as modelled."""
    out: dict[str, int] = {}
    declared = [(r.str(0), r.str(1)) for r in block.find("_pdbx_poly_seq_scheme.", ["asym_id", "seq_id",
                                                                                    "pdb_mon_id"])
                if r.str(2) not in ("?", ".")]
    declared += [(r.str(0), r.str(1)) for r in block.find("_ma_qa_metric_local.", ["label_asym_id",
                                                                                    "label_seq_id"])]
    for asym, seq in declared:
        with contextlib.suppress(ValueError):
            out[asym] = max(out.get(asym, 0), int(seq))
    return out


def cut_atom_row(data: bytes, exc: Exception) -> bool:
    """gemmi's value-count error on the atom table, and no other category after it: a row cut in the middle."""
    if "Wrong number of values in loop _atom_site" not in str(exc):
        return False
    tail = data[data.rfind(b"_atom_site."):]
    return re.search(rb"^\s*(loop_|_(?!atom_site\.)|data_)", tail, re.M) is None
