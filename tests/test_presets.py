"""The real-scale presets: every one loads, and the data path of each UniProt-based recipe runs end to end against a
miniature release served from 127.0.0.1 in UniProt's FTP layout (tests/uniprot_release.py), with its scale knobs
shrunk by --set."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from http_server import LocalHTTPServer

from flows.data_refresh import data_refresh
from pipeline_lib.config import load_config
from pipeline_lib.structures.parse import parse_structure
from tests.conftest import ROOT, fixture_path
from tests.uniprot_release import build_release, write_ftp_metadata

PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.name == name.removesuffix(".yaml") or name in ("demo.yaml",)


AFDB = ("Q96HM7", "O49373")  # real AlphaFold DB models among the fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The miniature release (two UniRef50 representatives are proteins with a real AlphaFold DB model) and an
    AlphaFold DB API for those two, on one local server."""
    www = tmp_path_factory.mktemp("ftp")
    afdb = fixture_path("structures", "afdb")
    files = {"Q96HM7": afdb / "AF-Q96HM7-F1-model_v4.pdb", "O49373": afdb / "AF-O49373-F1-model_v4.cif"}
    also = [{"acc": acc, "name": f"{acc}_AFDB", "desc": "Protein with a model", "os": "Homo sapiens", "ox": "9606",
             "seq": parse_structure(path)[0].sequence} for acc, path in files.items()]
    rel = build_release(www / "pub" / "databases" / "uniprot", also=also)
    write_ftp_metadata(rel)
    with LocalHTTPServer(www) as srv:
        for acc, path in files.items():
            srv.put(f"/files/{path.name}", path.read_bytes())
            url = srv.url(f"/files/{path.name}")
            entry = {"entryId": f"AF-{acc}-F1", "uniprotAccession": acc, "latestVersion": 4, "pdbUrl": url,
                     "cifUrl": url}
            srv.put(f"/api/prediction/{acc}", json.dumps([entry]).encode())
        yield srv, rel


def _shrunk(srv, tmp_path) -> list[str]:
    return [f"workdir={tmp_path / 'w'}", f"source.base_url={srv.url('/pub/databases/uniprot')}",
            "cluster.threads=2", "split.valid_fraction=0.2", "split.test_fraction=0.2", "shards.rows_per_shard=1000",
            "split.audit.max_queries=50"]


def test_esm2_ur50d_data_path(prefect_harness, server, tmp_path):
    srv, rel = server
    res = data_refresh(str(ROOT / "configs" / "esm2_ur50d.yaml"), _shrunk(srv, tmp_path))
    assert res.stages["source"].stats["release"] == rel.release
    clusters = pq.read_table(res.stages["cluster"].path("clusters.parquet")).to_pylist()
    listed = {u: p for u, p in rel.membership.items() if u in rel.fasta_ids}
    groups: dict[str, set[str]] = {}
    for r in clusters:
        groups.setdefault(r["cluster_u50"], set()).add(r["id"])
    for ids in groups.values():  # one UniRef50 cluster per group, as UniProt lists it
        assert len({listed.get(i, i) for i in ids}) == 1
    split = res.stages["split"].stats
    assert split["not_in_membership"] == len(rel.missing)  # on_missing: quarantine
    assert "decontaminated" in split and res.stages["audit"].stats["valid"]["queries"] > 0
    assert res.stages["shards"].stats["train"]["rows"] > 0


def test_esm1v_ur90_data_path(prefect_harness, server, tmp_path):
    srv, rel = server
    res = data_refresh(str(ROOT / "configs" / "esm1v_ur90.yaml"), _shrunk(srv, tmp_path))
    assert res.stages["ingest"].stats["kept"] == len(rel.fasta_ids)
    assert res.stages["cluster_u50"].stats["not_in_membership"] == len(rel.missing)  # singletons here


def test_esm1b_ur50s_data_path(prefect_harness, server, tmp_path):
    srv, rel = server
    res = data_refresh(str(ROOT / "configs" / "esm1b_ur50s.yaml"), _shrunk(srv, tmp_path))
    assert res.stages["ingest"].stats["kept"] == len(set(rel.membership.values()))  # one per UniRef50 entry
    assert res.stages["source"].stats["database"] == "uniref50"
    assert sum(v["rows"] for k, v in res.stages["shards"].stats.items() if isinstance(v, dict) and "rows" in v) > 0


def test_saprot_afdb_structures_path(prefect_harness, server, tmp_path, caplog):
    """The SaProt preset's sequences, clusters and splits, then its structures from the AlphaFold DB API by the
    ingested UniRef50 representatives' accessions: the two proteins with a model get 3Di tokens (pLDDT < 70
    masked), every other row '#', and the coverage is reported (and warned about: below the preset's 20 %)."""
    import logging

    from flows.end_to_end import structures_flow

    srv, rel = server
    sources = f"structures.sources=[{{kind: afdb, base_url: {srv.url('/')}, retries: 0}}]"
    with caplog.at_level(logging.WARNING):
        res = structures_flow(str(ROOT / "configs" / "saprot_afdb.yaml"), [*_shrunk(srv, tmp_path), sources,
                                                                            "structures.backend=mini3di"])
    stats = res.stages["structures"].stats
    assert stats["structures"] == 2 and stats["rows_with_structure"] == 2 and stats["afdb"]["downloaded"] == 2
    assert "LOW STRUCTURE COVERAGE" in caplog.text
    rows = [r for split in ("train", "valid", "test")
            for f in sorted((Path(res.stages["structures"].directory) / "shards" / split).glob("*.parquet"))
            for r in pq.read_table(f, columns=["id", "threedi_seq", "structure_source"]).to_pylist()]
    with_model = {r["id"] for r in rows if r["structure_source"]}
    assert with_model == {f"UniRef50_{acc}" for acc in AFDB}
    assert all(set(r["threedi_seq"]) == {"#"} for r in rows if not r["structure_source"])


def test_msa_transformer_msa_path(prefect_harness, server, tmp_path):
    """The MSA Transformer preset's data path and msa stage against the miniature release, the target being the
    ingested sequences (msa.target_db unset): an MSA per query, in MSA token shards."""
    from flows.end_to_end import msa_flow

    srv, rel = server
    res = msa_flow(str(ROOT / "configs" / "msa_transformer.yaml"),
                   [*_shrunk(srv, tmp_path), "msa.max_queries=6", "msa.batch_size=3", "msa.threads=1",
                    "msa.search.num_iterations=1", "msa.search.sensitivity=4"])
    stats = res.stages["msa"].stats
    assert stats["msas"] == 6 and stats["depth_max"] >= 1
    shards = sorted((Path(res.stages["msa"].directory) / "shards").rglob("*.parquet"))
    assert shards and sum(pq.ParquetFile(f).metadata.num_rows for f in shards) == 6
