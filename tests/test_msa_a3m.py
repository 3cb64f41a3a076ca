"""A3M / A2M / Stockholm parsing, Neff and the MSA Parquet store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.a3m import (
    ALIGNED_LETTERS,
    compute_neff,
    import_alignment,
    parse_a3m,
    parse_mmseqs_header,
    read_a3m,
    remove_insertions,
    sequence_weights,
)
from pipeline_lib.msa.store import MSA_SCHEMA, read_msa_parquet, write_msa_parquet
from pipeline_lib.sequences.nucleotide import nucleotide_residues

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures"
MSA_DIR = FIXTURES / "msa"
needs_fixtures = pytest.mark.skipif(not MSA_DIR.is_dir(), reason=f"shared fixtures not available: {MSA_DIR}")


def _fixture_files() -> list:
    if not MSA_DIR.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"shared fixtures not available: {MSA_DIR}"))]
    return sorted(MSA_DIR.iterdir())


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: p.name if p else "absent")
def test_every_fixture_parses_with_query_length_rows(path):
    msa = import_alignment(path)
    assert msa.depth > 1 and msa.query_length > 0
    raw_rows = [line for line in path.read_text().splitlines() if line and not line.startswith(">")]
    assert msa.query == remove_insertions(raw_rows[0])   # query first (single-line records in these files)
    assert all(len(r) == msa.query_length for r in msa.rows)
    assert "-" not in msa.query
    assert 1.0 <= msa.neff <= msa.depth


@needs_fixtures
def test_fixture_depths_and_ids():
    esm = read_a3m(MSA_DIR / "1a3a_1_A.a3m")
    assert esm.query_id == "1a3a_1_A" and esm.depth == 1024 and esm.query_length == 145  # empty header -> stem
    hh = read_a3m(MSA_DIR / "hhsuite_query.a3m")
    assert hh.query_id == "sp|Q5VUD6|FA69B_HUMAN" and hh.depth == 59


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("\n\n  \n", "empty file"),
    (">q\nACDE\n>r\nAC\n", "ragged alignment: 2 match columns.*query has 4"),
    (">q\nACDE\n>r\nACdddDEF\n", "ragged alignment: 5 match columns"),
    (">q\nAC1E\n", r"characters outside the alphabet \['1'\]"),
    (">q\nACDE\n>r\nAJ-E\n", r"record 1 \('r'\).*\['J'\]"),
    (">q\nacde\n>r\n----\n", "no query sequence"),
    ("ACDE\n>q\nACDE\n", "sequence data before the first"),
    ("# only a comment\n", "no '>' records"),
])
def test_malformed_files_are_rejected_with_file_and_record(tmp_path, text, message):
    p = _write(tmp_path, "bad.a3m", text)
    with pytest.raises(DataValidationError, match=message) as err:
        read_a3m(p)
    assert str(p) in str(err.value)


def test_insertions_removed_and_comments_skipped():
    msa = parse_a3m("#A3M#\n>q desc\nMKV\nLA\n>hit1\nM-VlaLA\n>hit2\n-k.KVL*A\n")
    assert msa.query_id == "q" and msa.rows == ("MKVLA", "M-VLA", "-KVLA")
    assert msa.headers == ("q desc", "hit1", "hit2")


def test_mmseqs_header_statistics():
    stats = parse_mmseqs_header("fam0_mut2\t456\t0.980\t5.209E-151\t0\t199\t200\t0\t199\t200")
    assert stats is not None and stats.target == "fam0_mut2"
    assert stats.identity == pytest.approx(0.98) and stats.evalue == pytest.approx(5.209e-151)
    assert stats.coverage == pytest.approx(1.0) and stats.bits == 456
    assert parse_mmseqs_header("tr|X|Y some protein OS=Homo") is None
    assert parse_mmseqs_header("a\t1\t2\t3\t4\t5\t6\t7\t8\tnine") is None


def test_a2m_and_stockholm_import(tmp_path):
    a2m = _write(tmp_path, "x.a2m", ">q\nMK.VL\n>h\nMKaV-\n")
    assert import_alignment(a2m).rows == ("MKVL", "MKV-")
    sto = _write(tmp_path, "x.sto", "# STOCKHOLM 1.0\nq  MK-VLA\nh1 MKGV-A\nh2 -KGVLA\n//\n")
    msa = import_alignment(sto)   # the query's gap column is dropped
    assert msa.query_id == "q" and msa.rows == ("MKVLA", "MKV-A", "-KVLA")
    with pytest.raises(DataValidationError, match="Stockholm"):
        import_alignment(_write(tmp_path, "bad.sto", "# STOCKHOLM 1.0\nq MKV\nh MK\n//\n"))
    with pytest.raises(DataValidationError, match="empty"):
        import_alignment(_write(tmp_path, "empty.sto", ""))


def _naive_weights(codes: np.ndarray, threshold: float = 0.8) -> np.ndarray:
    return np.array([1.0 / ((codes == row).mean(axis=1) >= threshold).sum() for row in codes])


def test_neff_matches_a_naive_computation_and_blocking_does_not_change_it():
    rng = np.random.default_rng(0)
    base = rng.choice(np.frombuffer(b"ACDEFG-", np.uint8), size=(1, 40))
    codes = np.repeat(base, 60, axis=0)
    flips = rng.random(codes.shape) < rng.random((60, 1)) * 0.5   # rows from identical to very different
    codes[flips] = rng.choice(np.frombuffer(b"ACDEFG-", np.uint8), size=int(flips.sum()))
    ref = _naive_weights(codes)
    assert np.allclose(sequence_weights(codes), ref)
    assert np.allclose(sequence_weights(codes, max_cells=50), ref)   # many row and column blocks
    assert compute_neff(np.repeat(base, 5, axis=0)) == pytest.approx(1.0)   # identical rows count once
    assert 1.0 <= compute_neff(codes) <= 60


def test_store_round_trip(tmp_path):
    msas = [parse_a3m(">q1\nMKVL\n>h\nMK-L\n", source="a"), parse_a3m(">q2\nAC\n", source="b")]
    n = write_msa_parquet(msas, tmp_path / "m.parquet", row_group_rows=1)
    assert n == 2 and pq.read_schema(tmp_path / "m.parquet").equals(MSA_SCHEMA)
    back = list(read_msa_parquet(tmp_path / "m.parquet"))
    assert back == msas
    assert [m.neff for m in back] == pytest.approx([m.neff for m in msas])
    table = pq.read_table(tmp_path / "m.parquet")
    assert table.column("depth").to_pylist() == [2, 1] and table.column("query_length").to_pylist() == [4, 2]


# --- property test: random valid A3M text round-trips through the parser ---------------------------------

_RESIDUES = ALIGNED_LETTERS.replace("-", "")


@st.composite
def _a3m_cases(draw):
    length = draw(st.integers(1, 30))
    query = draw(st.text(_RESIDUES, min_size=length, max_size=length))
    rows = [query] + draw(st.lists(st.text(ALIGNED_LETTERS, min_size=length, max_size=length), max_size=8))
    texts = []
    for i, row in enumerate(rows):
        # sprinkle lower-case insertions and '.' between match columns, then wrap lines at random width
        pieces = []
        for ch in row:
            pieces.append(draw(st.text("acdefghiklmnpqrstvwy.", max_size=2)) if i else "")
            pieces.append(ch)
        raw = "".join(pieces)
        width = draw(st.integers(1, 80))
        texts.append((f"id{i} some description", "\n".join(raw[j:j + width] for j in range(0, len(raw), width))))
    return rows, texts


@settings(max_examples=150, deadline=None)
@given(_a3m_cases())
def test_random_valid_a3m_round_trips(case):
    rows, records = case
    # what reads as a nucleotide alignment is refused (test_a_nucleotide_alignment_is_refused)
    assume(nucleotide_residues("".join(r.replace("-", "") for r in rows)) is None)
    text = "".join(f">{h}\n{s}\n" for h, s in records)
    msa = parse_a3m(text)
    assert msa.rows == tuple(rows) and msa.query_id == "id0"
    assert msa.headers == tuple(h for h, _ in records)
    again = parse_a3m(msa.to_a3m())
    assert again.rows == msa.rows and again.headers == msa.headers


def test_plm_msa_import_cli(tmp_path, capsys):
    """`plm msa import` reads the ESM examples' A3M files into the MSA table."""
    from pathlib import Path

    import pyarrow.parquet as pq
    import pytest

    from flows.cli import main

    fixtures = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "msa"
    if not fixtures.is_dir():
        pytest.skip(f"shared fixture not available: {fixtures}")
    files = sorted(str(p) for p in fixtures.glob("*.a3m"))
    assert main(["msa", "import", *files, "--out", str(tmp_path / "m.parquet")]) == 0
    table = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert len(table) == len(files) and all(r["depth"] >= 1 and r["neff"] >= 1 for r in table)
    assert f"{len(files)} MSAs" in capsys.readouterr().out
    bad = tmp_path / "bad.a3m"
    bad.write_text(">q\nACDE\n>r\nAC\n")
    assert main(["msa", "import", str(bad), "--out", str(tmp_path / "x.parquet")]) == 1
    assert "not imported: file" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()
    # several files: the good ones are imported, the bad one is reported, and the exit code says so
    assert main(["msa", "import", files[0], str(bad), files[-1], "--out", str(tmp_path / "y.parquet")]) == 1
    out, err = capsys.readouterr()
    assert "2 MSAs" in out and "bad.a3m" in err and "ragged alignment" in err
    assert len(pq.read_table(tmp_path / "y.parquet")) == 2


