import gzip
import re

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_lib.config import IngestConfig
from pipeline_lib.errors import DataValidationError
from pipeline_lib.sequences import fasta
from pipeline_lib.sequences.fasta import decode_header, parse_header, read_chunks, read_fasta, record_layout
from pipeline_lib.sequences.fasta_headers import HEADER_FIELDS, parse_headers
from pipeline_lib.sequences.ingest import validate_record
from tests.conftest import fixture_path

ALLOWED = frozenset(IngestConfig().alphabet)


def recs(tmp_path, data: bytes, name="x.fa"):
    p = tmp_path / name
    p.write_bytes(data)
    return list(read_fasta(p))


def reference_records(data: bytes) -> list[tuple[str | None, str]]:
    """The line-by-line reader this module replaced: the definition of a record."""
    out, header, chunks, started = [], None, [], False
    for line in data.split(b"\n"):
        if line.startswith(b">"):
            if started:
                out.append((header, b"".join(chunks).decode("latin-1")))
            header, chunks, started = line[1:].rstrip(b"\r").decode("utf-8", "replace").strip(), [], True
        elif stripped := line.translate(None, b" \t\r\x0b\x0c"):
            chunks.append(stripped)
            started = True
    if started:
        out.append((header, b"".join(chunks).decode("latin-1")))
    return out


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


def test_corrupt_gzip_names_the_file_with_either_decompressor(tmp_path, monkeypatch):
    data = b"".join(b">s%d\n%s\n" % (i, b"MKVLA" * 40) for i in range(2000))
    bad = bytearray(gzip.compress(data))
    bad[len(bad) // 2: len(bad) // 2 + 64] = b"x" * 64
    for igzip in {fasta._igzip, None}:
        monkeypatch.setattr(fasta, "_igzip", igzip)
        with pytest.raises(DataValidationError, match="bad.fa.gz"):
            recs(tmp_path, bytes(bad), "bad.fa.gz")


def test_isal_and_gzip_read_the_same(tmp_path, monkeypatch):
    data = b"".join(b">s%d\n%s\n" % (i, b"MKVLA" * (i % 50 + 1)) for i in range(3000))
    p = tmp_path / "two_members.fa.gz"
    p.write_bytes(gzip.compress(data[:50_000]) + gzip.compress(data[50_000:]))  # multi-member, like bgzip
    chunks = {}
    for igzip in {fasta._igzip, None}:
        monkeypatch.setattr(fasta, "_igzip", igzip)
        chunks[igzip] = b"".join(read_chunks(p))
    assert set(chunks.values()) == {data}


def test_long_lines(tmp_path):
    r = recs(tmp_path, b">long\n" + b"A" * 100_000 + b"\n")
    assert len(r[0].sequence) == 100_000


def test_records_across_block_edges(tmp_path, monkeypatch):
    """A record split over two (or many) blocks, a '>' that does not start a line, a block edge between
    the line break and the '>': the records are those of the whole text."""
    data = (b"pre text\n>a first\nMKV>LA\nGG\n>b >not a new record\n" + b"W" * 50 + b"\n\n>c\r\nAC\r\n>d\n>\n"
            b"A>\n>e x\nMK")
    p = tmp_path / "edges.fa"
    p.write_bytes(data)
    expected = reference_records(data)
    assert [r.header for r in read_fasta(p)] == [None, "a first", "b >not a new record", "c", "d", "", "e x"]
    for block in (1, 2, 3, 7, 10, 64, 1 << 22):
        monkeypatch.setattr(fasta, "BLOCK", block)
        pieces = list(read_chunks(p))
        assert b"".join(pieces) == data and all(x.startswith(b">") for x in pieces[1:])
        assert [(r.header, r.sequence) for r in read_fasta(p)] == expected
        assert _layout_records(pieces) == expected


def _layout_records(pieces: list[bytes]) -> list[tuple[str | None, str]]:
    """The records as record_layout finds them, a whole chunk at a time."""
    out = []
    for k, chunk in enumerate(pieces):
        lay = record_layout(chunk, first=k == 0)
        if pre := lay.preamble.translate(None, b" \t\r\x0b\x0c"):
            out.append((None, pre.decode("latin-1")))
        heads = lay.slices(lay.head_start, lay.head_end).to_pylist()
        bodies = lay.slices(lay.head_end, lay.body_end).to_pylist()
        out += [(decode_header(h), b.translate(None, b" \t\r\x0b\x0c").decode("latin-1"))
                for h, b in zip(heads, bodies, strict=False)]
    return out


LINE_BITS = [b"MKV", b"mkv", b"A*", b" ", b"\t", b"\r", b"", b"x\x00\xff", b">", b"QQ>R"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from(LINE_BITS), max_size=4)), max_size=25),
       st.sampled_from([b"\n", b"\r\n"]), st.sampled_from([1, 2, 5, 16, 1 << 22]), st.booleans())
