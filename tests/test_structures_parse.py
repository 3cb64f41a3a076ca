"""Structure parsing: sequences, residue numbers, pLDDT, backbone coordinates, altlocs, errors.

    .venv/bin/pytest -q tests/test_structures_parse.py
"""
from __future__ import annotations

import gzip
from pathlib import Path

import gemmi
import numpy as np
import pytest

from pipeline_lib.errors import DataValidationError
from pipeline_lib.structures.parse import BACKBONE_ATOMS, StructureBlob, parse_structure, structure_stem
from pipeline_lib.structures.residues import one_letter

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures"
STRUCTURES = FIXTURES / "structures"
needs_fixtures = pytest.mark.skipif(not STRUCTURES.is_dir(), reason=f"shared fixtures not available: {STRUCTURES}")


def _atom_records(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith(("ATOM", "HETATM"))]


def test_stem_and_residue_names():
    assert structure_stem("a/b/1tim.pdb.gz") == "1tim"
    assert structure_stem("3bww.masked.pdb") == "3bww.masked"
    assert structure_stem("d1asha_") == "d1asha_"
    assert structure_stem("AF-O49373-F1-model_v4.CIF") == "AF-O49373-F1-model_v4"
    assert [one_letter(n) for n in ("MSE", "SEP", "SEC", "ALA", "HOH", "ZZZ")] == list("MSCAXX")


@needs_fixtures
def test_afdb_pdb_sequence_plddt_and_coordinates():
    path = STRUCTURES / "afdb" / "AF-Q96HM7-F1-model_v4.pdb"
    (chain,) = parse_structure(path)
    assert chain.name == "AF-Q96HM7-F1-model_v4_A" and chain.chain_id == "A" and chain.source == str(path)
    records = _atom_records(path)
    ca = [ln for ln in records if ln[12:16].strip() == "CA"]
    assert len(chain) == len(ca) and chain.resnums.tolist() == [int(ln[22:26]) for ln in ca]
    # pLDDT = mean B-factor of the residue's atoms
    first_res = [float(ln[60:66]) for ln in records if int(ln[22:26]) == chain.resnums[0]]
    assert chain.plddt.dtype == np.float32 and chain.plddt[0] == pytest.approx(np.mean(first_res), abs=1e-4)
    assert chain.coords.shape == (len(chain), 4, 3) and chain.coords.dtype == np.float32
    assert np.allclose(chain.ca[0], [float(ca[0][30:38]), float(ca[0][38:46]), float(ca[0][46:54])])
    gly = np.array([a == "G" for a in chain.sequence])
    assert np.isnan(chain.cb[gly]).all() and not np.isnan(chain.cb[~gly]).any()  # glycine has no CB
    assert not np.isnan(chain.coords[:, :3]).any()
    assert BACKBONE_ATOMS == ("N", "CA", "C", "CB")


@needs_fixtures
def test_mmcif_plddt_comes_from_ma_qa_metric_local():
    path = STRUCTURES / "afdb" / "AF-O49373-F1-model_v4.cif"
    (chain,) = parse_structure(path)
    assert len(chain) == 506 and chain.plddt[:3].tolist() == pytest.approx([42.67, 58.55, 64.28])
    # change residue 1's metric only: the parsed pLDDT follows the metric, not the B-factor column
    text = path.read_text().replace("A MET 1   2 42.67 1 1", "A MET 1   2 11.00 1 1", 1)
    (edited,) = parse_structure(StructureBlob("edited.cif", text.encode()))
    assert edited.plddt[0] == pytest.approx(11.0) and edited.plddt[1] == pytest.approx(58.55)
    assert edited.name == "edited_A"


@needs_fixtures
def test_pdb_and_mmcif_of_one_prediction_agree():
    (p,) = parse_structure(STRUCTURES / "colabfold" / "ERR550519_2213899_unrelaxed_model_1.pdb")
    (c,) = parse_structure(STRUCTURES / "colabfold" / "ERR550519_2213899_unrelaxed_model_1.cif")
    assert p.name == c.name and p.sequence == c.sequence
    assert np.allclose(p.coords, c.coords, equal_nan=True, atol=1e-3)
    assert np.allclose(p.plddt, c.plddt, atol=0.01)


@needs_fixtures
def test_multichain_gzip_extensionless_and_hetatm_residues():
    assert [c.name for c in parse_structure(STRUCTURES / "pdb" / "8crb.pdb")] == ["8crb_A", "8crb_B", "8crb_C"]
    tim = parse_structure(STRUCTURES / "foldseek_example" / "1tim.pdb.gz")
    assert [c.name for c in tim] == ["1tim_A", "1tim_B"] and len(tim[0]) == 247  # waters left out
    (scop,) = parse_structure(STRUCTURES / "foldseek_example" / "d1asha_")
    assert scop.name == "d1asha__A"
    # selenomethionine (HETATM MSE) is kept and read as M
    (bww,) = parse_structure(STRUCTURES / "pdb" / "3bww.pdb")
    mse = [ln for ln in _atom_records(STRUCTURES / "pdb" / "3bww.pdb") if ln[17:20] == "MSE" and ln[12:16] == " CA "]
    resnum = int(mse[0][22:26])
    assert bww.sequence[bww.resnums.tolist().index(resnum)] == "M"
    # the same file handed over as gzip bytes under another name
    blob = StructureBlob("x/8crb.pdb.gz", gzip.compress((STRUCTURES / "pdb" / "8crb.pdb").read_bytes()))
    assert [c.sequence for c in parse_structure(blob)] == [c.sequence for c in parse_structure(
        STRUCTURES / "pdb" / "8crb.pdb")]


