"""Property-based tests (hypothesis, derandomized) of the PDB and mmCIF readers on hostile input: arbitrary
bytes, PDB-like lines with absurd fields, and real fixture files truncated, with bytes flipped, lines dropped
or doubled and coordinates replaced by ``nan`` / ``inf`` / huge numbers. ``parse_structure`` either returns
chains that downstream code can use (sequence length = coordinate rows = pLDDT values, finite CA
coordinates and pLDDT, other atoms finite or NaN for missing) or raises ``DataValidationError`` naming the
file; ``check_structure_size`` only ever raises ``StructureTooLarge``. Any other exception is a bug.

    .venv/bin/pytest -q tests/test_hostile_properties_structures.py
"""
from __future__ import annotations

import functools
import gzip
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline_lib.errors import DataValidationError
from pipeline_lib.structures.parse import (
    BACKBONE_ATOMS,
    StructureBlob,
    StructureTooLarge,
    check_structure_size,
    parse_structure,
    structure_stem,
)
from pipeline_lib.structures.residues import THREE_TO_ONE
from tests.conftest import FIXTURES

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=60,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COLABFOLD = FIXTURES / "structures" / "colabfold" / "ERR550519_2213899_unrelaxed_model_1"
REAL = {"model.pdb": COLABFOLD.with_suffix(".pdb"), "model.cif": COLABFOLD.with_suffix(".cif"),
        "1tim.pdb.gz": FIXTURES / "structures" / "foldseek_example" / "1tim.pdb.gz"}
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in REAL.values()),
                                reason=f"shared structure fixtures not available under {FIXTURES}")
LETTERS = set(THREE_TO_ONE.values()) | {"X"}
# what a flipped digit, a cut field or a hostile writer puts where a number belongs
NUMBERS = [b"nan", b"NaN", b"inf", b"-inf", b"1e99", b"-1e40", b"9" * 12, b"", b" ", b"-", b".", b"?", b"1e-999",
           b"0x10", b"1,5", b"\xff", b"12.345.6"]


@functools.cache
def real_bytes(name: str) -> bytes:
    data = REAL[name].read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def check_contract(name: str, data: bytes) -> list | None:
    """Parse ``data`` as file ``name``: valid chains, or a DataValidationError naming the file (None)."""
    try:
        chains = parse_structure(StructureBlob(name, data))
    except DataValidationError as exc:
        assert exc.path == name and name in str(exc) and exc.reason, exc
        return None
    assert chains, f"{name}: no chains and no error"
    for c in chains:
        n = len(c.sequence)
        assert n > 0 and set(c.sequence) <= LETTERS, c.name
        assert c.coords.shape == (n, len(BACKBONE_ATOMS), 3) and c.coords.dtype == np.float32, c.name
        assert c.plddt.shape == c.resnums.shape == (n,) and len(c.icodes) == n, c.name
        assert np.isfinite(c.ca).all(), f"{c.name}: non-finite CA coordinates returned"
        assert not np.isinf(c.coords).any(), f"{c.name}: infinite coordinates returned (NaN means missing)"
        assert np.isfinite(c.plddt).all(), f"{c.name}: non-finite pLDDT returned"
        assert c.name.startswith(structure_stem(name) + "_") and c.source == name
    return chains


def check_size_limits(name: str, data: bytes) -> None:
    """The pre-parse size check refuses with StructureTooLarge or lets the file through, nothing else."""
    for limits in ({"max_bytes": 1 << 30, "max_atoms": 10 ** 7}, {"max_bytes": 4096, "max_atoms": 5}):
        try:
            check_structure_size(StructureBlob(name, data), **limits)
        except StructureTooLarge as exc:
            assert exc.path == name


# --- arbitrary bytes -----------------------------------------------------------------------------------

PDB_LINE = st.builds(
    lambda rec, atom, res, chain, num, xyz, b: b"%-6s%5d %-4s %3s %1s%4s    %8s%8s%8s  1.00%6s" % (
        rec, 1, atom, res, chain, num, *xyz, b),
    st.sampled_from([b"ATOM", b"HETATM", b"ANISOU", b"TER", b"MODEL", b"ENDMDL"]),
    st.sampled_from([b"CA", b"N", b"C", b"CB", b"O", b"CA\xff", b""]),
    st.sampled_from([b"ALA", b"MSE", b"HOH", b"UNK", b"ZZZ", b"", b"\x00\x01"]),
    st.sampled_from([b"A", b"B", b" ", b"\xc3"]),
    st.sampled_from([b"1", b"-9", b"9999", b"A", b""]),
    st.tuples(*[st.sampled_from([b"1.000", b"-2.5"] + NUMBERS)] * 3),
    st.sampled_from([b"90.00", b"50.0"] + NUMBERS))
LINES = st.lists(PDB_LINE | st.sampled_from([b"END", b"HEADER    X", b"data_x", b"loop_", b"_atom_site.Cartn_x",
                                             b"#", b"", b"\r"]) | st.binary(max_size=40), max_size=30)


