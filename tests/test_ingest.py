import gzip
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_lib import schemas
from pipeline_lib.config import IngestConfig
from pipeline_lib.sequences import fasta
from pipeline_lib.sequences.ingest import _invalid_pattern, ingest_fasta, seq_hash, source_names, validate_record
from tests.conftest import fixture_path
from tests.test_fasta import reference_records


def test_counts_reconcile_and_nothing_is_lost(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_bytes(b"junk before header\n>a\nMKVLAAGIVLLA*\n>b dup seq\nmkvlaagivlla\n>a\nMKKKKKKKKKKKKK\n"
                   b">bad\nMK12VLAAGIVL\n>short\nMKV\n>\nMKVLAAGIVLLAW\n>c\nMKVLAAGIVLLAWW\n")
    stats = ingest_fasta([fa], tmp_path / "out", IngestConfig(min_length=5))
    assert stats.records_in == 8
    assert (stats.kept, stats.duplicates, stats.quarantined) == (2, 1, 5)
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert [(f.name, f.type) for f in seqs.schema] == [(f.name, f.type) for f in schemas.SEQUENCES]
    assert seqs.column("id").to_pylist() == ["a", "c"]
    assert seqs.column("sequence").to_pylist()[0] == "MKVLAAGIVLLA"
    dups = pq.read_table(tmp_path / "out" / "duplicates.parquet").to_pylist()
    assert [(d["id"], d["kept_id"]) for d in dups] == [("b", "a")]
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert sorted(r["reason"] for r in q) == ["duplicate_id", "invalid_characters", "malformed_header",
                                               "missing_header", "too_short"]
    assert all(r["source_file"] == fa.name for r in q)  # relative: the same input anywhere gives the same bytes
    assert len(seqs) + len(dups) + len(q) == stats.records_in


def test_real_fasta_and_memory_independent_row_groups(tmp_path):
    fa = fixture_path("sequences", "uniprot_trembl_500.fasta")
    stats = ingest_fasta([fa], tmp_path, IngestConfig(batch_rows=64))
    assert stats.records_in == 500 and stats.kept + stats.duplicates + stats.quarantined == 500
    t = pq.read_table(tmp_path / "sequences.parquet")
    assert all(v is not None for v in t.column("tax").to_pylist())
    assert set(t.column("db").to_pylist()) == {"sp", "tr"}
    assert pq.ParquetFile(tmp_path / "sequences.parquet").metadata.num_row_groups == -(-stats.kept // 64)


def reference_ingest(files, cfg: IngestConfig):
    """What ingest_fasta must produce, one record at a time: (sequences, duplicates, quarantine) rows."""
    allowed = _invalid_pattern(frozenset(cfg.alphabet.upper()))
    kept, quarantine = [], []
    for path, name in zip(files, source_names(files), strict=False):
        data = path.read_bytes()
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        for index, (header, sequence) in enumerate(reference_records(data)):
            ok, bad = validate_record(header, sequence, cfg, allowed)
            if bad:
                quarantine.append({"stage": "ingest", "source_file": name, "source_record": index,
                                   "id": header.split(" ", 1)[0] if header else None, "reason": bad[0],
                                   "detail": bad[1], "raw": (header or "")[:200]})
                continue
            h, seq = ok
            kept.append({"id": h.id, "accession": h.accession, "description": h.description, "db": h.db,
                         "n_members": h.n_members, "tax": h.tax, "taxid": h.taxid, "rep_id": h.rep_id,
                         "gene": h.gene, "pe": h.pe, "sv": h.sv, "sequence": seq, "length": len(seq),
                         "seq_hash": seq_hash(seq), "source_file": name, "source_record": index})
    ids, hashes, sequences, duplicates = set(), {}, [], []
    for row in kept:  # the first occurrence of an id wins, then the first occurrence of a sequence
        if row["id"] in ids:
            quarantine.append({"stage": "ingest", "source_file": row["source_file"],
                               "source_record": row["source_record"], "id": row["id"], "reason": "duplicate_id",
                               "detail": f"{row['id']}: id already used by an earlier record", "raw": None})
            continue
        ids.add(row["id"])
        if row["seq_hash"] in hashes:
            duplicates.append({"id": row["id"], "kept_id": hashes[row["seq_hash"]], "seq_hash": row["seq_hash"],
                               "source_file": row["source_file"], "source_record": row["source_record"]})
            continue
        hashes[row["seq_hash"]] = row["id"]
        sequences.append(row)
    return sequences, duplicates, quarantine


HEADERS = ["UniRef50_A{i} Protein {i} n=2 Tax=Homo sapiens TaxID=9606 RepID=R{i}", "id{i} desc", "dup", "",
           "sp|P{i}|N{i}_HUMAN Hemo OS=Homo sapiens OX=9606 GN=G{i} PE=1 SV=2", "tr|Q{i}|Q_X T OS=X OX=1 PE=4 SV=1",
           "sp|bad{i}", "  spaced{i}  ", "ctl\x01{i}", "caf\u00e9{i}", "UniRef90_B{i} x n=abc Tax=a TaxID=1 RepID=b",
           "x{i} a=b", "UniRef100_D{i}  n=3 Tax= TaxID=5 RepID=  R", "sp|P{i}|N OS=a OX=1 PE=1 SV=1 Split=0"]
SEQS = ["MKVLAAGIVLLAW", "mkvlaagivllaw", "MKVLAAGIVLLA*", "MKV", "", "MKVLAJGIVLLAW", "MK VLAAG\tIVLLAW",
        "MKVLAAGIVLLAW**", "MKVL\x00\xffAAGIVLLAW", "XBZUOXBZUOXBZ", "mKvLaAgIvLlAwW", "A" * 130, "*", "MKV>LAAGIVLLA"]


@st.composite
def fasta_files(draw):
    records = draw(st.lists(st.tuples(st.sampled_from(HEADERS), st.integers(0, 8), st.sampled_from(SEQS),
                                      st.sampled_from([4, 60, 1000])), max_size=30))
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    pre = draw(st.sampled_from(["", "", "MKV" + nl, nl + nl]))
    text = pre + "".join(f">{h.format(i=i)}{nl}" + nl.join(s[j:j + w] for j in range(0, len(s), w)) + nl
                         for h, i, s, w in records)
    return text.encode("latin-1")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(fasta_files(), min_size=1, max_size=2), st.sampled_from([1, 3, 16, 1 << 22]), st.booleans(),
       st.sampled_from([IngestConfig(), IngestConfig(min_length=1, max_length=20),
                        IngestConfig(alphabet="ACDEFGHIK*")]))
def test_same_rows_as_record_by_record(tmp_path_factory, monkeypatch, texts, block, gz, cfg):
    """Chunked, vectorized ingest == validate_record on each record + first-wins dedupe, row for row."""
    d = tmp_path_factory.mktemp("ing")
    files = []
    for k, text in enumerate(texts):
        files.append(d / f"f{k}.fa{'.gz' if gz else ''}")
        files[-1].write_bytes(gzip.compress(text) if gz else text)
    monkeypatch.setattr(fasta, "BLOCK", block)
    stats = ingest_fasta(files, d / "out", cfg)
    sequences, duplicates, quarantine = reference_ingest(files, cfg)
    assert pq.read_table(d / "out" / "sequences.parquet").to_pylist() == sequences
    assert pq.read_table(d / "out" / "duplicates.parquet").to_pylist() == duplicates
    assert pq.read_table(d / "out" / "quarantine.parquet").to_pylist() == quarantine
    assert (stats.kept, stats.duplicates, stats.quarantined) == (len(sequences), len(duplicates), len(quarantine))
    assert stats.residues_kept == sum(r["length"] for r in sequences)
    stats.check()


def test_duplicates_are_dropped_in_order_across_row_groups(tmp_path):
    fa = tmp_path / "dups.fa"
    seqs = ["MKVLAAGIVLLAW" + "ACDEFGHIKLMNPQRSTVWY"[i % 20] * (i % 7 + 1) for i in range(300)]
    fa.write_text("".join(f">s{i}\n{seqs[i % 100]}\n" + (f">s{i}\nMKVLAAGIVLLAWKK\n" if i % 50 == 0 else "")
                          for i in range(300)))
    stats = ingest_fasta([fa], tmp_path / "out", IngestConfig(batch_rows=32))
    out = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert out.column("id").to_pylist() == [f"s{i}" for i in range(100)]
    assert pq.ParquetFile(tmp_path / "out" / "sequences.parquet").metadata.num_row_groups > 1
    assert (stats.kept, stats.duplicates, stats.quarantine_reasons) == (100, 200, {"duplicate_id": 6})
    dups = pq.read_table(tmp_path / "out" / "duplicates.parquet").to_pylist()
    assert [d["kept_id"] for d in dups[:3]] == ["s0", "s1", "s2"] and dups[0]["id"] == "s100"


def test_binary_garbage_and_truncated_gzip(tmp_path):
    garbage = tmp_path / "garbage.fa"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00>\x00\n>\xff\xfe\n\x00\x01MKV\n")
    stats = ingest_fasta([garbage], tmp_path / "g", IngestConfig())
    assert stats.records_in == stats.quarantined == 2 and stats.kept == 0
    cut = tmp_path / "cut.fa.gz"
    whole = gzip.compress(b"".join(b">s%d\nMKVLAAGIVLLAW%d\n" % (i, i) for i in range(50_000)))
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception, match="cut.fa.gz.*truncated"):
        ingest_fasta([cut], tmp_path / "c", IngestConfig())


