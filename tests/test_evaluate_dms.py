"""DMS substitution files: ProteinGym layout, column mapping, offsets, multi-mutants and bad rows."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import DmsFileConfig
from pipeline_lib.evaluate.dms import Mutation, parse_mutant, read_dms

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"     # residues numbered 101..133 with offset 100


def mutate(seq: str, mutant: str, offset: int = 100) -> str:
    s = list(seq)
    for part in mutant.split(":"):
        s[int(part[1:-1]) - offset - 1] = part[-1]
    return "".join(s)


GOOD = ["M101A", "K102R:T103S", "A104G:I106V:Q133K", "S113C"]


def proteingym_file(path, rows: list[tuple[str, str, str, str]]) -> None:
    path.write_text("mutant,mutated_sequence,DMS_score,DMS_score_bin\n"
                    + "".join(f"{m},{s},{v},{b}\n" for m, s, v, b in rows))


def good_rows() -> list[tuple[str, str, str, str]]:
    return [(m, mutate(WT, m), f"{0.5 - i:.2f}", str(i % 2)) for i, m in enumerate(GOOD)]


# bad rows, each with the reason code read_dms gives it
BAD = [
    ("K102E", mutate(WT, "K102E"), "0.1", "0", None),                       # good row among the bad
    ("Q102R", mutate(WT, "K102R"), "0.1", "0", "wild_type_mismatch"),        # states Q where the wild type has K
    ("A200G", WT, "0.1", "0", "position_out_of_range"),
    ("A1x4G", WT, "0.1", "0", "malformed_mutant"),
    ("A104*", WT, "0.1", "0", "unknown_residue"),
    ("A104G", mutate(WT, "A104G:S113T"), "0.1", "0", "sequence_mismatch"),   # a change the mutant omits
    ("A104G", mutate(WT, "A104C"), "0.1", "0", "sequence_mismatch"),         # sequence says C, mutant says G
    ("S113C", mutate(WT, "S113C"), "n/a", "0", "bad_score"),
    ("S113C", mutate(WT, "S113C"), "0.3", "2", "bad_label"),
    ("A104G:A104C", WT, "0.1", "0", "malformed_mutant"),
    ("S113C", mutate(WT, "S113C") + "A", "0.1", "0", "length_mismatch"),
]


def test_proteingym_layout_multi_mutants_and_offset(tmp_path):
    f = tmp_path / "TEST_HUMAN_Doe_2024.csv"
    proteingym_file(f, good_rows())
    assay = read_dms(DmsFileConfig(path=str(f), offset=100))
    assert assay.name == "TEST_HUMAN_Doe_2024"
    assert assay.wild_type == WT
    assert assay.mutants == GOOD
    assert assay.mutations[2] == (Mutation("A", 3, "G"), Mutation("I", 5, "V"), Mutation("Q", 32, "K"))
    assert [mu.label(100) for mu in assay.mutations[1]] == ["K102R", "T103S"]
    np.testing.assert_allclose(assay.scores, [0.5, -0.5, -1.5, -2.5])
    assert assay.binary.tolist() == [0, 1, 0, 1]
    assert assay.rows.tolist() == [1, 2, 3, 4] and assay.skipped == []


def test_bad_rows_raise_with_file_and_row(tmp_path):
    f = tmp_path / "bad.csv"
    proteingym_file(f, good_rows() + [r[:4] for r in BAD])
    with pytest.raises(DataValidationError) as info:
        read_dms(DmsFileConfig(path=str(f), offset=100))
    err = info.value
    assert err.path == str(f) and err.record == 6          # the first bad row: Q102R after 4 good + 1 good
    assert "wild_type_mismatch" in str(err) and "Q at residue 102" in str(err) and "has K" in str(err)
    assert "9 more bad rows" in str(err)


def test_bad_rows_skipped_and_counted(tmp_path):
    f = tmp_path / "bad.csv"
    proteingym_file(f, good_rows() + [r[:4] for r in BAD])
    assay = read_dms(DmsFileConfig(path=str(f), offset=100), on_bad_row="skip")
    assert assay.wild_type == WT
    assert assay.mutants == GOOD + ["K102E"]
    expected = [r[4] for r in BAD if r[4]]
    assert [s.reason for s in assay.skipped] == expected
    assert [s.row for s in assay.skipped] == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert assay.skip_counts["sequence_mismatch"] == 2 and sum(assay.skip_counts.values()) == 10
    assert "residue 113" in assay.skipped[4].detail    # the unnamed change S113T


@pytest.mark.parametrize("reason,row", [(r[4], r[:4]) for r in BAD if r[4]])
def test_each_bad_row_alone_names_its_problem(tmp_path, reason, row):
    f = tmp_path / "one_bad.csv"
    proteingym_file(f, good_rows() + [row])
    with pytest.raises(DataValidationError, match=reason) as info:
        read_dms(DmsFileConfig(path=str(f), offset=100))
    assert info.value.record == 5


def test_wild_type_is_the_majority_even_when_the_first_row_is_wrong(tmp_path):
    f = tmp_path / "first_wrong.csv"
    proteingym_file(f, [("Q102R", mutate(WT, "K102R"), "0", "0")] + good_rows())
    with pytest.raises(DataValidationError) as info:
        read_dms(DmsFileConfig(path=str(f), offset=100))
    assert info.value.record == 1
    assert read_dms(DmsFileConfig(path=str(f), offset=100), on_bad_row="skip").wild_type == WT


def test_column_mapping_with_given_wild_type_and_tsv(tmp_path):
    f = tmp_path / "other.tsv.gz"
    lines = ["variant\tfitness\tnote", "K2R\t1.5\tx", "A4G:Q33K\t-0.5\ty", "_wt\t0.0\twild type"]
    f.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    cfg = DmsFileConfig(path=str(f), mutant_column="variant", score_column="fitness", binary_column=None,
                        sequence_column=None, wild_type=WT)
    assay = read_dms(cfg)
    assert assay.name == "other" and assay.binary is None
    assert assay.mutations == [(Mutation("K", 1, "R"),), (Mutation("A", 3, "G"), Mutation("Q", 32, "K")), ()]
    bad = tmp_path / "other_bad.tsv"
    bad.write_text("variant\tfitness\nK2R\t1.5\nT2R\t1.0\n")
    with pytest.raises(DataValidationError, match="states T at residue 2") as info:
        read_dms(cfg.model_copy(update={"path": str(bad)}))
    assert info.value.record == 2


def test_wild_type_column(tmp_path):
    f = tmp_path / "wtcol.csv"
    f.write_text(f"mut,score,wt\nK2R,1,{WT}\nA4G,2,{WT}\nA4G,2,{WT[:-1]}A\n")
    cfg = DmsFileConfig(path=str(f), mutant_column="mut", score_column="score", sequence_column=None,
                        wild_type_column="wt")
    assay = read_dms(cfg, on_bad_row="skip")
    assert assay.wild_type == WT and len(assay) == 2 and assay.skip_counts == {"wild_type_mismatch": 1}


def test_file_level_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataValidationError, match="empty DMS file") as info:
        read_dms(str(empty))
    assert info.value.path == str(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("mutant,mutated_sequence,DMS_score\n")
    with pytest.raises(DataValidationError, match="no data rows"):
        read_dms(str(header_only))
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("mutant,mutated_sequence,score\nK2R,MR,1\n")
    with pytest.raises(DataValidationError, match="no score column 'DMS_score'"):
        read_dms(str(no_col))
    no_wt = tmp_path / "nowt.csv"
    no_wt.write_text("mutant,DMS_score\nK2R,1\n")
    with pytest.raises(DataValidationError, match="cannot determine the wild type"):
        read_dms(str(no_wt))
    all_bad = tmp_path / "allbad.csv"
    proteingym_file(all_bad, [("X1A", WT, "1", "0")])
    with pytest.raises(DataValidationError, match="no usable rows"):
        read_dms(str(all_bad), on_bad_row="skip")
    with pytest.raises(DataValidationError, match="3Di string has 3 letters"):
        read_dms(DmsFileConfig(path=str(no_wt), wild_type="MKVL", threedi="pyn"))


def test_parse_mutant():
    assert parse_mutant("A24G:L30P") == (Mutation("A", 23, "G"), Mutation("L", 29, "P"))
    assert parse_mutant("A124G", offset=100) == (Mutation("A", 23, "G"),)
    assert parse_mutant("WT") == ()
    for bad in ("A24", "24G", "A24G:", "A2 4G", "AA24G"):
        with pytest.raises(ValueError):
            parse_mutant(bad)
