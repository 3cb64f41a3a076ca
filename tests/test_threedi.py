"""3Di encoding: golden test of the mini3di backend against the real Foldseek's output, the Foldseek adapter.

    .venv/bin/pytest -q tests/test_threedi.py

The golden file ``../shared/fixtures/threedi/foldseek_3di.tsv`` was written by ``foldseek createdb`` on the
structures beside it; every chain must match character for character (amino acids and 3Di).
"""
from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline_lib.errors import DataValidationError, ToolError
from pipeline_lib.structures.parse import StructureBlob
from pipeline_lib.structures.threedi import EncodeStats, encode_structures, resolve_backend
from pipeline_lib.tools.foldseek import Foldseek, read_foldseek_fasta

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures"
STRUCTURES = FIXTURES / "structures"
GOLDEN = FIXTURES / "threedi" / "foldseek_3di.tsv"
needs_fixtures = pytest.mark.skipif(not GOLDEN.is_file(), reason=f"shared fixtures not available: {GOLDEN}")


def _golden() -> dict[str, list[tuple[str, str, str]]]:
    """structure file (relative to structures/) -> [(chain name, aa, 3Di)] in Foldseek's order."""
    out: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    with open(GOLDEN) as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            assert int(row["length"]) == len(row["aa_seq"]) == len(row["threedi_seq"])
            out[row["structure_file"]].append((row["chain_entry"], row["aa_seq"], row["threedi_seq"]))
    return out


def _structure_files() -> list[Path]:
    return sorted(p for p in STRUCTURES.rglob("*") if p.is_file())


@needs_fixtures
def test_mini3di_matches_foldseek_on_every_fixture_chain():
    golden = _golden()
    files = _structure_files()
    assert {p.relative_to(STRUCTURES).as_posix() for p in files} == set(golden)  # every file has rows
    stats = EncodeStats()
    for path in files:
        got = [(c.name, c.aa, c.threedi) for c in encode_structures([path], "mini3di", stats=stats)]
        expected = golden[path.relative_to(STRUCTURES).as_posix()]
        assert [g[0] for g in got] == [e[0] for e in expected], path  # same chains, same order, none extra
        for (name, aa, di), (_, aa_exp, di_exp) in zip(got, expected, strict=False):
            assert aa == aa_exp, f"{name}: amino acids differ"
            assert di == di_exp, f"{name}: 3Di differs"
    assert stats.chains == sum(len(v) for v in golden.values()) == 44  # 43 names: the ColabFold .pdb and .cif share one
    assert not stats.failures


@needs_fixtures
def test_parallel_workers_give_the_same_chains_in_input_order():
    files = _structure_files()[:12]
    serial = list(encode_structures(files, "mini3di", batch_size=3))
    stats = EncodeStats()
    parallel = list(encode_structures(files, "mini3di", batch_size=3, workers=2, stats=stats))
    assert [(c.name, c.aa, c.threedi) for c in parallel] == [(c.name, c.aa, c.threedi) for c in serial]
    assert stats.files == 12 and stats.chains == len(serial)


def _pdb_lines(n_residues: int, chain: str = "A") -> str:
    """A tiny but real-looking backbone (ideal-ish helix coordinates) for skip-rule tests."""
    import math

    lines, serial = [], 1
    for i in range(n_residues):
        t = i * 100.0 * math.pi / 180
        for name, r, dz in (("N", 1.55, -0.6), ("CA", 2.3, 0.0), ("C", 1.6, 0.7)):
            x, y, z = r * math.cos(t), r * math.sin(t), 1.5 * i + dz
            lines.append(f"ATOM  {serial:5d}  {name:<3} ALA {chain}{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                         f"  1.00 90.00           {name[0]}")
            serial += 1
    return "\n".join(lines) + "\nEND\n"


def test_chains_foldseek_drops_are_dropped_and_counted():
    stats = EncodeStats()
    blobs = [StructureBlob("short.pdb", _pdb_lines(3).encode()), StructureBlob("ok.pdb", _pdb_lines(4).encode()),
             StructureBlob("bad.pdb", b""), StructureBlob("unk.pdb", _pdb_lines(6).replace("ALA", "HOX").encode())]
    got = list(encode_structures(blobs, "mini3di", stats=stats))
    assert [c.name for c in got] == ["ok_A"] and len(got[0].threedi) == 4
    assert stats.skipped == {"too_short": 1, "unreadable": 1, "not_protein": 1}
    assert stats.failures == [("bad.pdb", "empty structure file")]
    with pytest.raises(DataValidationError, match="bad.pdb"):
        list(encode_structures(blobs, "mini3di", on_error="raise"))


def test_auto_backend_uses_mini3di_without_foldseek(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("PLM_FOLDSEEK", raising=False)
    assert resolve_backend("auto") == "mini3di"
    with pytest.raises(ToolError, match="foldseek binary not found"):
        Foldseek()


def test_foldseek_fasta_outputs_are_paired(tmp_path):
    # the layout convert2fasta writes: ">" + header (name, then the title) and the sequence on one line
    (tmp_path / "aa.fasta").write_text(">1tim_A TRIOSEPHOSPHATE ISOMERASE\nAPSRKFFVGGNWKmngd\n>d1asha__A\nANKTRELCM\n")
    (tmp_path / "ss.fasta").write_text(">1tim_A TRIOSEPHOSPHATE ISOMERASE\nDAAEEEEEAQDPVqqdd\n>d1asha__A\nDPVVLVVLL\n")
    assert read_foldseek_fasta(tmp_path / "aa.fasta", tmp_path / "ss.fasta") == [
        ("1tim_A", "APSRKFFVGGNWKMNGD", "DAAEEEEEAQDPVQQDD"), ("d1asha__A", "ANKTRELCM", "DPVVLVVLL")]
    (tmp_path / "ss.fasta").write_text(">1tim_A\nDAAEE\n>d1asha__A\nDPVVLVVLL\n")
    with pytest.raises(DataValidationError, match="does not pair"):
        read_foldseek_fasta(tmp_path / "aa.fasta", tmp_path / "ss.fasta")


@needs_fixtures
@pytest.mark.skipif(shutil.which("foldseek") is None, reason="foldseek binary not on PATH (not on PyPI; "
                                                             "install from its releases or bioconda)")
def test_foldseek_backend_matches_golden(tmp_path):
    golden = sorted(row for rows in _golden().values() for row in rows)
    assert Foldseek().version()
    got = list(encode_structures(_structure_files(), "foldseek", tmp_dir=str(tmp_path), batch_size=100))
    assert sorted((c.name, c.aa, c.threedi) for c in got) == golden
    assert all(c.plddt is not None and len(c.plddt) == len(c.aa) for c in got)