def test_source_file_is_relative_so_the_same_input_anywhere_gives_the_same_bytes(tmp_path):
    assert source_names([tmp_path / "a" / "x.fa"]) == ["x.fa"]
    assert source_names([tmp_path / "a" / "x.fa", tmp_path / "b" / "x.fa"]) == ["a/x.fa", "b/x.fa"]
    assert source_names([tmp_path / "a" / "x.fa", Path("/elsewhere/y.fa")]) == ["x.fa", "y.fa"]
    assert source_names([]) == []
    text = b">s1\nMKVLAAGIVLLA\n>s2\nMKV\n"  # s2 is too short: quarantined with its source too
    outs = []
    for where in ("one", "two/deeper"):
        src = tmp_path / where / "in.fa"
        src.parent.mkdir(parents=True)
        src.write_bytes(text)
        ingest_fasta([src], tmp_path / where / "out", IngestConfig())
        outs.append([(tmp_path / where / "out" / f).read_bytes() for f in ("sequences.parquet", "quarantine.parquet")])
    assert outs[0] == outs[1]
    assert pq.read_table(tmp_path / "one" / "out" / "sequences.parquet").column("source_file").to_pylist() == ["in.fa"]


# --- real-world FASTA shapes (#19): nucleotide input, NCBI merged deflines, comments, BOM ------------------

