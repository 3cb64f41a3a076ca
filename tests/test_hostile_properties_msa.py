"""Property-based tests (hypothesis, derandomized) of the A3M / A2M / Stockholm readers on arbitrary bytes
and on damaged real A3M files, and of the MSA tokens: a reader returns an alignment the MSA stage can
use (every row as long as the query, only alignment letters, Neff between 1 and the depth, written
back as A3M it reads the same) or raises ``DataValidationError`` naming the file, never anything else;
MSA tokens round-trip through the Arrow table and the shard files.

    .venv/bin/pytest -q tests/test_hostile_properties_msa.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.a3m import ALIGNED_LETTERS, Msa, import_alignment, parse_a3m, read_a3m
from pipeline_lib.msa.tokens import (
    MSA_SHARD_SCHEMA,
    msa_arrays,
    msa_shard_table,
    read_msa_tokens,
    tokenize_msa,
    write_msa_shards,
)
from pipeline_lib.tokenizer import ESM_ALPHABET
from tests.conftest import FIXTURES
from tests.test_hostile_properties_structures import damaged

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                 suppress_health_check=[HealthCheck.too_slow])
_ALIGNED_DELETE = str.maketrans("", "", ALIGNED_LETTERS)
_MSA_RESIDUES = ALIGNED_LETTERS.replace("-", "")


# --- A3M / A2M / Stockholm readers -------------------------------------------------------------------

MSA_FIXTURES = FIXTURES / "msa"
# structure, line ends (str.splitlines also splits on \x85 and U+2028), residues, insertions, junk
A3M_BYTES = st.lists(st.sampled_from([b">", b"\n", b"\r\n", b"#", b" ", b"\t", b"\x00", b"\xff", b"\xc3\xa9", b"A",
                                      b"M", b"-", b".", b"*", b"a", b"k", b"J", b"1", b"query", b"\xc2\x85",
                                      "\u2028".encode()]), max_size=60).map(b"".join) | st.binary(max_size=200)
STOCKHOLM_BYTES = st.lists(st.sampled_from([b"# STOCKHOLM 1.0\n", b"//\n", b"seq1 ", b"seq2 ", b"ACDE", b"a-c.",
                                            b"\n", b"#=GS seq1 DE x\n", b"#=GC RF xx\n", b" ", b"\xff"]),
                           max_size=20).map(b"".join)


def check_msa_contract(read, path: Path):
    """``read(path)`` gives an alignment the MSA stage can use, or a DataValidationError naming the file."""
    try:
        msa = read(path)
    except DataValidationError as exc:
        assert exc.path == str(path) and str(path) in str(exc), exc
        return None
    assert msa.depth == len(msa.headers) >= 1 and msa.query_length >= 1 and msa.query.strip("-")
    assert all(len(r) == msa.query_length and not r.translate(_ALIGNED_DELETE) for r in msa.rows)
    assert msa.array().shape == (msa.depth, msa.query_length)
    assert 1.0 - 1e-9 <= msa.neff <= msa.depth + 1e-9
    again = parse_a3m(msa.to_a3m())  # what the MSA store writes reads back the same
    assert (again.rows, again.headers) == (msa.rows, msa.headers)
    return msa


@settings(PROPS, max_examples=100)
@given(A3M_BYTES, st.sampled_from([".a3m", ".a2m", ".fasta", ".txt"]))
def test_alignment_reader_on_arbitrary_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"in{suffix}"
        path.write_bytes(data)
        check_msa_contract(import_alignment, path)


@settings(PROPS, max_examples=60)
@given(STOCKHOLM_BYTES | st.binary(max_size=120))
@example(b"# STOCKHOLM 1.0\n//\nseq1 ")  # found by this test: Bio.AlignIO raised a bare AssertionError
def test_stockholm_reader_on_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.sto"
        path.write_bytes(data)
        check_msa_contract(import_alignment, path)


@pytest.mark.skipif(not MSA_FIXTURES.is_dir(), reason=f"shared fixtures not available: {MSA_FIXTURES}")
@settings(PROPS, max_examples=60)
@given(st.sampled_from(["UniRef50_E9K9Y4.a3m", "hhsuite_query.a3m"]), st.data())
def test_damaged_real_a3m_gives_an_alignment_or_a_validation_error(name, data):
    """Real A3M files cut, with bytes flipped or inserted, lines dropped or doubled (the structure tests'
    damage, whose number edits only touch ATOM rows)."""
    raw = data.draw(damaged((MSA_FIXTURES / name).read_bytes(), cif=False))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(raw)
        check_msa_contract(read_a3m, path)


# --- MSA tokens ----------------------------------------------------------------------------------------

@st.composite
def msa_lists(draw):
    """Valid alignments: a gap-free-ish query, rows of its length over the ESM residues and '-'."""
    out = []
    for i in range(draw(st.integers(0, 5))):
        length = draw(st.integers(1, 12))
        query = draw(st.text(_MSA_RESIDUES, min_size=length, max_size=length))
        rows = [query] + draw(st.lists(st.text(ALIGNED_LETTERS, min_size=length, max_size=length), max_size=6))
        out.append(Msa(f"q{i}", tuple(rows), tuple(f"q{i} row {j}" for j in range(len(rows)))))
    return out


@settings(PROPS, max_examples=60)
@given(msa_lists(), st.integers(1, 4), st.integers(1, 3))
def test_msa_tokens_round_trip_through_table_and_shards(msas, rows_per_shard, row_group_rows):
    for m in msas:
        ids = tokenize_msa(m)
        assert ids.shape == (m.depth, m.query_length) and ids.dtype == np.uint8
        assert [ESM_ALPHABET.decode(r) for r in ids] == list(m.rows)
    table = msa_shard_table(msas)
    assert table.schema.equals(MSA_SHARD_SCHEMA) and table.column("depth").to_pylist() == [m.depth for m in msas]
    arrays = msa_arrays(table.column("msa_tokens"))
    assert all(np.array_equal(a, tokenize_msa(m)) for a, m in zip(arrays, msas, strict=False))
    with tempfile.TemporaryDirectory() as d:
        man = write_msa_shards({"train": msas}, d, rows_per_shard=rows_per_shard, row_group_rows=row_group_rows)
        files = man["splits"]["train"]["files"]
        back = [x for f in files for x in read_msa_tokens(Path(d) / f["path"])]
    assert [q for q, _ in back] == [m.query_id for m in msas]
    assert all(np.array_equal(a, tokenize_msa(m)) for (_, a), m in zip(back, msas, strict=False))
    assert man["splits"]["train"]["rows"] == len(msas) and all(f["rows"] <= rows_per_shard for f in files)
    assert man["splits"]["train"]["tokens"] == sum(m.depth * m.query_length for m in msas)
