"""UniProt's own UniRef membership as a cluster level, on a miniature release built from real TrEMBL entries in
UniProt's XML layout (tests/uniprot_release.py): the streamed import equals a full XML parse, and the level
groups the UniRef90 FASTA by it, quarantining or isolating what the membership does not list."""
from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.data_refresh import data_refresh
from pipeline_lib.errors import DataValidationError
from pipeline_lib.lineage import LineageStore
from pipeline_lib.sequences import uniref_membership
from pipeline_lib.sequences.uniref_membership import read_membership
from tests.conftest import ROOT
from tests.uniprot_release import build_release, groups_of

NS = "{http://uniprot.org/uniref}"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return build_release(tmp_path_factory.mktemp("uniprot"))


def _oracle(xml_gz) -> set[tuple[str, str]]:
    """Every (UniRef90 id, UniRef50 id) pair by a full parse with the standard library's XML parser."""
    root = ET.fromstring(gzip.decompress(xml_gz.read_bytes()))
    return {(p.get("value"), entry.get("id")) for entry in root.iter(f"{NS}entry")
            for p in entry.iter(f"{NS}property") if p.get("type") == "UniRef90 ID"}


def _pairs(path) -> set[tuple[str, str]]:
    table = pq.read_table(path).to_pylist()
    assert len(table) == len({r["child"] for r in table})  # each UniRef90 cluster once
    return {(r["child"], r["parent"]) for r in table}


def test_streamed_import_equals_a_full_xml_parse(release, tmp_path, monkeypatch):
    truth = _oracle(release.uniref50_xml)
    assert truth == set(release.membership.items())
    stats = read_membership(release.uniref50_xml, tmp_path / "m.parquet")
    assert _pairs(tmp_path / "m.parquet") == truth
    assert (stats.parent_level, stats.release, stats.pairs) == ("UniRef50", "2026_03", len(truth))
    plain = tmp_path / "uniref50.xml"
    plain.write_bytes(gzip.decompress(release.uniref50_xml.read_bytes()))
    monkeypatch.setattr(uniref_membership, "_CHUNK", 997)  # tags and entries cut across reads
    read_membership(plain, tmp_path / "small.parquet")
    assert _pairs(tmp_path / "small.parquet") == truth
    swapped = tmp_path / "swapped.xml"  # attribute order is not significant in XML
    text = plain.read_text(encoding="latin-1")
    swapped.write_text(re.sub(r'<property type="UniRef90 ID" value="([^"]+)"/>',
                              r'<property value="\1" type="UniRef90 ID"/>', text), encoding="latin-1")
    read_membership(swapped, tmp_path / "swapped.parquet")
    assert _pairs(tmp_path / "swapped.parquet") == truth