_CODON = {"A": "GCT", "C": "TGT", "D": "GAT", "E": "GAA", "F": "TTT", "G": "GGT", "H": "CAT", "I": "ATT",
          "K": "AAA", "L": "CTG", "M": "ATG", "N": "AAT", "P": "CCG", "Q": "CAG", "R": "CGT", "S": "TCT",
          "T": "ACC", "V": "GTT", "W": "TGG", "Y": "TAT"}


def _real_proteins(n: int) -> list[tuple[str, str]]:
    recs = [(r.header, r.sequence) for r in fasta.read_fasta(fixture_path("sequences", "uniprot_trembl_500.fasta"))]
    return recs[:n]


def test_nucleotide_records_are_quarantined_and_no_real_protein_is(tmp_path):
    """The 500 real TrEMBL proteins stay; their coding sequences (each protein back-translated with one codon
    per residue: DNA written for this test) and the same as RNA are quarantined as `nucleotide`."""
    proteins = _real_proteins(500)
    dna = [(f"cds{i} back-translated", "".join(_CODON.get(a, "NNN") for a in seq) + "TAA")
           for i, (_, seq) in enumerate(proteins[:20])]
    rna = [(f"mrna{i}", seq.replace("T", "U")) for i, (_, seq) in enumerate(dna[:5])]
    (tmp_path / "mixed.fa").write_text("".join(f">{h}\n{s}\n" for h, s in proteins + dna + rna))
    stats = ingest_fasta([tmp_path / "mixed.fa"], tmp_path / "out", IngestConfig())
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    nuc = [r for r in q if r["reason"] == "nucleotide"]
    assert sorted(r["id"] for r in nuc) == sorted([h.split()[0] for h, _ in dna + rna])
    assert "ingest.allow_nucleotide" in nuc[0]["detail"]
    assert stats.records_in == stats.kept + stats.duplicates + stats.quarantined == 525
    kept = set(pq.read_table(tmp_path / "out" / "sequences.parquet", columns=["id"]).column(0).to_pylist())
    assert not any(i.startswith(("cds", "mrna")) for i in kept)
    allowed = ingest_fasta([tmp_path / "mixed.fa"], tmp_path / "allowed", IngestConfig(allow_nucleotide=True))
    assert "nucleotide" not in allowed.quarantine_reasons and allowed.kept == stats.kept + 25