def test_chunked_reading_matches_line_by_line(tmp_path, monkeypatch, lines, nl, block, gz):
    data = nl.join((b">h%d %s" % (i, b"".join(bits)) if head else b"".join(bits))
                   for i, (head, bits) in enumerate(lines))
    p = tmp_path / ("p.fa.gz" if gz else "p.fa")
    p.write_bytes(gzip.compress(data) if gz else data)
    monkeypatch.setattr(fasta, "BLOCK", block)
    expected = reference_records(data)
    assert [(r.header, r.sequence) for r in read_fasta(p)] == expected
    assert [r.index for r in read_fasta(p)] == list(range(len(expected)))
    assert _layout_records(list(read_chunks(p))) == expected


def test_headers():
    h = parse_header("UniRef50_Q9K794 Putative AgrB-like protein n=2 Tax=Bacillus TaxID=1386 RepID=AGRB_BACHD")
    assert (h.db, h.accession, h.n_members, h.tax, h.taxid, h.rep_id) == \
        ("UniRef50", "Q9K794", 2, "Bacillus", 1386, "AGRB_BACHD")
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


def _check_column_parse(raw: list[bytes]) -> int:
    """parse_headers must give parse_header's fields for every header it takes; returns how many it took."""
    idx, table = parse_headers(pa.array(raw, pa.binary()))
    assert list(idx) == sorted(set(idx.tolist()))
    for i, row in zip(idx.tolist(), table.to_pylist(), strict=False):
        h = parse_header(decode_header(raw[i]))  # raises if the column parser accepted a malformed header
        assert row == {f.name: getattr(h, f.name) for f in HEADER_FIELDS}, raw[i]
    return len(idx)


def test_column_header_parser_agrees_on_real_headers():
    raw = [r.header.encode() for name in ("uniprot_trembl_500.fasta", "some_proteins.fasta")
           for r in read_fasta(fixture_path("sequences", name))]
    raw += [b"UniRef50_Q9K794 Putative AgrB-like protein n=2 Tax=Bacillus TaxID=1386 RepID=AGRB_BACHD",
            b"sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens OX=9606 GN=HBA1 PE=1 SV=2",
            b"tr|A0A024R161|A0A024R161_HUMAN Guanine nucleotide-binding protein OS=Homo sapiens OX=9606 PE=3 SV=1",
            b"fam0_parent", b"plain id with a description", b"UniRef90_X  n=3 Tax= TaxID=5 RepID=  R"]
    assert _check_column_parse(raw) >= len(raw) - 5  # only a few odd ones ('x = y' in OS=) left to parse_header


FIELD_BITS = ["sp|", "tr|", "UniRef50_", "UniRef100_", "UniRef30_", "P12345", "|", "_", " ", "  ", "=", " OS=",
              " OX=", " GN=", " PE=", " SV=", " n=", " Tax=", " TaxID=", " RepID=", " Split=", "Homo sapiens", "9606",
              "007", "-3", "+4", "1_0", "99999999999", "abc", "x=y", "\t", "\x01", "é", "\udcff", "(strain 1)", ""]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(FIELD_BITS), max_size=14).map("".join), min_size=1, max_size=40))
def test_column_header_parser_agrees_on_fuzzed_headers(headers):
    _check_column_parse([h.encode("utf-8", "surrogateescape") for h in headers])


def test_column_header_parser_covers_the_usual_layouts():
    raw = [b"UniRef50_A%d Protein %d n=%d Tax=Homo sapiens TaxID=9606 RepID=R%d" % (i, i, i, i) for i in range(50)]
    raw += [b"sp|P%d|N_HUMAN Hemo OS=Homo sapiens OX=9606 GN=G%d PE=1 SV=2" % (i, i) for i in range(50)]
    raw += [b"tr|Q%d|Q_X Thing OS=X y OX=1 PE=4 SV=1" % i for i in range(50)]
    raw += [b"id%d free text = anything" % i for i in range(50)]
    assert _check_column_parse(raw) == len(raw)


def test_control_characters_pattern_is_the_documented_one():
    assert re.compile("[\x00-\x08\x0a-\x1f\ufffd]").search("a\tb") is None
