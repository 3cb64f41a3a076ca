"""Property-based tests (hypothesis, derandomized so every run tries the same examples) of the FASTA reader,
the header parsers, ingest and the tokenizers on arbitrary input: they never fail other than with their
documented errors, nothing is lost, and counts reconcile. The PDB / mmCIF readers are fuzzed in
test_hostile_properties_structures.py, the alignment readers and MSA tokens in test_hostile_properties_msa.py.

    .venv/bin/pytest -q tests/test_hostile_properties.py
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import re
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pipeline_lib.sequences.fasta as fasta
from pipeline_lib.config import IngestConfig
from pipeline_lib.errors import DataValidationError
from pipeline_lib.sequences.fasta import parse_header, read_fasta
from pipeline_lib.sequences.ingest import ingest_fasta, validate_record
from pipeline_lib.sequences.shards import tokenize_array
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_3DI, SAPROT_AA, SAPROT_ALPHABET

WS = b" \t\r\x0b\x0c"
PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                 suppress_health_check=[HealthCheck.too_slow])

# bytes that make FASTA interesting: structure, whitespace, residues, non-ASCII and NUL
FASTA_BYTES = st.lists(st.sampled_from([b">", b"\n", b"\r\n", b"\r", b" ", b"\t", b"\x00", b"\xff", b"\xc3\xa9",
                                        b"M", b"K", b"v", b"*", b"1", b"sp|", b"|", b"=", b"n=", b"x", b";",
                                        b"\xef\xbb\xbf"]),
                       max_size=80).map(b"".join) | st.binary(max_size=200)


def _write(data: bytes, suffix: str = ".fa") -> Path:
    f = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    f.write(data)
    f.close()
    return Path(f.name)


@contextlib.contextmanager
def small_blocks(n: int):
    """Make the reader decompress in ``n``-byte blocks, so record boundaries fall across blocks."""
    saved = fasta.BLOCK, getattr(fasta, "read_chunks", None)
    fasta.BLOCK = n
    if saved[1] is not None:
        fasta.read_chunks = functools.partial(saved[1], block=n)
    try:
        yield
    finally:
        fasta.BLOCK = saved[0]
        if saved[1] is not None:
            fasta.read_chunks = saved[1]


def model_records(data: bytes) -> list[tuple[str | None, str]]:
    """The documented reading of a FASTA byte string, line by line: what read_fasta must return. A UTF-8
    byte-order mark at the start and ';' comment lines are not part of any record."""
    pre, records = b"", []
    for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        if line.startswith(b";"):
            continue
        if line.startswith(b">"):
            records.append([line[1:].rstrip(b"\r").decode("utf-8", "replace").strip(), b""])
        elif records:
            records[-1][1] += line
        else:
            pre += line
    out = [(None, pre.translate(None, WS).decode("latin-1"))] if pre.translate(None, WS) else []
    return out + [(h, body.translate(None, WS).decode("latin-1")) for h, body in records]


# --- FASTA reader ------------------------------------------------------------------------------------

@PROPS
@given(FASTA_BYTES, st.integers(min_value=1, max_value=17))
def test_read_fasta_matches_the_line_model_at_any_block_size(data, block):
    assume(not data.startswith(b"\x1f\x8b"))
    path = _write(data)
    try:
        with small_blocks(block):
            got = [(r.header, r.sequence) for r in read_fasta(path)]
            indices = [r.index for r in read_fasta(path)]
    finally:
        path.unlink()
    assert got == model_records(data)
    assert indices == list(range(len(got)))
    residues = sum(len(s) for _, s in got)  # no residue byte lost or invented
    assert residues == sum(len(s) for _, s in model_records(data))


@settings(PROPS, max_examples=40)
@given(FASTA_BYTES)
def test_gzip_reads_like_plain_and_any_cut_is_an_error(data):
    assume(data)
    gz = gzip.compress(data)
    path = _write(gz, ".fa.gz")
    try:
        assert [(r.header, r.sequence) for r in read_fasta(path)] == model_records(data)
        for cut in sorted({2, len(gz) // 2, len(gz) - 1}):
            path.write_bytes(gz[:cut])
            with pytest.raises(DataValidationError, match="gzip"):
                list(read_fasta(path))
    finally:
        path.unlink()


def test_chunk_boundaries_only_before_a_record(tmp_path):
    """read_chunks (when present) cuts only right before a line-start '>' and loses no byte but a leading
    byte-order mark and ';' comment lines."""
    read_chunks = getattr(fasta, "read_chunks", None)
    if read_chunks is None:
        pytest.skip("this FASTA reader has no read_chunks")

    @PROPS
    @given(FASTA_BYTES, st.integers(min_value=1, max_value=9))
    def check(data, block):
        assume(not data.startswith(b"\x1f\x8b"))
        path = tmp_path / "c.fa"
        path.write_bytes(data)
        pieces = list(read_chunks(path, block))
        expected = re.sub(rb"(?m)^;[^\n]*(?:\n|$)", b"", data.removeprefix(b"\xef\xbb\xbf"))
        assert b"".join(pieces) == expected
        assert all(p for p in pieces)
        for prev, piece in zip(pieces, pieces[1:], strict=False):
            assert piece.startswith(b">") and prev.endswith(b"\n")

    check()


# --- header parsers ----------------------------------------------------------------------------------

HEADERS = st.text(max_size=60) | st.builds(
    lambda db, acc, fields: f"{db}{acc} some protein {fields}",
    st.sampled_from(["sp|", "tr|", "UniRef50_", "UniRef90_", ""]),
    st.from_regex(r"[A-Z0-9]{1,8}(\|[A-Z0-9_]{1,8})?", fullmatch=True),
    st.lists(st.tuples(st.sampled_from(["OS", "OX", "GN", "PE", "SV", "n", "Tax", "TaxID", "RepID", "x"]),
                       st.from_regex(r"[0-9]{1,6}|[A-Za-z ]{0,8}|-?[0-9]{1,3}", fullmatch=True)),
             max_size=5).map(lambda kv: " ".join(f"{k}={v}" for k, v in kv)))


@PROPS
@given(HEADERS)
def test_parse_header_returns_or_raises_value_error(text):
    try:
        h = parse_header(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert h.id and " " not in h.id and h.accession
    for value in (h.n_members, h.taxid, h.pe, h.sv):
        assert value is None or isinstance(value, int)


@PROPS
@given(HEADERS)
def test_ids_hold_no_whitespace_or_control_characters(text):
    import unicodedata

    try:
        h = parse_header(text)
    except ValueError:
        return
    assert not any(c.isspace() or unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in h.id), repr(h.id)


def test_vectorized_header_parser_agrees_with_parse_header():
    fh = pytest.importorskip("pipeline_lib.sequences.fasta_headers")
    if not hasattr(fh, "parse_headers"):
        pytest.skip("no vectorized header parser here")

    @PROPS
    @given(st.lists(HEADERS.map(lambda t: t.encode("utf-8", "replace")) | st.binary(max_size=40), max_size=12))
    def check(raw):
        idx, table = fh.parse_headers(pa.array(raw, pa.binary()))
        assert len(idx) == table.num_rows and list(idx) == sorted(set(idx))
        for i, row in zip(idx.tolist(), table.to_pylist(), strict=False):
            text = raw[i].rstrip(b"\r").decode("utf-8", "replace").strip()
            expected = parse_header(text)  # the fast path only takes headers the definition accepts
            assert row == {k: getattr(expected, k) for k in row}, raw[i]

    check()


# --- ingest ------------------------------------------------------------------------------------------

RECORDS = st.lists(st.tuples(
    st.sampled_from(["a", "b", "c", "sp|P1|X_Y d OS=Homo OX=9606 PE=1 SV=2", "UniRef50_Q1 n=2 Tax=x TaxID=3 RepID=Q1",
                     "tr|broken", "", " ", "id\x01ctl", "UniRef50_Q2 n=two"]) | st.text(max_size=12),
    st.sampled_from(["MKVLA", "mkvla", "MKVLA*", "MKV", "", "MK VL\tA", "MKXBZUO", "MK1", "MKVLAMKVLA", "MK\x00"])
    | st.text(alphabet="ACDEFGHIKLMNPQRSTVWYXacdk*", max_size=30)), min_size=1, max_size=25)


def model_ingest(path: Path, cfg: IngestConfig):
    """Ingest by its definition: validate_record per record, then first id wins, then first sequence wins."""
    allowed = frozenset(cfg.alphabet.upper())
    valid, quarantine = [], Counter()
    for rec in read_fasta(path):
        ok, bad = validate_record(rec.header, rec.sequence, cfg, allowed)
        if bad is not None:
            quarantine[(rec.index, bad[0])] += 1
        else:
            valid.append((rec.index, ok[0].id, ok[1]))
    ids, seqs, kept, dups = set(), {}, [], set()
    for index, ident, seq in valid:
        if ident in ids:
            quarantine[(index, "duplicate_id")] += 1
        elif seq in seqs:
            ids.add(ident)
            dups.add((ident, seqs[seq]))
        else:
            ids.add(ident)
            seqs[seq] = ident
            kept.append(ident)
    return kept, dups, quarantine


@settings(PROPS, max_examples=40)
@given(RECORDS, st.booleans())
def test_ingest_counts_reconcile_and_follow_validate_record(records, crlf):
    nl = "\r\n" if crlf else "\n"
    data = "".join(f">{h}{nl}{s}{nl}" for h, s in records).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.fa"
        path.write_bytes(data)
        cfg = IngestConfig(min_length=4, max_length=20, batch_rows=3)
        stats = ingest_fasta([path], Path(d) / "out", cfg)
        kept = pq.read_table(Path(d) / "out" / "sequences.parquet").column("id").to_pylist()
        dups = {(r["id"], r["kept_id"]) for r in pq.read_table(Path(d) / "out" / "duplicates.parquet").to_pylist()}
        q = Counter((r["source_record"], r["reason"]) for r in
                    pq.read_table(Path(d) / "out" / "quarantine.parquet").to_pylist())
        expected = model_ingest(path, cfg)
    assert stats.records_in == stats.kept + stats.duplicates + stats.quarantined == len(model_records(data))
    assert (kept, dups, q) == expected
    assert stats.quarantine_reasons == dict(Counter(reason for (_, reason), n in q.items() for _ in range(n)))


@settings(PROPS, max_examples=60)
@given(FASTA_BYTES)
def test_ingest_of_arbitrary_bytes_reconciles(data):
    assume(not data.startswith(b"\x1f\x8b") and model_records(data))  # an empty file is an error (see inputs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.fa"
        path.write_bytes(data)
        cfg = IngestConfig(min_length=1)
        stats = ingest_fasta([path], Path(d) / "out", cfg)
        kept = pq.read_table(Path(d) / "out" / "sequences.parquet").column("id").to_pylist()
        expected_kept, expected_dups, expected_q = model_ingest(path, cfg)
    assert stats.records_in == stats.kept + stats.duplicates + stats.quarantined == len(model_records(data))
    assert kept == expected_kept and stats.quarantined == sum(expected_q.values())


# sequence lines of residues, lower case and bytes that Unicode case folding turns into letters (latin-1 'ß'
# 0xdf -> "SS", 'µ' 0xb5 -> 'Μ', UTF-8 'ß', 'ﬀ' -> "FF", dotless 'ı' -> 'I'), whitespace and stops
BODY_BYTES = st.lists(st.sampled_from([b"M", b"k", b"v", b"s", b"\xdf", b"\xb5", b"\xff", b"\xc3\x9f", b"\xef\xac\x80",
                                       b"\xc4\xb1", b" ", b"\n", b"*"]), min_size=1, max_size=40).map(b"".join)


@settings(PROPS, max_examples=80)
@given(BODY_BYTES)
def test_kept_residues_are_vocabulary_letters_never_more_than_the_bytes(body):
    """Case folding maps a-z to A-Z and nothing else: a kept sequence holds only the alphabet's letters and is
    never longer than the record's residue bytes (today's 'ß' -> 'SS' invented residues)."""
    cfg = IngestConfig(min_length=1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.fa"
        path.write_bytes(b">r1\n" + body + b"\n")
        stats = ingest_fasta([path], Path(d) / "out", cfg)
        kept = pq.read_table(Path(d) / "out" / "sequences.parquet").column("sequence").to_pylist()
        q = pq.read_table(Path(d) / "out" / "quarantine.parquet").to_pylist()
    residues = len(body.translate(None, b" \n"))
    assert stats.kept + stats.quarantined == 1
    for seq in kept:
        assert set(seq) <= set(cfg.alphabet) and len(seq) <= residues
    if any(b > 127 for b in body):
        assert not kept and q[0]["reason"] == "invalid_characters" and "non-ASCII" in q[0]["detail"]


def test_non_ascii_letters_are_quarantined_with_what_the_file_holds(tmp_path):
    (tmp_path / "in.fa").write_bytes(b">latin\nMK\xdf\xdf\xdfVL\n>utf8\nMK\xc3\x9fVL\n>plain\nmkvl\n")
    stats = ingest_fasta([tmp_path / "in.fa"], tmp_path / "out", IngestConfig(min_length=1))
    q = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()}
    assert stats.kept == 1 and set(q) == {"latin", "utf8"}
    assert q["latin"]["detail"] == "latin: non-ASCII characters in the sequence: \\xdf"
    assert q["utf8"]["detail"] == "utf8: non-ASCII characters in the sequence: 'ß' (\\xc3\\x9f)"
    assert pq.read_table(tmp_path / "out" / "sequences.parquet").column("sequence").to_pylist() == ["MKVL"]


# --- tokenizers --------------------------------------------------------------------------------------

RESIDUES = [t for t in ESM_ALPHABET.tokens if len(t) == 1]


@PROPS
@given(st.text(max_size=50))
def test_esm_encode_never_fails_and_keeps_length(text):
    ids = ESM_ALPHABET.encode(text)
    assert len(ids) == len(text) + 2 and ids[0] == ESM_ALPHABET.cls_idx and ids[-1] == ESM_ALPHABET.eos_idx
    assert all(0 <= i < len(ESM_ALPHABET) for i in ids)


@PROPS
@given(st.text(alphabet=RESIDUES, max_size=50))
def test_esm_round_trip_over_its_residues(text):
    assert ESM_ALPHABET.decode(ESM_ALPHABET.encode(text)) == text


@PROPS
@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=30), max_size=20),
       st.integers(min_value=0, max_value=5))
def test_tokenize_array_equals_encode_for_ascii(seqs, start):
    arr = pa.array(seqs, pa.string()).slice(min(start, len(seqs)))
    got = tokenize_array(arr).to_pylist()
    assert got == [ESM_ALPHABET.encode(s) for s in seqs[min(start, len(seqs)):]]
    large = tokenize_array(pa.array(seqs, pa.large_string())).to_pylist()
    assert large == [ESM_ALPHABET.encode(s) for s in seqs]


@settings(PROPS, max_examples=60)
@given(st.lists(st.text(max_size=20), max_size=8))
def test_tokenize_array_works_on_utf8_bytes(seqs):
    """Documented: tokens are per UTF-8 byte (a non-ASCII letter is several <unk>); ingest only lets ASCII through."""
    got = tokenize_array(pa.array(seqs, pa.string())).to_pylist()
    assert [len(t) for t in got] == [len(s.encode()) + 2 for s in seqs]
    assert all(0 <= i < len(ESM_ALPHABET) for t in got for i in t)
    assert [t for t, s in zip(got, seqs, strict=False) if s.isascii()] == \
        [ESM_ALPHABET.encode(s) for s in seqs if s.isascii()]


def test_tokenize_array_documented_errors():
    with pytest.raises(DataValidationError, match="null"):
        tokenize_array(pa.array(["MKV", None]))
    assert tokenize_array(pa.array([], pa.string())).to_pylist() == []
    assert tokenize_array(pa.array(["", ""])).to_pylist() == [[0, 2], [0, 2]]


@PROPS
@given(st.text(alphabet=SAPROT_AA + "XZ", max_size=30), st.text(alphabet=SAPROT_3DI + SAPROT_3DI.upper() + "?",
                                                                 max_size=30))
def test_saprot_pairs_refuse_length_mismatch_and_stay_in_vocabulary(aa, di):
    if len(aa) != len(di):
        with pytest.raises(DataValidationError, match="differ in length"):
            SAPROT_ALPHABET.encode_pairs(aa, di)
        return
    ids = SAPROT_ALPHABET.encode_pairs(aa, di)
    assert len(ids) == len(aa) + 2 and all(0 <= i < len(SAPROT_ALPHABET) for i in ids)


@pytest.mark.parametrize("bad", [-1, 33, 10**6])
def test_decode_refuses_ids_outside_the_vocabulary(bad):
    with pytest.raises(DataValidationError, match=str(bad)):
        ESM_ALPHABET.decode([5, bad])

