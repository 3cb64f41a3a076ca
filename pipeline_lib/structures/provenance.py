"""Whether a structure file is a predicted model (its B-factor column then holds pLDDT), from its content.

    predicted_pdb(data)            # PDB text
    predicted_cif(data, block)     # mmCIF text and its gemmi block

An experimental method (``EXPDTA`` / ``_exptl.method``) always means no. Otherwise yes for ModelCIF quality
categories, ColabFold's placeholder revision date, a ``PARENT`` record (AlphaFold / OpenFold / ESMFold writers), or
a predictor named in the header text. Used by :mod:`pipeline_lib.structures.parse` (``Chain.predicted``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import gemmi

__all__ = ["predicted_pdb", "predicted_cif"]

_PREDICTORS = re.compile(rb"ALPHAFOLD|COLABFOLD|ESMFOLD|OPENFOLD|ROSETTAFOLD|OMEGAFOLD", re.I)
_EXPERIMENTAL = re.compile(rb"X-RAY|NMR|ELECTRON|NEUTRON|FIBER|SOLID-STATE|SOLUTION SCATTERING|POWDER|INFRARED|"
                           rb"FLUORESCENCE|EPR", re.I)
_PDB_TEXT_RECORDS = (b"HEADER", b"TITLE ", b"COMPND", b"KEYWDS", b"EXPDTA", b"REMARK")
_COLABFOLD_REVISION = "1971-01-01"  # ColabFold's mmCIF writer (CFMMCIFIO) stamps every model with this date
_HEADER_SCAN = 4 << 20  # bytes of header text searched for a predictor's name


def _experimental(methods: Iterable[bytes | str]) -> bool:
    return any(_EXPERIMENTAL.search(m if isinstance(m, bytes) else m.encode()) for m in methods)


def predicted_pdb(data: bytes) -> bool:
    """A predicted model by its header: no experimental EXPDTA, and a ``PARENT`` record (AlphaFold / OpenFold /
    ESMFold writers) or a predictor named in the HEADER, TITLE, COMPND, KEYWDS, EXPDTA or REMARK records."""
    atoms = min((i for i in (data.find(b"\nATOM"), data.find(b"\nHETATM")) if i >= 0), default=len(data))
    lines = data[: min(atoms, _HEADER_SCAN)].splitlines()
    if _experimental(ln[6:] for ln in lines if ln.startswith(b"EXPDTA")):
        return False
    return any(ln.startswith(b"PARENT") or (ln[:6] in _PDB_TEXT_RECORDS and _PREDICTORS.search(ln))
               for ln in lines)


def predicted_cif(data: bytes, block: gemmi.cif.Block) -> bool:
    """A predicted model by its content: no experimental ``_exptl.method``, and ModelCIF quality categories
    (``_ma_qa_metric*``, written by AlphaFold DB and AlphaFold 2.3+), ColabFold's placeholder revision date, or a
    predictor named before the atom table (``_software``, ``_struct.title``, citations)."""
    if _experimental(block.find_values("_exptl.method")):
        return False
    if any(c.startswith("_ma_qa_metric") for c in block.get_mmcif_category_names()):
        return True
    if _COLABFOLD_REVISION in block.find_values("_pdbx_audit_revision_history.revision_date"):
        return True
    atoms = data.find(b"_atom_site.")
    return _PREDICTORS.search(data[: min(atoms if atoms >= 0 else len(data), _HEADER_SCAN)]) is not None
