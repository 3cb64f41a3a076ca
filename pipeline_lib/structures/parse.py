"""Parse PDB / mmCIF files (plain or gzipped) into per-chain sequences, pLDDT and backbone coordinates.

    from pipeline_lib.structures.parse import parse_structure, StructureBlob
    chains = parse_structure("AF-P69905-F1-model_v4.pdb")             # list[Chain]
    chains = parse_structure(StructureBlob("x/1abc.cif.gz", raw))       # bytes from an archive or download

Residues are selected the way Foldseek's ``createdb`` selects them (``GemmiWrapper::updateStructure``),
so that 3Di strings computed from them match Foldseek's: first model only; gemmi's first conformer of each
residue (point mutations / microheterogeneity); polymer or unknown entities; ATOM and HETATM records
(so ``MSE`` stays in, mapped to ``M``); only residues with a CA atom. When an atom has alternative
locations Foldseek keeps the *last* one in the file (``altloc="last"``, the default; ``"first"`` and
``"occupancy"`` are available for other uses). Chains are named ``<file stem>_<chain id>``; the stem is
the file name without ``.gz`` and ``.pdb`` / ``.ent`` / ``.cif`` / ``.mmcif``. Files without one of those
extensions are read as PDB text unless they start with an mmCIF ``data_`` block (Foldseek's SCOP examples).

pLDDT per residue: the mmCIF ``_ma_qa_metric_local`` value where present, else the mean B-factor of the
residue's atoms (AlphaFold DB and ColabFold store pLDDT in the B-factor column). :attr:`Chain.predicted` says
whether the file's content marks it as a predicted model (ModelCIF ``_ma_qa_metric`` categories; a predictor
such as AlphaFold, ColabFold or ESMFold named in the header; a ``PARENT`` record) and no experimental method.

Broken input raises :class:`DataValidationError` naming the file: empty, binary, truncated (a cut ATOM
record; a wwPDB file that starts with ``HEADER`` but has no ``END``; an mmCIF atom table cut inside a row,
or lacking a chain or residue the file lists), without any CA atom, or with a ``nan`` / ``inf`` /
out-of-range coordinate or pLDDT (naming the residue too). :func:`check_structure_size` refuses files over a
byte or atom limit (:class:`StructureTooLarge`) reading 1 MiB at a time, before anything is parsed.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, cast

import gemmi
import numpy as np

from pipeline_lib.errors import DataValidationError
from pipeline_lib.structures.residues import one_letter

__all__ = ["Chain", "StructureBlob", "AltlocMode", "BACKBONE_ATOMS", "StructureTooLarge", "parse_structure",
           "full_sequence",
           "structure_stem", "structure_format", "check_structure_size"]

AltlocMode = Literal["last", "first", "occupancy"]
BACKBONE_ATOMS = ("N", "CA", "C", "CB")
_CIF_EXT = (".cif", ".mmcif")
_PDB_EXT = (".pdb", ".ent")
_KEPT_ENTITIES = (gemmi.EntityType.Polymer, gemmi.EntityType.Unknown)
_PDB_COORD_END = 66  # an ATOM/HETATM record is complete up to the B-factor at column 66
_END_RECORD = re.compile(rb"^END\s*$", re.M)
_PREDICTORS = re.compile(rb"ALPHAFOLD|COLABFOLD|ESMFOLD|OPENFOLD|ROSETTAFOLD|OMEGAFOLD", re.I)
_EXPERIMENTAL = re.compile(rb"X-RAY|NMR|ELECTRON|NEUTRON|FIBER|SOLID-STATE|SOLUTION SCATTERING|POWDER|INFRARED|"
                           rb"FLUORESCENCE|EPR", re.I)
_PDB_TEXT_RECORDS = (b"HEADER", b"TITLE ", b"COMPND", b"KEYWDS", b"EXPDTA", b"REMARK")
_COLABFOLD_REVISION = "1971-01-01"  # ColabFold's mmCIF writer (CFMMCIFIO) stamps every model with this date
_HEADER_SCAN = 4 << 20  # bytes of header text searched for a predictor's name
_ATOM_RECORDS = (b"\nATOM", b"\nHETATM")  # PDB records and mmCIF _atom_site rows (group_PDB first) alike
_CHUNK = 1 << 20


class StructureTooLarge(DataValidationError):
    """A structure file over the configured byte or atom limit (refused before parsing)."""


@dataclass(frozen=True)
class StructureBlob:
    """A structure file held in memory under the name it came with (archive member, download, Foldcomp)."""

    name: str
    data: bytes


@dataclass(frozen=True, eq=False)
class Chain:
    """One modelled chain: residues in file order (only those with a CA atom).

    ``coords`` has shape ``(L, 4, 3)`` (float32, atoms in :data:`BACKBONE_ATOMS` order, NaN where missing);
    ``plddt`` has shape ``(L,)`` (float32); ``icodes`` holds one insertion code per residue (space: none).
    """

    name: str
    chain_id: str
    source: str
    sequence: str
    resnums: np.ndarray
    icodes: str
    plddt: np.ndarray
    coords: np.ndarray
    predicted: bool = False  # the file says it is a predicted model (its B-factor column is pLDDT)

    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def n(self) -> np.ndarray:
        return self.coords[:, 0]

    @property
    def ca(self) -> np.ndarray:
        return self.coords[:, 1]

    @property
    def c(self) -> np.ndarray:
        return self.coords[:, 2]

    @property
    def cb(self) -> np.ndarray:
        return self.coords[:, 3]

    @property
    def mean_plddt(self) -> float:
        return float(np.mean(self.plddt)) if len(self.plddt) else float("nan")


def structure_stem(name: str) -> str:
    """File name without directories, ``.gz`` and a structure extension: ``a/1tim.pdb.gz`` -> ``1tim``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base.lower().endswith(".gz"):
        base = base[:-3]
    for ext in _CIF_EXT + _PDB_EXT:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def structure_format(name: str, data: bytes) -> Literal["pdb", "cif"]:
    """``cif`` for ``.cif``/``.mmcif`` names or text starting with ``data_``; ``pdb`` otherwise."""
    base = name.lower().removesuffix(".gz")
    if base.endswith(_CIF_EXT):
        return "cif"
    if base.endswith(_PDB_EXT):
        return "pdb"
    return "cif" if data.lstrip()[:5] == b"data_" else "pdb"


