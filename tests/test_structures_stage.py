"""The structures stage on real AlphaFold DB models: join by accession, pLDDT masking, '#' rows, quarantine."""
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib import schemas
from pipeline_lib.config import ShardsConfig
from pipeline_lib.structures.config import DirectorySource, StructuresConfig
from pipeline_lib.structures.parse import StructureBlob, parse_structure
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
    bad = res.quarantine[0]  # names the structure file; the sequence's own file goes into the detail
    assert bad["source_file"] == str(afdb / "AF-Q5T5X7-F1-model_v4.pdb") and bad["id"] == "tr|Q5T5X7|Y"
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


def test_predicted_models_are_recognised_by_content_not_only_by_name(tmp_path):
    """An AlphaFold DB model renamed (as in ProteinGym or a user's folder) and ColabFold's mmCIF are masked under
    plddt_in_bfactor=auto; ColabFold's header-less PDB output needs 'always' (nothing in it says 'predicted')."""
    afdb, colab = fixture_path("structures", "afdb"), fixture_path("structures", "colabfold")
    models = tmp_path / "models"
    models.mkdir()
    (models / "Q96HM7_model.pdb").write_bytes((afdb / "AF-Q96HM7-F1-model_v4.pdb").read_bytes())
    (models / "O49373.cif").write_bytes((afdb / "AF-O49373-F1-model_v4.cif").read_bytes())
    (models / "colab.cif").write_bytes((colab / "ERR550519_2213899_unrelaxed_model_1.cif").read_bytes())
    (models / "colab.pdb").write_bytes((colab / "ERR550519_2213899_unrelaxed_model_1.pdb").read_bytes())
    chains = {f.name: parse_structure(f)[0] for f in sorted(models.iterdir())}
    assert {k: c.predicted for k, c in chains.items()} == {"Q96HM7_model.pdb": True, "O49373.cif": True,
                                                           "colab.cif": True, "colab.pdb": False}
    # no AF- names and no accession: structures join by chain name, <stem>_A
    rows = [{"id": f"{name.rsplit('.', 1)[0]}_A", "accession": None, "sequence": c.sequence}
            for name, c in chains.items() if name != "colab.pdb"]
    _inputs(tmp_path, rows)
    cfg = StructuresConfig(enabled=True, backend="mini3di",
                           sources=[DirectorySource(path=str(models), patterns=["*.pdb", "*.cif"])])
    build_structure_shards(tmp_path / "sequences.parquet", tmp_path / "clusters.parquet", tmp_path / "splits.parquet",
                           tmp_path / "out", cfg, levels=["c50"], shards_cfg=ShardsConfig(), download_dir=tmp_path)
    got = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "train" / "part-00000.parquet").to_pylist()}
    for name, chain in chains.items():
        if name == "colab.pdb":
            continue
        row = got[f"{name.rsplit('.', 1)[0]}_A"]
        low = chain.plddt < 70
        assert row["mean_plddt"] is not None, name
        assert [c == "#" for c in row["threedi_seq"]] == low.tolist(), name


def test_experimental_header_wins_over_a_predictor_named_in_it():
    """1xso with 'ALPHAFOLD' in its title is still an X-ray structure: EXPDTA decides; without it the name counts."""

    data = fixture_path("structures", "pdb", "1xso.pdb").read_bytes()
    assert b"EXPDTA    X-RAY" in data
    titled = data.replace(b"TITLE     THREE-DIMENSIONAL", b"TITLE     ALPHAFOLD-GUIDED 3D  ", 1)
    assert not parse_structure(StructureBlob("1xso.pdb", titled))[0].predicted
    no_method = b"\n".join(ln for ln in titled.split(b"\n") if not ln.startswith(b"EXPDTA"))
    assert parse_structure(StructureBlob("1xso.pdb", no_method))[0].predicted
    parent = b"PARENT N/A\n" + b"\n".join(ln for ln in data.split(b"\n") if ln.startswith((b"ATOM", b"END")))
    assert parse_structure(StructureBlob("esmfold.pdb", parent))[0].predicted  # OpenFold/ESMFold's writer