def test_an_entry_without_members_or_a_file_without_entries_is_refused(release, tmp_path):
    text = gzip.decompress(release.uniref50_xml.read_bytes()).decode("latin-1")
    first = text.index("<entry ")
    broken = tmp_path / "broken.xml"
    broken.write_text(text[:first] + text[first:].replace('type="UniRef90 ID"', 'type="UniRef90 id"'),
                      encoding="latin-1")
    with pytest.raises(DataValidationError, match=r"entry UniRef50_\w+ names no 'UniRef90 ID' property"):
        read_membership(broken, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    other = tmp_path / "other.xml"
    other.write_text("<?xml version='1.0'?><uniprot><protein/></uniprot>\n")
    with pytest.raises(DataValidationError, match="no <entry>"):
        read_membership(other, tmp_path / "y.parquet")


@pytest.mark.parametrize("on_missing", ["quarantine", "singleton"])
def test_uniref_level_groups_the_fasta_by_the_membership(prefect_harness, release, tmp_path, on_missing):
    levels = (f"cluster.levels=[{{name: u50, min_seq_id: 0.5, method: uniref, membership: {release.uniref50_xml}, "
              f"on_missing: {on_missing}}}, {{name: c30, min_seq_id: 0.3, method: cluster}}]")
    args = [f"workdir={tmp_path / 'w'}", f"source={{kind: fasta, paths: [{release.uniref90_fasta}]}}", levels,
            "split.level=u50", "split.valid_fraction=0.2", "split.test_fraction=0.2"]
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"), args)
    clusters = pq.read_table(res.stages["cluster"].path("clusters.parquet")).to_pylist()
    assert [r["id"] for r in clusters] == release.fasta_ids
    assert groups_of(clusters, "cluster_u50") == release.expected_groups()
    truth = release.true_groups()
    for u50, members in truth.items():  # the representative: UniRef50_X's own UniRef90_X row
        assert {r["cluster_u50"] for r in clusters if r["id"] in members} == {"UniRef90_" + u50.split("_", 1)[1]}
    level = res.stages["cluster_u50"].stats
    assert level["not_in_membership"] == len(release.missing) == 2
    assert level["membership_not_in_sequences"] == len(release.extra)
    assert level["membership"]["release"] == "2026_03" and level["clusters"] == len(truth) + 2
    split = pq.read_table(res.stages["split"].path("splits.parquet")).to_pylist()
    quarantine = pq.read_table(res.stages["split"].path("quarantine.parquet")).to_pylist()
    kept = res.stages["ingest"].stats["kept"]
    assert len(split) + len(quarantine) == kept == len(release.fasta_ids)  # input = output + quarantined
    if on_missing == "quarantine":
        assert sorted(q["id"] for q in quarantine) == sorted(release.missing)
        assert {q["reason"] for q in quarantine} == {"not_in_membership"}
    else:
        assert quarantine == [] and set(release.missing) <= {r["id"] for r in split}
    splits_of = {}
    for r in split:  # whole UniRef50 clusters go to one split
        splits_of.setdefault(next(c["cluster_u50"] for c in clusters if c["id"] == r["id"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    store = LineageStore(res.lineage)
    kinds = {r["kind"] for r in store.query("SELECT kind FROM artifacts")}
    assert "uniref_membership" in kinds


def test_training_draws_each_uniref50_cluster_once_per_epoch_and_members_uniformly(prefect_harness, release,
                                                                                    tmp_path):
    """ESM-2's UR50/D sampling on the level's shards: every epoch one row per UniRef50 cluster of the train split,
    and within a cluster each UniRef90 member equally often (chi-square over 400 epochs)."""
    import numpy as np
    from scipy.stats import chi2

    from pipeline_lib.train.data import ShardIndex

    levels = f"cluster.levels=[{{name: u50, min_seq_id: 0.5, method: uniref, membership: {release.uniref50_xml}}}]"
    args = [f"workdir={tmp_path / 'w'}", f"source={{kind: fasta, paths: [{release.uniref90_fasta}]}}", levels,
            "split.valid_fraction=0.1", "split.test_fraction=0.1"]
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"), args)
    index = ShardIndex(res.shards_dir, column="tokens", cluster_level="u50")
    offsets, rows = index.cluster_offsets, index.cluster_rows
    sizes = np.diff(offsets)
    cluster_of = np.empty(index.num_rows, dtype=np.int64)
    cluster_of[rows] = np.repeat(np.arange(len(sizes)), sizes)
    assert sizes.max() > 1 and index.num_clusters < index.num_rows  # clusters with several UniRef90 members
    counts = np.zeros(index.num_rows)
    epochs = 400
    for epoch in range(epochs):
        picked = index.select(epoch, seed=0)
        assert sorted(cluster_of[picked]) == list(range(index.num_clusters))  # each cluster exactly once
        counts[picked] += 1
    expected = epochs / sizes[cluster_of]
    multi = sizes[cluster_of] > 1
    stat = float((((counts - expected) ** 2) / expected)[multi].sum())
    dof = int((sizes[sizes > 1] - 1).sum())
    assert chi2.sf(stat, dof) > 1e-3, (stat, dof)


def test_a_release_gives_the_fasta_and_its_membership_together_or_not_at_all(prefect_harness, tmp_path):
    """The uniref source fetches uniref90.fasta.gz and uniref50/uniref50.xml.gz of one release from a server laid
    out like UniProt's FTP, each verified against its folder's metalink; a level names the membership as
    release:...; a UniRef50 folder at another release is refused before anything is downloaded."""
    from http_server import LocalHTTPServer

    from tests.uniprot_release import write_ftp_metadata

    www = tmp_path / "www"
    rel = build_release(www / "pub" / "databases" / "uniprot")
    write_ftp_metadata(rel)
    level = ("cluster.levels=[{name: u50, min_seq_id: 0.5, method: uniref, "
             "membership: release:uniref50/uniref50.xml.gz}]")
    with LocalHTTPServer(www) as srv:
        src = (f"source={{kind: uniref, base_url: {srv.url('/pub/databases/uniprot')}, database: uniref90, "
               "files: [uniref50/uniref50.xml.gz]}")
        res = data_refresh(str(ROOT / "configs" / "demo.yaml"),
                           [f"workdir={tmp_path / 'w'}", src, level, "split.valid_fraction=0.2",
                            "split.test_fraction=0.2"])
        clusters = pq.read_table(res.stages["cluster"].path("clusters.parquet")).to_pylist()
        assert groups_of(clusters, "cluster_u50") == rel.expected_groups()
        source = res.stages["source"]
        assert source.stats["release"] == "2026_03" and source.stats["files"] == ["uniref50/uniref50.xml.gz"]
        fetched = [a for a in source.outputs.values() if a.kind == "release_file"]
        assert len(fetched) == 1 and Path(fetched[0].path).read_bytes() == rel.uniref50_xml.read_bytes()
        assert res.stages["ingest"].stats["records_in"] == len(rel.fasta_ids)  # the XML is not read as FASTA
        write_ftp_metadata(rel, uniref50_release="2026_02")
        requests_before = len(srv.requests)
        with pytest.raises(DataValidationError, match=r"uniref50/uniref50.xml.gz is from release 2026_02, the "
                                                      r"source's FASTA from release 2026_03: refusing to mix"):
            data_refresh(str(ROOT / "configs" / "demo.yaml"), [f"workdir={tmp_path / 'w2'}", src, level])
        assert not any(r.path.endswith(".gz") for r in srv.requests[requests_before:])  # nothing downloaded
