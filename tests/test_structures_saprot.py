"""SaProt rows: pLDDT masking on real AlphaFold DB models, joins by accession, mismatches, schema.

    .venv/bin/pytest -q tests/test_structures_saprot.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline_lib import schemas
from pipeline_lib.structures.saprot import (
    global_align,
    mask_threedi,
    no_structure,
    parse_afdb_name,
    saprot_rows,
    structure_records,
)
from pipeline_lib.structures.threedi import EncodedChain, encode_structures
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures"
AFDB = FIXTURES / "structures" / "afdb"
needs_fixtures = pytest.mark.skipif(not AFDB.is_dir(), reason=f"shared fixtures not available: {AFDB}")
LEVELS = ["c90", "c50"]


def _ca_bfactors(path: Path) -> np.ndarray:
    return np.array([float(ln[60:66]) for ln in path.read_text().splitlines()
                     if ln.startswith("ATOM") and ln[12:16] == " CA "])


@pytest.fixture(scope="module")
def afdb_chains() -> list[EncodedChain]:
    if not AFDB.is_dir():
        pytest.skip(f"shared fixtures not available: {AFDB}")
    return list(encode_structures(sorted(AFDB.iterdir()), "mini3di"))


def _seq_record(acc: str, seq: str, **extra) -> dict:
    return {"id": f"sp|{acc}|X", "accession": acc, "sequence": seq, "seq_hash": f"h{acc}",
            "cluster_c90": "c90", "cluster_c50": "c50", **extra}


def test_mask_and_names():
    assert mask_threedi("DPVQ", np.array([90.0, 69.99, 70.0, 10.0])) == "d#v#"
    assert mask_threedi("DPVQ", None) == "dpvq"
    assert no_structure(3) == "###"
    n = parse_afdb_name("AF-A0A1W2PQ64-F1-model_v4_A")
    assert (n.accession, n.fragment, n.version) == ("A0A1W2PQ64", 1, "v4")
    assert parse_afdb_name("dir/AF-Q9Y6K9-2-F3-model_v6.cif").accession == "Q9Y6K9-2"
    assert parse_afdb_name("1tim_A") is None


@needs_fixtures
def test_low_plddt_residues_become_hash_on_afdb_models(afdb_chains):
    by_name = {c.name: c for c in afdb_chains}
    checked = 0
    for path in sorted(AFDB.glob("*.pdb")):
        chain = by_name[path.name.removesuffix(".pdb") + "_A"]
        b = _ca_bfactors(path)  # AlphaFold writes the residue's pLDDT on every atom
        masked = mask_threedi(chain.threedi, chain.plddt)
        low = b < 70
        assert low.any() and (~low).any(), path.name  # each model has both kinds of residues
        assert [ch == "#" for ch in masked] == low.tolist()
        assert all(m == d.lower() for m, d, lo in zip(masked, chain.threedi, low, strict=False) if not lo)
        checked += int(low.sum())
    assert checked > 100


@needs_fixtures
def test_rows_match_schema_and_join_by_accession(afdb_chains):
    records = structure_records(afdb_chains, source="afdb")
    assert set(records) == {"A0A1W2PQ64", "O49373", "Q5T5X7", "Q96HM7", "Q96PD2"}
    q96 = records["Q96HM7"]
    seqs = [_seq_record("Q96HM7", q96.aa), {**_seq_record("P00000", "MKVLA"), "accession": None,
                                           "id": "UniRef50_P00000"}]
    table, quarantine = saprot_rows(seqs, records, levels=LEVELS)
    assert table.schema == schemas.structure_shard_schema(LEVELS) and not quarantine
    row, bare = table.to_pylist()
    assert row["threedi_seq"] == q96.threedi and row["structure_source"] == "afdb"
    assert row["structure_version"] == "v4" and row["mean_plddt"] == pytest.approx(q96.mean_plddt)
    assert list(row["tokens"]) == ESM_ALPHABET.encode(q96.aa) and row["length"] == len(q96.aa)
    pairs = SAPROT_ALPHABET.decode(row["sa_tokens"])
    assert pairs == "".join(a + d for a, d in zip(q96.aa, q96.threedi, strict=False))
    assert bare["threedi_seq"] == "#####" and bare["structure_source"] is None and bare["mean_plddt"] is None
    assert SAPROT_ALPHABET.decode(bare["sa_tokens"]) == "M#K#V#L#A#"


@needs_fixtures
def test_modelled_sequence_mismatch_is_quarantined_or_aligned(afdb_chains):
    st = structure_records(afdb_chains, source="afdb")["A0A1W2PQ64"]
    seq = st.aa
    substituted = seq[:10] + ("A" if seq[10] != "A" else "G") + seq[11:]
    inserted = seq[:50] + "WWW" + seq[50:]
    recs = [_seq_record("A0A1W2PQ64", s, source_file="uniprot.fasta", source_record=i)
            for i, s in enumerate((substituted, inserted))]
    table, quarantine = saprot_rows(recs, {"A0A1W2PQ64": st}, levels=LEVELS)
    assert table.num_rows == 0 and [q["reason"] for q in quarantine] == ["structure_sequence_mismatch"] * 2
    assert set(quarantine[0]) == set(schemas.QUARANTINE.names)
    assert quarantine[1]["source_file"] == str(AFDB / "AF-A0A1W2PQ64-F1-model_v4.pdb")  # the structure file
    assert "AF-A0A1W2PQ64-F1-model_v4_A" in quarantine[0]["detail"]
    assert "sequence from uniprot.fasta, record 1" in quarantine[1]["detail"]

    table, quarantine = saprot_rows(recs, {"A0A1W2PQ64": st}, levels=LEVELS, on_mismatch="align")
    assert not quarantine
    sub, ins = (r["threedi_seq"] for r in table.to_pylist())
    assert sub == st.threedi  # a substitution keeps every position's 3Di letter
    assert ins == st.threedi[:50] + "###" + st.threedi[50:]  # inserted residues have no structure
    _, quarantine = saprot_rows([_seq_record("A0A1W2PQ64", "MKV" * 60)], {"A0A1W2PQ64": st}, levels=LEVELS,
                                on_mismatch="align")
    assert quarantine[0]["reason"] == "structure_alignment_failed" and "identity" in quarantine[0]["detail"]


def test_global_alignment():
    assert global_align("ACDEFG", "ACDEFG") == [(i, i) for i in range(6)]
    assert global_align("ACDEFG", "ACDXXEFG") == [(0, 0), (1, 1), (2, 2), (3, 5), (4, 6), (5, 7)]
    assert global_align("MACDEFG", "ACDEFG") == [(i + 1, i) for i in range(6)]
    assert global_align("", "ACD") == []