def test_ncbi_merged_deflines_keep_the_first_id_and_the_rest_as_description(tmp_path):
    """nr-style deflines (NCBI BLAST database FASTA: several titles joined by Ctrl-A, written here after its
    documented layout) with the first real protein of the fixtures."""
    (_, seq), = _real_proteins(1)
    header = "WP_000001.1 protein X [Escherichia coli]\x01XP_000002.1 protein X [Shigella]\x01NP_3.1 X"
    (tmp_path / "nr.fa").write_bytes(f">{header}\n{seq}\n".encode())
    stats = ingest_fasta([tmp_path / "nr.fa"], tmp_path / "out", IngestConfig())
    (row,) = pq.read_table(tmp_path / "out" / "sequences.parquet").to_pylist()
    assert stats.quarantined == 0 and row["id"] == "WP_000001.1"
    assert row["description"] == "protein X [Escherichia coli] >XP_000002.1 protein X [Shigella] >NP_3.1 X"
    bad = validate_record("a\x01b\x02c", "MKV", IngestConfig(min_length=1), frozenset("MKV"))
    assert bad[1][0] == "malformed_header"                  # other control characters still are


def test_comment_lines_and_a_byte_order_mark_are_not_part_of_records(tmp_path):
    """Pearson FASTA comments (';' lines, as in the original FASTA package's format description) before and
    inside records, and a UTF-8 BOM written by Windows editors, around real proteins."""
    proteins = _real_proteins(3)
    text = ";FASTA comment\n" + "".join(f">{h}\n;a note\n{s[:30]}\n;another\n{s[30:]}\n" for h, s in proteins)
    for name, data in (("bom.fa", b"\xef\xbb\xbf" + text.encode()), ("bom.fa.gz", gzip.compress(b"\xef\xbb\xbf" +
                                                                                                text.encode()))):
        (tmp_path / name).write_bytes(data)
        stats = ingest_fasta([tmp_path / name], tmp_path / name.replace(".", "_"), IngestConfig())
        rows = pq.read_table(tmp_path / name.replace(".", "_") / "sequences.parquet").to_pylist()
        assert stats.quarantined == 0 and [r["sequence"] for r in rows] == [s.upper() for _, s in proteins]
        assert [r.sequence for r in fasta.read_fasta(tmp_path / name)] == [s for _, s in proteins]


def test_an_ingest_that_keeps_nothing_fails_there_with_the_reasons(tmp_path):
    from pipeline_lib.errors import DataValidationError
    from tests.hostile_helpers import ingest_on

    (tmp_path / "genes.fa").write_text("".join(f">g{i}\n{'ACGT' * 20 + 'A' * i}\n" for i in range(3)))
    with pytest.raises(DataValidationError, match=r"genes.fa.*no record kept: 3 records.*nucleotide: 3"):
        ingest_on(tmp_path / "work", tmp_path / "genes.fa")


def test_the_dedupe_key_is_gone(tmp_path):
    """`ingest.dedupe: false` was read nowhere (duplicates collapsed anyway): the key is refused now."""
    from pipeline_lib.config import load_config
    from pipeline_lib.errors import ConfigError

    with pytest.raises(ConfigError, match="ingest.dedupe: unknown key"):
        load_config(None, ["ingest.dedupe=false"])


def test_low_complexity_proteins_are_not_nucleotide(tmp_path):
    """Poly-alanine and a glycine-alanine repeat (silk-like) are A/C/G/T/N-rich but not DNA: three bases needed."""
    (tmp_path / "lc.fa").write_text(">polyA\n" + "A" * 40 + "\n>GA\n" + "GA" * 25 + "\n")
    stats = ingest_fasta([tmp_path / "lc.fa"], tmp_path / "out", IngestConfig())
    assert stats.kept == 2 and stats.quarantined == 0