def _read_bytes(item: str | os.PathLike[str] | StructureBlob) -> tuple[str, bytes]:
    if isinstance(item, StructureBlob):
        name, data = item.name, item.data
    else:
        name = str(item)
        try:
            data = Path(item).read_bytes()
        except OSError as exc:
            raise DataValidationError(f"cannot read structure file: {exc.strerror or exc}", path=name) from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataValidationError(f"truncated or corrupt gzip data ({exc})", path=name) from None
    if not data.strip():
        raise DataValidationError("empty structure file", path=name)
    if _looks_binary(data[:4096]):
        raise DataValidationError("binary data, not a PDB/mmCIF text file", path=name)
    return name, data


def _looks_binary(head: bytes) -> bool:
    """NUL bytes, or more than 10% control bytes other than tab / line ends: no PDB or mmCIF text."""
    if b"\x00" in head:
        return True
    control = sum(1 for b in head if (b < 32 and b not in (9, 10, 13)) or b == 127)
    return control > len(head) // 10


def _check_pdb_complete(name: str, data: bytes) -> None:
    """gemmi reads a truncated PDB file without complaint: catch a record cut in the middle, and a wwPDB
    file (first record ``HEADER``) that lost its mandatory ``END`` record."""
    last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    if last[:6] in (b"ATOM  ", b"HETATM") and len(last.rstrip(b"\r")) < _PDB_COORD_END and not data.endswith(b"\n"):
        raise DataValidationError("truncated file: the last ATOM/HETATM record is incomplete", path=name)
    if data.lstrip()[:6] == b"HEADER" and not _END_RECORD.search(data):
        raise DataValidationError("truncated file: it starts with a HEADER record but has no END record", path=name)


