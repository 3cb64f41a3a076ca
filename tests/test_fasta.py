import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_lib.config import IngestConfig
from pipeline_lib.errors import DataValidationError
from pipeline_lib.fasta import parse_header, read_fasta
from pipeline_lib.ingest import validate_record
from tests.conftest import fixture_path

ALLOWED = frozenset(IngestConfig().alphabet)


def recs(tmp_path, data: bytes, name="x.fa"):
    p = tmp_path / name
    p.write_bytes(data)
    return list(read_fasta(p))


def test_crlf_lowercase_star_and_wrapping(tmp_path):
    r = recs(tmp_path, b">a desc\r\nmkv\r\nLLA*\r\n>b\r\nAC\r\n")
    assert [(x.header, x.sequence) for x in r] == [("a desc", "mkvLLA*"), ("b", "AC")]
    row, bad = validate_record(r[0].header, r[0].sequence, IngestConfig(min_length=1), ALLOWED)
    assert bad is None and row[1] == "MKVLLA"


def test_missing_header_and_empty_records(tmp_path):
    r = recs(tmp_path, b"MKV\n>a\n>b\nAAA\n")
    assert [(x.header, x.sequence) for x in r] == [(None, "MKV"), ("a", ""), ("b", "AAA")]
    assert validate_record(None, "MKV", IngestConfig(), ALLOWED)[1][0] == "missing_header"
    assert validate_record("a", "", IngestConfig(), ALLOWED)[1][0] == "empty_sequence"
    assert recs(tmp_path, b"") == []


def test_binary_garbage_is_a_record_error_not_a_crash(tmp_path):
    r = recs(tmp_path, b">a\nMK\x00\xff\x89PNG\n>b\nMKVLA\n")
    assert len(r) == 2
    reason, detail = validate_record(r[0].header, r[0].sequence, IngestConfig(min_length=1), ALLOWED)[1]
    assert reason == "invalid_characters" and "a:" in detail
    assert validate_record("\x00bad", "MKV", IngestConfig(min_length=1), ALLOWED)[1][0] == "malformed_header"


def test_gzip_and_truncated_gzip(tmp_path):
    data = b"".join(b">s%d\n%s\n" % (i, b"MKVLA" * 40) for i in range(2000))
    gz = gzip.compress(data)
    assert len(recs(tmp_path, gz, "ok.fa.gz")) == 2000
    with pytest.raises(DataValidationError) as err:
        recs(tmp_path, gz[: len(gz) // 2], "cut.fa.gz")
    assert "cut.fa.gz" in str(err.value) and "truncated" in str(err.value)


def test_long_lines(tmp_path):
    r = recs(tmp_path, b">long\n" + b"A" * 100_000 + b"\n")
    assert len(r[0].sequence) == 100_000


def test_headers():
    h = parse_header("UniRef50_Q9K794 Putative AgrB-like protein n=2 Tax=Bacillus TaxID=1386 RepID=AGRB_BACHD")
    assert (h.db, h.accession, h.n_members, h.tax, h.taxid, h.rep_id) == ("UniRef50", "Q9K794", 2, "Bacillus", 1386, "AGRB_BACHD")
    h = parse_header("sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens OX=9606 GN=HBA1 PE=1 SV=2")
    assert (h.db, h.accession, h.description, h.tax, h.taxid, h.gene, h.pe, h.sv) == \
        ("sp", "P69905", "Hemoglobin subunit alpha", "Homo sapiens", 9606, "HBA1", 1, 2)
    for bad in ["", "   ", "sp|P1 broken", "UniRef50_X desc n=two Tax=a TaxID=1 RepID=b"]:
        with pytest.raises(ValueError):
            parse_header(bad)


def test_real_uniprot_and_uniref_headers():
    trembl = list(read_fasta(fixture_path("sequences", "uniprot_trembl_500.fasta")))
    assert len(trembl) == 500
    parsed = [parse_header(r.header) for r in trembl]
    assert {h.db for h in parsed} == {"sp", "tr"} and all(h.tax and h.pe is not None for h in parsed)
    uniref = [parse_header(r.header) for r in read_fasta(fixture_path("sequences", "some_proteins.fasta"))]
    assert len(uniref) == 15 and all(h.db == "UniRef50" for h in uniref)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_|.]{1,20}", fullmatch=True),
                          st.text(alphabet="ACDEFGHIKLMNPQRSTVWYacdefghikl", min_size=0, max_size=300),
                          st.integers(min_value=1, max_value=80)), max_size=20),
       st.booleans())
def test_roundtrip_property(tmp_path_factory, records, crlf):
    nl = "\r\n" if crlf else "\n"
    text = "".join(f">{h}{nl}" + "".join(s[i:i + w] + nl for i in range(0, len(s), w)) for h, s, w in records)
    p = tmp_path_factory.mktemp("fa") / "p.fa"
    p.write_text(text)
    got = [(r.header, r.sequence) for r in read_fasta(p)]
    assert got == [(h, s) for h, s, _ in records]
