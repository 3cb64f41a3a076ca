"""Stockholm and A2M written by HMMER itself (pyhmmer: HMMER's hmmalign, jackhmmer and Easel's writers) on real
homologs (the ESM example A3M of 1a3a chain A; pyhmmer is a dependency: the demo corpus), read by the MSA importer.

HMMER's Stockholm marks insert columns with lower case and '.', and jackhmmer's adds a ``#=GC RF`` line; the
same alignment written by HMMER as A2M goes through the other reader. Both must give the same rows.
"""
from __future__ import annotations

import gzip
import io
import logging
import re

import pyhmmer
import pytest

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.a3m import alignment_format, import_alignment
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def homologs() -> list[tuple[str, str]]:
    """The 1a3a_1_A.a3m rows as plain sequences (gaps and case removed), named s0..sN; s0 is the query."""
    text = fixture_path("msa", "1a3a_1_A.a3m").read_text()
    out = []
    for i, block in enumerate(text.split(">")[1:]):
        body = block.partition("\n")[2]
        out.append((f"s{i}", re.sub(r"[^A-Za-z]", "", body).upper()))
    return out


def _digital(seqs):
    abc = pyhmmer.easel.Alphabet.amino()
    return abc, [pyhmmer.easel.TextSequence(name=n.encode(), sequence=s).digitize(abc) for n, s in seqs]


def _write(msa, fmt: str) -> bytes:
    buf = io.BytesIO()
    msa.write(buf, fmt)
    return buf.getvalue()


def _is_subsequence(row: str, seq: str) -> bool:
    it = iter(seq)
    return all(c in it for c in row.replace("-", ""))


@pytest.fixture(scope="module")
def hmmalign_files(homologs, tmp_path_factory):
    abc, dig = _digital(homologs[:40])
    hmm, _, _ = pyhmmer.plan7.Builder(abc).build(dig[0], pyhmmer.plan7.Background(abc))
    aln = pyhmmer.hmmer.hmmalign(hmm, dig)
    d = tmp_path_factory.mktemp("hmmalign")
    sto, a2m = _write(aln, "stockholm"), _write(aln, "a2m")
    (d / "family.sto").write_bytes(sto)
    (d / "family.a2m").write_bytes(a2m)
    return d, sto


def test_hmmalign_stockholm_reads_like_hmmers_own_a2m(hmmalign_files, homologs):
    d, sto = hmmalign_files
    assert b"." in sto.split(b"\n", 3)[2] and re.search(rb"\n\S+ +\S*[a-z]", sto)  # insert columns are there
    msa, ref = import_alignment(d / "family.sto"), import_alignment(d / "family.a2m")
    assert msa.rows == ref.rows and msa.depth == 40
    assert msa.query == homologs[0][1]  # the query aligned to its own HMM: every residue a match column
    seqs = dict(homologs)
    assert all(_is_subsequence(row, seqs[h.split()[0]]) for h, row in zip(msa.headers, msa.rows, strict=True))
    assert any("-" in row for row in msa.rows[1:])


def test_stockholm_is_found_by_its_header_whatever_the_suffix(hmmalign_files):
    d, sto = hmmalign_files
    (d / "family.txt").write_bytes(sto)
    (d / "family.sth").write_bytes(sto)
    (d / "family.sto.gz").write_bytes(gzip.compress(sto))
    (d / "family.a3m").write_bytes(sto)  # misnamed: the header decides
    ref = import_alignment(d / "family.sto").rows
    for name in ("family.txt", "family.sth", "family.sto.gz", "family.a3m"):
        assert alignment_format(d / name) == "stockholm", name
        assert import_alignment(d / name).rows == ref, name


def test_jackhmmer_alignment_with_rf_line_imports(homologs, tmp_path):
    """jackhmmer's -A alignment (RF, PP, #=GS DE lines; the query itself not among the targets)."""
    abc, dig = _digital(homologs[:300])
    block = pyhmmer.easel.DigitalSequenceBlock(abc, dig[1:])
    result = next(pyhmmer.hmmer.jackhmmer([dig[0]], block, max_iterations=2))
    aln = result.hits.to_msa(abc)
    sto = _write(aln, "stockholm")
    assert b"#=GC RF" in sto and b"#=GR " in sto and b"#=GS " in sto
    (tmp_path / "jack.sto").write_bytes(sto)
    (tmp_path / "jack.a2m").write_bytes(_write(aln, "a2m"))
    msa, ref = import_alignment(tmp_path / "jack.sto"), import_alignment(tmp_path / "jack.a2m")
    assert msa.rows == ref.rows and msa.depth == len(result.hits)
    assert msa.headers[0].endswith("[subseq from] " + msa.headers[0].split("/")[0])  # DE kept as description
    third = msa.headers[2].split()[0]
    chosen = import_alignment(tmp_path / "jack.sto", query_id=third)
    assert chosen.query_id == third and chosen.headers[0].split()[0] == third and "-" not in chosen.query
    seqs = dict(homologs)
    assert _is_subsequence(chosen.query, seqs[third.split("/")[0]])


def test_stockholm_errors_name_the_file_and_line(tmp_path, caplog):
    cut = tmp_path / "cut.sto"
    cut.write_text("# STOCKHOLM 1.0\nq  MKVLA\nh1 MKGVA\n")
    with pytest.raises(DataValidationError, match="no '//' line") as err:
        import_alignment(cut)
    assert str(cut) in str(err.value)
    bad = tmp_path / "bad.sto"
    bad.write_text("# STOCKHOLM 1.0\nq  MKVLA extra\n//\n")
    with pytest.raises(DataValidationError, match="line 2: expected 'name aligned-sequence'"):
        import_alignment(bad)
    two = tmp_path / "two.sto"
    two.write_text("# STOCKHOLM 1.0\nq  MKVLA\nh1 MKGVA\n//\n# STOCKHOLM 1.0\nz  WWWWW\n//\n")
    with caplog.at_level(logging.WARNING):
        assert import_alignment(two).rows == ("MKVLA", "MKGVA")
    assert "more than one alignment" in caplog.text


def test_aligned_fasta_drops_the_columns_where_the_query_has_a_gap(tmp_path):
    """A2M / aligned FASTA: A3M semantics, so the query is gap-free and other rows lose those columns."""
    path = tmp_path / "x.fasta"
    path.write_text(">q\nMK-VL-A\n>h1\nMKGVLWA\n>h2\n-K-VL.-A\n")
    msa = import_alignment(path)
    assert msa.rows == ("MKVLA", "MKVLA", "-KVLA")
