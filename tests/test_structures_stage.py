"""The structures stage on real AlphaFold DB models: join by accession, pLDDT masking, '#' rows, quarantine."""
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import ShardsConfig
from pipeline_lib.structures.config import DirectorySource, StructuresConfig
from pipeline_lib.structures.parse import parse_structure
from pipeline_lib.structures.stage import build_structure_shards
from pipeline_lib.tokenizer import SAPROT_ALPHABET
from tests.conftest import fixture_path


def _inputs(tmp_path, rows):
    seqs = pa.Table.from_pylist([{**{f.name: None for f in schemas.SEQUENCES}, **r, "length": len(r["sequence"]),
                                  "seq_hash": r["id"]} for r in rows], schema=schemas.SEQUENCES)
    pq.write_table(seqs, tmp_path / "sequences.parquet")
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "cluster_c50": [r["id"] for r in rows]}),
                   tmp_path / "clusters.parquet")
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "split": ["train"] * len(rows)}),
                   tmp_path / "splits.parquet")


def test_afdb_structures_join_mask_and_quarantine(tmp_path):
    afdb = fixture_path("structures", "afdb")
    model = parse_structure(afdb / "AF-Q96HM7-F1-model_v4.pdb")[0]
    other = parse_structure(afdb / "AF-Q5T5X7-F1-model_v4.pdb")[0]
    _inputs(tmp_path, [
        {"id": "sp|Q96HM7|X", "accession": "Q96HM7", "sequence": model.sequence},
        {"id": "tr|Q5T5X7|Y", "accession": "Q5T5X7", "sequence": other.sequence[:-5] + "WWWWW"},  # mismatch
        {"id": "no_structure", "accession": "P00000", "sequence": "MKVLAAGIVLLA"},
    ])
    cfg = StructuresConfig(enabled=True, backend="mini3di", sources=[DirectorySource(path=str(afdb))])
    res = build_structure_shards(tmp_path / "sequences.parquet", tmp_path / "clusters.parquet",
                                 tmp_path / "splits.parquet", tmp_path / "out", cfg, levels=["c50"],
                                 shards_cfg=ShardsConfig(), download_dir=tmp_path / "dl")
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "train" / "part-00000.parquet").to_pylist()}
    assert set(rows) == {"sp|Q96HM7|X", "no_structure"}
    assert [q["reason"] for q in res.quarantine] == ["structure_sequence_mismatch"]
    hit = rows["sp|Q96HM7|X"]
    low = [i for i, p in enumerate(model.plddt) if p < 70]
    assert low and all(hit["threedi_seq"][i] == "#" for i in low)
    assert all(hit["threedi_seq"][i] != "#" for i in range(len(model.sequence)) if i not in low)
    assert hit["structure_source"] == "directory" and hit["mean_plddt"] > 0
    pairs = zip(hit["aa_seq"], hit["threedi_seq"], strict=True)
    assert SAPROT_ALPHABET.decode(hit["sa_tokens"]) == "".join(a + d for a, d in pairs)
    assert rows["no_structure"]["threedi_seq"] == "#" * 12 and rows["no_structure"]["structure_source"] is None
    assert res.manifest["vocabulary"]["tokens"] == list(SAPROT_ALPHABET.tokens)
    assert res.stats["rows"] + res.stats["quarantined"] == 3


def test_experimental_bfactors_are_not_treated_as_plddt(tmp_path):
    """PDB 1xso's B-factors are crystallographic: no residue may be masked under plddt_in_bfactor=auto."""
    pdb = fixture_path("structures", "pdb")
    chain = parse_structure(pdb / "1xso.pdb")[0]
    assert (chain.plddt < 70).any()  # would be masked if taken for pLDDT
    _inputs(tmp_path, [{"id": "1xso_A", "accession": "1xso_A", "sequence": chain.sequence}])
    for policy, expect_masked in (("auto", False), ("always", True)):
        cfg = StructuresConfig(enabled=True, backend="mini3di", plddt_in_bfactor=policy,
                               sources=[DirectorySource(path=str(pdb), patterns=["1xso.pdb"])])
        build_structure_shards(tmp_path / "sequences.parquet", tmp_path / "clusters.parquet",
                               tmp_path / "splits.parquet", tmp_path / policy, cfg, levels=["c50"],
                               shards_cfg=ShardsConfig(), download_dir=tmp_path)
        row = pq.read_table(tmp_path / policy / "train" / "part-00000.parquet").to_pylist()[0]
        assert ("#" in row["threedi_seq"]) == expect_masked, policy
        assert (row["mean_plddt"] is None) == (not expect_masked)


def test_threedi_of_structure_for_saprot_dms_scoring():
    from pipeline_lib.structures.stage import threedi_of_structure

    afdb = fixture_path("structures", "afdb", "AF-Q96HM7-F1-model_v4.pdb")
    chain = parse_structure(afdb)[0]
    t = threedi_of_structure(str(afdb), None, StructuresConfig(backend="mini3di"))
    assert len(t) == len(chain.sequence) and t.count("#") == int((chain.plddt < 70).sum()) > 0 and t == t.lower()
    pdb = fixture_path("structures", "pdb", "8crb.pdb")
    multi = threedi_of_structure(str(pdb), "C", StructuresConfig(backend="mini3di"))
    assert "#" not in multi and len(multi) == len(parse_structure(pdb)[2].sequence)