def _check_cif_complete(name: str, data: bytes, block: gemmi.cif.Block) -> None:
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


def _cut_atom_row(data: bytes, exc: Exception) -> bool:
    """gemmi's value-count error on the atom table, and no other category after it: a row cut in the middle."""
    if "Wrong number of values in loop _atom_site" not in str(exc):
        return False
    tail = data[data.rfind(b"_atom_site."):]
    return re.search(rb"^\s*(loop_|_(?!atom_site\.)|data_)", tail, re.M) is None


def _qa_metric(block: gemmi.cif.Block) -> dict[tuple[str, int], float]:
    """``_ma_qa_metric_local`` (ModelCIF per-residue pLDDT) keyed by (label_asym_id, label_seq_id)."""
    table = block.find("_ma_qa_metric_local.", ["label_asym_id", "label_seq_id", "metric_value"])
    out: dict[tuple[str, int], float] = {}
    for row in table:
        try:
            out[(row.str(0), int(row.str(1)))] = float(row.str(2))
        except ValueError:
            continue  # '?' or '.': no value for this residue
    return out


def _load(name: str, data: bytes) -> tuple[gemmi.Structure, dict[tuple[str, int], float], bool]:
    try:
        if structure_format(name, data) == "cif":
            try:
                doc = gemmi.cif.read_string(data)
            except ValueError as exc:
                if _cut_atom_row(data, exc):
                    raise DataValidationError(f"truncated file: its last _atom_site row is incomplete ({exc})",
                                              path=name) from None
                raise
            block = doc[0]
            _check_cif_complete(name, data, block)  # what gemmi accepts: a file cut between two rows
            return gemmi.make_structure_from_block(block), _qa_metric(block), _predicted_cif(data, block)
        _check_pdb_complete(name, data)
        return gemmi.read_pdb_string(data), {}, _predicted_pdb(data)
    except DataValidationError:
        raise
    except (RuntimeError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"not a readable PDB/mmCIF structure ({exc})", path=name) from None


def _experimental(methods: Iterable[bytes | str]) -> bool:
    return any(_EXPERIMENTAL.search(m if isinstance(m, bytes) else m.encode()) for m in methods)


def _predicted_pdb(data: bytes) -> bool:
    """A predicted model by its header: no experimental EXPDTA, and a ``PARENT`` record (AlphaFold / OpenFold /
    ESMFold writers) or a predictor named in the HEADER, TITLE, COMPND, KEYWDS, EXPDTA or REMARK records."""
    atoms = min((i for i in (data.find(b"\nATOM"), data.find(b"\nHETATM")) if i >= 0), default=len(data))
    lines = data[: min(atoms, _HEADER_SCAN)].splitlines()
    if _experimental(ln[6:] for ln in lines if ln.startswith(b"EXPDTA")):
        return False
    return any(ln.startswith(b"PARENT") or (ln[:6] in _PDB_TEXT_RECORDS and _PREDICTORS.search(ln))
               for ln in lines)


def _predicted_cif(data: bytes, block: gemmi.cif.Block) -> bool:
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


def _pick_atoms(res: gemmi.Residue, altloc: AltlocMode) -> dict[str, gemmi.Atom]:
    """One atom per name; alternative locations resolved by ``altloc``."""
    picked: dict[str, gemmi.Atom] = {}
    for atom in res:
        prev = picked.get(atom.name)
        if prev is None or altloc == "last" or (altloc == "occupancy" and atom.occ > prev.occ):
            picked[atom.name] = atom
    return picked