@PROPS
@given(st.binary(max_size=600) | LINES.map(b"\n".join),
       st.sampled_from(["x.pdb", "x.cif", "x.ent.gz", "d1abca_", "x.mmcif"]), st.booleans())
# found by these tests: a blank residue number (TypeError) and a non-UTF-8 atom name (UnicodeDecodeError)
@example(b"ATOM\x01\x01\x01\x01\x01   CA" + b" " * 41, "x.pdb", False)
@example(b"ATOM      1 \x80CA  ALA A   1       1.000   2.000   3.000  1.00 90.00           C  \n", "x.pdb", False)
def test_arbitrary_bytes_give_valid_chains_or_a_validation_error(data, name, gz):
    if gz:
        data = gzip.compress(data, mtime=0)
    check_contract(name, data)
    check_size_limits(name, data)


# --- real files, damaged -------------------------------------------------------------------------------

PDB_NUMBER_COLUMNS = [(30, 38), (38, 46), (46, 54), (54, 60), (60, 66)]  # x, y, z, occupancy, B-factor
CIF_NUMBER_WORDS = [10, 11, 12, 13, 14]  # the same, in the fixture's _atom_site loop


def _set_number(line: bytes, field: int, value: bytes, cif: bool) -> bytes:
    """``line`` (an ATOM / HETATM row) with number ``field`` replaced by ``value``, columns kept."""
    if cif:
        words = re.split(rb"(\s+)", line)
        at = 2 * CIF_NUMBER_WORDS[field]
        return b"".join(words[:at] + [value or b"?"] + words[at + 1:]) if at < len(words) else line
    start, end = PDB_NUMBER_COLUMNS[field]
    return line[:start] + value.rjust(end - start) + line[end:]


@st.composite
def damaged(draw, data: bytes, cif: bool) -> bytes:
    """``data`` after 1-4 random edits: cut, byte flips, dropped / doubled lines, inserted bytes, or a
    coordinate / occupancy / B-factor of an atom row replaced by a hostile number."""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "drop", "double", "number", "number", "splice"]))
        lines = data.splitlines(keepends=True)
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        row = draw(st.integers(0, max(len(lines) - 1, 0)))
        if kind == "cut":
            data = data[:at]
        elif kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
        elif kind == "drop":
            data = b"".join(lines[:row] + lines[row + draw(st.integers(1, 40)):])
        elif kind == "double":
            end = row + draw(st.integers(1, 40))
            data = b"".join(lines[:end] + lines[row:end] + lines[end:])
        elif kind == "number":
            atoms = [i for i, line in enumerate(lines) if line.startswith((b"ATOM", b"HETATM"))]
            if atoms:
                i = atoms[draw(st.integers(0, len(atoms) - 1))]
                lines[i] = _set_number(lines[i], draw(st.integers(0, 4)), draw(st.sampled_from(NUMBERS)), cif)
                data = b"".join(lines)
        elif kind == "splice":
            data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    return data


@pytest.mark.parametrize(("name", "cif"), [pytest.param("model.pdb", False, id="pdb"),
                                           pytest.param("model.cif", True, id="mmcif")])
@PROPS
@given(st.data())
def test_damaged_pdb_or_mmcif_gives_valid_chains_or_a_validation_error(name, cif, data):
    bad = data.draw(damaged(real_bytes(name), cif=cif))
    check_contract(name, bad)
    check_size_limits(name, bad)


@settings(PROPS, max_examples=30)
@given(st.data(), st.integers(1, 2000))
def test_damaged_gzip_member_gives_valid_chains_or_a_validation_error(data, cut):
    """A wwPDB file (HEADER ... END) damaged, then gzipped and possibly cut: the gzip layer fails cleanly."""
    gz = gzip.compress(data.draw(damaged(real_bytes("1tim.pdb.gz"), cif=False)), mtime=0)
    for blob in (gz, gz[:-cut]):
        check_contract("1tim.pdb.gz", blob)
        check_size_limits("1tim.pdb.gz", blob)


@pytest.mark.parametrize("name", sorted(REAL))
def test_undamaged_fixtures_meet_the_contract(name):
    """The contract is not vacuous: the real files parse into chains that meet it."""
    chains = check_contract(name, REAL[name].read_bytes())
    assert chains and sum(len(c) for c in chains) > 100


@pytest.mark.parametrize("field", [b"nan", b"inf", b"1e99", b"-1e40"])
@pytest.mark.parametrize("column", ["x", "b_factor"])
def test_non_finite_numbers_are_refused_naming_file_and_residue(field, column):
    """Found by the properties above: gemmi reads ``nan`` / ``inf`` / out-of-range numbers, and such a CA
    coordinate or pLDDT used to reach 3Di encoding and the SaProt shards."""
    line = b"ATOM      1  CA  ALA A   7    %8s   2.000   3.000  1.00%6s           C  \n"
    x, b = (field, b"90.00") if column == "x" else (b"1.000", field)
    with pytest.raises(DataValidationError, match=r"x\.pdb.*A 7.*(coordinate|pLDDT)") as exc:
        parse_structure(StructureBlob("x.pdb", line % (x, b)))
    assert exc.value.path == "x.pdb" and exc.value.record