@needs_fixtures
def test_insertion_codes_and_alternative_locations():
    path = STRUCTURES / "pdb" / "1xso.pdb"
    last, first, occ = (parse_structure(path, altloc=m)[0] for m in ("last", "first", "occupancy"))
    assert "A" in last.icodes and last.resnums[last.icodes.index("A")] == 25
    alt = [ln for ln in _atom_records(path) if ln[16] != " " and ln[21] == "A" and ln[12:16] == " CB "]
    resnum = int(alt[0][22:26])
    i = last.resnums.tolist().index(resnum)
    xyz = [[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in alt if int(ln[22:26]) == resnum]
    assert np.allclose(first.cb[i], xyz[0]) and np.allclose(last.cb[i], xyz[-1])  # Foldseek keeps the last
    assert not np.allclose(first.cb[i], last.cb[i])
    assert occ.sequence == last.sequence == first.sequence


def test_unusable_files_raise_naming_the_file(tmp_path):
    cases = {
        "empty.pdb": b"",
        "blank.cif": b"\n  \n",
        "garbage.pdb": b"hello world\nnot a structure\n",
        "water.pdb": b"HETATM    1  O   HOH A   1      11.104  13.207   9.657  1.00 20.00           O\nEND\n",
        "cut.pdb": b"ATOM      1  N   MET A   1     -20.123  15.028  -6.906  1.00 69.52           N\n"
                   b"ATOM      2  CA  MET A   1     -19.528  14.4",
        "cut.cif": b"data_x\nloop_\n_atom_site.group_PDB\n_atom_site.id\n_atom_site.type_symbol\nATOM 1\n",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DataValidationError) as err:
            parse_structure(p)
        assert str(p) in str(err.value) and err.value.path == str(p)
    gz = tmp_path / "trunc.pdb.gz"
    gz.write_bytes(gzip.compress(b"ATOM " * 1000)[:40])
    with pytest.raises(DataValidationError, match="gzip"):
        parse_structure(gz)
    with pytest.raises(DataValidationError, match="cannot read"):
        parse_structure(tmp_path / "missing.pdb")


@needs_fixtures
def test_truncated_fixture_is_refused(tmp_path):
    data = (STRUCTURES / "afdb" / "AF-A0A1W2PQ64-F1-model_v4.pdb").read_bytes()
    cut = data[: data.index(b"\nATOM", len(data) // 2) + 40]  # ends inside an ATOM record
    with pytest.raises(DataValidationError, match="truncated"):
        parse_structure(StructureBlob("AF-A0A1W2PQ64-F1-model_v4.pdb", cut))
    cif = (STRUCTURES / "afdb" / "AF-O49373-F1-model_v4.cif").read_bytes()
    with pytest.raises(DataValidationError, match="truncated file: its last _atom_site row is incomplete"):
        parse_structure(StructureBlob("AF-O49373-F1-model_v4.cif", cif[: len(cif) // 2]))
    at_row = cif[: cif.index(b"\n", cif.index(b"\nATOM 1500 ") + 1) + 1]  # cut between two complete rows
    with pytest.raises(DataValidationError, match="ends before residue 506 of chain A, which the file lists"):
        parse_structure(StructureBlob("AF-O49373-F1-model_v4.cif", at_row))


@needs_fixtures
def test_valid_mmcif_layouts_are_not_called_truncated():
    """Valid files whose last category is not followed by '#' (a hand-edited AlphaFold DB file) or that leave the
    atom table open the way PyMOL's exporter does (layer3/MoleculeExporter.cpp: '#' before each category, none
    after the last) parse to the same chain as the original."""
    cif = (STRUCTURES / "afdb" / "AF-O49373-F1-model_v4.cif").read_bytes()
    ref = parse_structure(StructureBlob("AF-O49373-F1-model_v4.cif", cif))[0]
    open_end = cif.rstrip().removesuffix(b"#").rstrip() + b"\n"
    doc = gemmi.cif.read_string(cif)
    sites = doc[0].find("_atom_site.", ["group_PDB", "id", "type_symbol", "label_atom_id", "label_comp_id",
                                         "label_asym_id", "label_entity_id", "label_seq_id", "Cartn_x", "Cartn_y",
                                         "Cartn_z", "occupancy", "B_iso_or_equiv", "auth_asym_id"])
    rows = [f"{r[0]:<6} {r[1]:<3} {r[2]} {r[3]:<3} . {r[4]:<3} {r[5]} {r[6]} {r[7]} ? {r[8]} {r[9]} {r[10]} "
            f"{r[11]} {r[12]} 0 {r[13]} 1" for r in sites]
    pymol = ("# generated by PyMOL 3.0.0\n#\ndata_model\n_entry.id model\n#\nloop_\n" + "".join(
        f"_atom_site.{t}\n" for t in ("group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id",
                                       "label_comp_id", "label_asym_id", "label_entity_id", "label_seq_id",
                                       "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y", "Cartn_z", "occupancy",
                                       "B_iso_or_equiv", "pdbx_formal_charge", "auth_asym_id",
                                       "pdbx_PDB_model_num")) + "\n".join(rows) + "\n").encode()
    for name, data in (("open_end.cif", open_end), ("pymol.cif", pymol)):
        chain = parse_structure(StructureBlob(name, data))[0]
        assert chain.sequence == ref.sequence and np.allclose(chain.ca, ref.ca), name
