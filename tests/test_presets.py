"""The real-scale presets: every one loads, and the data path of each UniProt-based recipe runs end to end against a
miniature release served from 127.0.0.1 in UniProt's FTP layout (tests/uniprot_release.py), with its scale knobs
shrunk by --set."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from http_server import LocalHTTPServer

from flows.data_refresh import data_refresh
from pipeline_lib.config import load_config
from tests.conftest import ROOT
from tests.uniprot_release import build_release, write_ftp_metadata

PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.name == name.removesuffix(".yaml") or name in ("demo.yaml",)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    www = tmp_path_factory.mktemp("ftp")
    rel = build_release(www / "pub" / "databases" / "uniprot")
    write_ftp_metadata(rel)
    with LocalHTTPServer(www) as srv:
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
