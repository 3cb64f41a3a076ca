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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, cast

import gemmi
import numpy as np

from pipeline_lib.errors import DataValidationError
from pipeline_lib.structures.completeness import check_cif_complete, check_pdb_complete, cut_atom_row
from pipeline_lib.structures.provenance import predicted_cif, predicted_pdb
from pipeline_lib.structures.residues import one_letter

__all__ = ["Chain", "StructureBlob", "AltlocMode", "BACKBONE_ATOMS", "StructureTooLarge", "parse_structure",
           "full_sequence",
           "structure_stem", "structure_format", "check_structure_size"]

AltlocMode = Literal["last", "first", "occupancy"]
BACKBONE_ATOMS = ("N", "CA", "C", "CB")
_CIF_EXT = (".cif", ".mmcif")
_PDB_EXT = (".pdb", ".ent")
_KEPT_ENTITIES = (gemmi.EntityType.Polymer, gemmi.EntityType.Unknown)
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
                if cut_atom_row(data, exc):
                    raise DataValidationError(f"truncated file: its last _atom_site row is incomplete ({exc})",
                                              path=name) from None
                raise
            block = doc[0]
            check_cif_complete(name, data, block)  # what gemmi accepts: a file cut between two rows
            return gemmi.make_structure_from_block(block), _qa_metric(block), predicted_cif(data, block)
        check_pdb_complete(name, data)
        return gemmi.read_pdb_string(data), {}, predicted_pdb(data)
    except DataValidationError:
        raise
    except (RuntimeError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"not a readable PDB/mmCIF structure ({exc})", path=name) from None


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