@needs_fixtures
def test_hhsuite_annotation_rows_are_not_sequences(tmp_path):
    """HH-suite's A3M may carry >ss_dssp, >ss_pred, >ss_conf, >sa_dssp and >Consensus rows (its user guide's
    A3M section), before the query: added here to HH-suite's own query.a3m, they change nothing."""
    real = MSA_DIR / "hhsuite_query.a3m"
    plain = import_alignment(real)
    qlen = plain.query_length
    extra = "".join(f">{name}\n{letter * qlen}\n" for name, letter in
                    [("ss_dssp", "C"), ("ss_pred", "H"), ("ss_conf", "9"), ("sa_dssp", "A"), ("Consensus", "x")])
    (tmp_path / "annotated.a3m").write_text(extra + real.read_text())
    got = import_alignment(tmp_path / "annotated.a3m")
    assert got.rows == plain.rows and got.headers == plain.headers and got.query_id == plain.query_id


@needs_fixtures
def test_gzipped_a3m_reads_like_plain(tmp_path):
    import gzip

    real = MSA_DIR / "1a3a_1_A.a3m"
    (tmp_path / "1a3a_1_A.a3m.gz").write_bytes(gzip.compress(real.read_bytes()))
    assert import_alignment(tmp_path / "1a3a_1_A.a3m.gz").rows == import_alignment(real).rows


def test_a_nucleotide_alignment_is_refused(tmp_path):
    rna = tmp_path / "rfam.a3m"   # a nucleotide alignment in A3M layout, as Rfam-based tools write one
    rna.write_text(">q\nACGUACGUUAGCAUGCAUGCAAACGUUUGCA\n>r\nACGUACGU-AGCAUGCAUGCAAACGUUUGCA\n")
    with pytest.raises(DataValidationError, match="a nucleotide alignment"):
        import_alignment(rna)


def test_a_poly_alanine_alignment_is_a_protein_one():
    """Found by the round-trip property: 32 'A' residues are not a nucleotide alignment (three bases needed)."""
    msa = parse_a3m("".join(f">id{i}\nAAAA\n" for i in range(8)))
    assert msa.depth == 8