def _check_finite(source: str, ch: gemmi.Chain, residues: list[gemmi.Residue], coords: np.ndarray,
                  present: np.ndarray, plddt: np.ndarray) -> None:
    """gemmi reads ``nan``, ``inf`` and numbers beyond float32 without complaint: refuse them, naming the
    residue, so that NaN in :attr:`Chain.coords` only ever means a missing atom (``present`` False) and 3Di,
    pLDDT masks and contact maps never see an infinite or undefined value."""
    bad_xyz = present & ~np.isfinite(coords).all(axis=2)
    for i in np.flatnonzero(bad_xyz.any(axis=1) | ~np.isfinite(plddt))[:1]:
        res = residues[i]
        what = (f"coordinate of atom {BACKBONE_ATOMS[int(np.argmax(bad_xyz[i]))]}" if bad_xyz[i].any()
                else "pLDDT / B-factor")
        raise DataValidationError(f"non-finite {what} (nan, inf or beyond the float32 range)", path=source,
                                  record=f"chain {ch.name} residue {res.name} {res.seqid.num}{res.seqid.icode.strip()}")


def _chain(ch: gemmi.Chain, stem: str, source: str, qa: dict[tuple[str, int], float],
           altloc: AltlocMode, predicted: bool) -> Chain | None:
    seq: list[str] = []
    nums: list[int] = []
    icodes: list[str] = []
    plddt: list[float] = []
    coords: list[list[list[float]]] = []
    kept: list[gemmi.Residue] = []
    present: list[list[bool]] = []
    nan3 = [np.nan, np.nan, np.nan]
    for res in ch.first_conformer():
        if res.entity_type not in _KEPT_ENTITIES or res.het_flag not in ("A", "H"):
            continue
        atoms = _pick_atoms(res, altloc)
        if "CA" not in atoms:
            continue
        if res.seqid.num is None:  # a blank or unreadable residue number field
            raise DataValidationError("residue without a sequence number", path=source, record=(
                f"chain {ch.name!r} residue {res.name!r} (atom serial {atoms['CA'].serial})"))
        kept.append(res)
        seq.append(one_letter(res.name))
        nums.append(res.seqid.num)
        icodes.append(res.seqid.icode if res.seqid.icode.strip() else " ")
        local = qa.get((res.subchain, res.label_seq)) if qa and res.label_seq is not None else None
        plddt.append(local if local is not None else sum(a.b_iso for a in atoms.values()) / len(atoms))
        coords.append([atoms[a].pos.tolist() if a in atoms else nan3 for a in BACKBONE_ATOMS])
        present.append([a in atoms for a in BACKBONE_ATOMS])
    if not seq:
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
        xyz, conf = np.asarray(coords, dtype=np.float32), np.asarray(plddt, dtype=np.float32)
    _check_finite(source, ch, kept, xyz, np.asarray(present, dtype=bool), conf)
    return Chain(name=f"{stem}_{ch.name}", chain_id=ch.name, source=source, sequence="".join(seq),
                 resnums=np.asarray(nums, dtype=np.int32), icodes="".join(icodes), plddt=conf, coords=xyz,
                 predicted=predicted)


def parse_structure(item: str | os.PathLike[str] | StructureBlob, *, altloc: AltlocMode = "last") -> list[Chain]:
    """Chains of the first model of a PDB/mmCIF file (path or :class:`StructureBlob`), in file order.

    Raises :class:`DataValidationError` (naming the file) for unreadable, empty, truncated or CA-less
    input, names that are not UTF-8, residues without a number and non-finite coordinates or pLDDT.
    Chains without any CA residue (waters, ligands) are left out.
    """
    name, data = _read_bytes(item)
    st, qa, predicted = _load(name, data)
    if len(st) == 0:
        raise DataValidationError("no model with atoms in structure file", path=name)
    stem = structure_stem(name)
    try:
        chains = [c for ch in st[0] if (c := _chain(ch, stem, name, qa, altloc, predicted)) is not None]
    except UnicodeDecodeError as exc:  # gemmi hands names to Python as UTF-8, only when they are read
        raise DataValidationError(f"a chain, residue or atom name is not UTF-8 text ({exc.object[:16]!r})",
                                  path=name) from None
    if not chains:
        raise DataValidationError("no amino-acid residue with a CA atom in structure file", path=name)
    return chains


def full_sequence(item: str | os.PathLike[str] | StructureBlob, chain: Chain) -> tuple[str, np.ndarray] | None:
    """The full sequence of ``chain``'s entity as the file declares it (mmCIF ``_entity_poly_seq``, PDB
    ``SEQRES``), and the 0-based position in it of each of ``chain``'s residues (gemmi's ``label_seq_id``; for
    PDB files gemmi aligns the modelled residues to ``SEQRES``). None when the file declares no sequence, or
    when the residues do not map onto it one to one, in order and with the same letters."""
    name, data = _read_bytes(item)
    st, _, _ = _load(name, data)
    st.setup_entities()
    st.assign_label_seq_id(False)
    found = [ch for ch in st[0] if ch.name == chain.chain_id]
    if not found:
        return None
    entity = st.get_entity_of(found[0].get_polymer())
    if entity is None or not entity.full_sequence:
        return None
    seq = "".join(one_letter(gemmi.Entity.first_mon(m)) for m in entity.full_sequence)
    positions = [res.label_seq for res in found[0].first_conformer()
                 if res.entity_type in _KEPT_ENTITIES and res.het_flag in ("A", "H")
                 and any(a.name == "CA" for a in res)]
    if len(positions) != len(chain) or any(p is None or not 1 <= p <= len(seq) for p in positions):
        return None
    pos = np.asarray(positions, dtype=np.int64) - 1
    if (np.diff(pos) <= 0).any() or "".join(seq[i] for i in pos) != chain.sequence:
        return None
    return seq, pos


@contextlib.contextmanager
def _byte_stream(item: str | os.PathLike[str] | StructureBlob) -> Iterator[tuple[str, IO[bytes]]]:
    """The file's bytes as a stream, gunzipped on the fly when they start with the gzip magic."""
    name = item.name if isinstance(item, StructureBlob) else str(item)
    with io.BytesIO(item.data) if isinstance(item, StructureBlob) else open(item, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raw.seek(0)
            yield name, raw
            return
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw) as unzipped:
            yield name, cast(IO[bytes], unzipped)


def check_structure_size(item: str | os.PathLike[str] | StructureBlob, *, max_bytes: int | None = None,
                         max_atoms: int | None = None) -> None:
    """Raise :class:`StructureTooLarge` when ``item`` has more than ``max_bytes`` bytes (uncompressed) or
    more than ``max_atoms`` ATOM/HETATM lines; reads 1 MiB at a time and stops at the first limit passed.

    Unreadable or corrupt files pass: :func:`parse_structure` names what is wrong with them.
    """
    if max_bytes is not None and not isinstance(item, StructureBlob) and not str(item).lower().endswith(".gz"):
        try:
            size = os.stat(item).st_size
        except OSError:
            return
        if size > max_bytes:  # refused without reading a byte
            raise StructureTooLarge(f"structure file too large: {size} bytes > limit {max_bytes} "
                                    "(structures.max_file_bytes)", path=str(item))
    total = atoms = 0
    carry = b"\n"  # the file's first line counts too
    try:
        with _byte_stream(item) as (name, stream):
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise StructureTooLarge(f"structure file too large: over {max_bytes} bytes uncompressed "
                                            "(structures.max_file_bytes)", path=name)
                buf = carry + chunk  # a record split between two chunks is counted once, with the second
                atoms += sum(buf.count(m) - carry.count(m) for m in _ATOM_RECORDS)
                carry = buf[-6:]
                if max_atoms is not None and atoms > max_atoms:
                    raise StructureTooLarge(f"structure file too large: over {max_atoms} atoms "
                                            "(structures.max_atoms)", path=name)
    except (EOFError, OSError, zlib.error):
        return  # unreadable or corrupt gzip: parse_structure says which
